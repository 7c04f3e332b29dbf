"""The shared pieces: backoff, feed health stats and the event types."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaming.feeds.base import Backoff, Book, Coalescer, FeedStats, Tick, Trade


@given(
    base=st.floats(min_value=0.001, max_value=5),
    cap=st.floats(min_value=5, max_value=120),
    draws=st.lists(st.floats(min_value=0, max_value=1, exclude_max=True), min_size=1, max_size=80),
)
def test_backoff_delays_are_full_jitter_under_a_doubling_capped_ceiling(base, cap, draws):
    values = iter(draws)
    backoff = Backoff(base=base, cap=cap, rng=lambda: next(values))
    for attempt, draw in enumerate(draws):
        ceiling = min(cap, base * 2**attempt)
        assert backoff.next_delay() == pytest.approx(draw * ceiling)
        assert 0 <= draw * ceiling <= cap


def test_backoff_resets_only_after_a_connection_that_stayed_healthy(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("streaming.feeds.base.time.monotonic", lambda: clock[0])
    backoff = Backoff(base=1, cap=60, healthy_after=30, rng=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(4)] == [1, 2, 4, 8]
    backoff.connected()
    clock[0] += 5  # dropped after 5 s: still flapping, keep backing off
    assert backoff.next_delay() == 16
    backoff.connected()
    clock[0] += 31  # dropped after a healthy 31 s: start from the base again
    assert backoff.next_delay() == 1


def test_each_state_change_is_logged_once(caplog):
    stats = FeedStats(feed="demo")
    with caplog.at_level(logging.INFO, logger="streaming.feeds.base"):
        stats.set_state("connecting")
        stats.set_state("connected", "subscribed")
        stats.set_state("connected")
        stats.set_state("backoff", "closed by exchange")
    assert [r.getMessage() for r in caplog.records] == [
        "feed demo: stopped -> connecting",
        "feed demo: connecting -> connected (subscribed)",
        "feed demo: connected -> backoff (closed by exchange)",
    ]
    assert stats.connected_since is None


def test_a_feed_with_several_connections_is_connected_only_when_all_are():
    stats = FeedStats(feed="demo")
    stats.set_state("connected", connection="conn0")
    stats.set_state("connecting", connection="conn1")
    assert stats.state == "connecting"
    stats.set_state("connected", connection="conn1")
    assert stats.state == "connected" and stats.connected_since is not None
    stats.set_state("stopped", connection="conn1")
    assert stats.state == "connected" and stats.connections == {"conn0": "connected"}


def test_stats_count_messages_per_symbol_and_export_as_plain_data():
    stats = FeedStats(feed="demo")
    stats.record_message("BTCUSDT")
    stats.record_message()
    exported = stats.as_dict()
    assert exported["messages"] == 2
    assert set(exported["symbol_last_message"]) == {"BTCUSDT"}
    assert exported["state"] == "stopped"


def test_trades_and_books_refuse_floats_and_naive_times():
    now = datetime.now(UTC)
    with pytest.raises(TypeError):
        Trade(feed_symbol="X", price=1.5, size=Decimal(1), side="buy", trade_id="1", ts=now)
    with pytest.raises(ValueError, match="timezone-aware"):
        Book(feed_symbol="X", bids=(), asks=(), ts=datetime(2024, 1, 1))


T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


async def until(condition, what):
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_a_lone_tick_goes_out_at_once_with_no_window_to_wait_for():
    flushed = []

    async def flush(batch):
        flushed.append([(t.feed_symbol, t.price) for t in batch])

    c = Coalescer(flush=flush)
    running = asyncio.create_task(c.run())
    c.add(Tick("BTC", Decimal("1"), T0))
    # The flush runs within a few turns of the event loop: no timer stands between them.
    for _ in range(5):
        await asyncio.sleep(0)
    running.cancel()
    assert flushed == [[("BTC", Decimal("1"))]]


async def test_ticks_that_come_while_a_flush_is_on_its_way_go_together_newest_per_symbol():
    release = asyncio.Event()
    flushed = []

    async def flush(batch):
        flushed.append(sorted((t.feed_symbol, t.price) for t in batch))
        await release.wait()  # a slow consumer

    c = Coalescer(flush=flush)
    running = asyncio.create_task(c.run())
    c.add(Tick("BTC", Decimal("1"), T0))
    await until(lambda: flushed, "the first flush")
    for n in range(2, 50):
        c.add(Tick("BTC", Decimal(n), T0.replace(second=n)))
    c.add(Tick("ETH", Decimal("7"), T0))
    c.add(Tick("ETH", Decimal("6"), T0.replace(year=2025)))  # older: kept out
    release.set()
    await until(lambda: len(flushed) == 2, "the second flush")
    running.cancel()
    assert flushed == [[("BTC", Decimal("1"))], [("BTC", Decimal("49")), ("ETH", Decimal("7"))]]


async def test_a_failing_flush_is_logged_and_the_next_ticks_still_go_out(caplog):
    flushed = []

    async def flush(batch):
        if not flushed:
            flushed.append(None)
            raise ConnectionError("redis down")
        flushed.append([t.price for t in batch])

    c = Coalescer(flush=flush)
    running = asyncio.create_task(c.run())
    with caplog.at_level(logging.ERROR):
        c.add(Tick("BTC", Decimal("1"), T0))
        await until(lambda: flushed, "the failing flush")
        c.add(Tick("BTC", Decimal("2"), T0.replace(second=1)))
        await until(lambda: len(flushed) == 2, "the next flush")
    running.cancel()
    assert flushed[1] == [Decimal("2")]
    assert "flush of 1 ticks failed" in caplog.text
