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


def coalescer(hold, *, max_hold=60.0):
    flushed: list[list[tuple[str, Decimal]]] = []

    async def flush(batch):
        flushed.append(sorted((t.feed_symbol, t.price) for t in batch))

    return Coalescer(window=0.01, flush=flush, hold=hold, max_hold=max_hold), flushed


async def until(condition, what):
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_while_the_consumer_is_behind_windows_merge_into_one_batch_of_the_newest():
    behind = True
    asked = 0

    async def hold():
        nonlocal asked
        asked += 1
        return behind

    c, flushed = coalescer(hold)
    running = asyncio.create_task(c.run())
    c.add(Tick("BTC", Decimal("1"), T0))
    await until(lambda: asked >= 3, "three windows held")
    c.add(Tick("BTC", Decimal("2"), T0.replace(second=1)))
    c.add(Tick("ETH", Decimal("7"), T0))
    await until(lambda: asked >= 6, "three more windows held")
    assert flushed == []  # nothing sent while held, nothing dropped either
    behind = False
    await until(lambda: flushed, "a flush once the consumer caught up")
    running.cancel()
    assert flushed[0] == [("BTC", Decimal("2")), ("ETH", Decimal("7"))]


async def test_a_held_window_goes_out_once_the_consumer_is_free_not_a_window_later():
    # A held window asks again every hold_poll: the batch leaves within a poll of the consumer
    # becoming free (the worker idled up to a whole window between tasks before).
    asked = 0

    async def hold():
        nonlocal asked
        asked += 1
        return asked <= 5  # busy for five asks, then free

    flushed_at = []

    async def flush(batch):
        flushed_at.append((asyncio.get_running_loop().time(), batch))

    c = Coalescer(window=1.0, flush=flush, hold=hold, hold_poll=0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    running = asyncio.create_task(c.run())
    c.add(Tick("BTC", Decimal("1"), T0))
    await until(lambda: flushed_at, "the held window's flush")
    running.cancel()
    ((at, batch),) = flushed_at
    assert [t.price for t in batch] == [Decimal("1")]
    assert asked == 6
    # One window, then five polls of 10 ms: well before a second window would have ended.
    assert at - started < 2 * c.window


async def test_a_window_is_never_held_longer_than_max_hold():
    async def hold():
        return True  # a consumer that never catches up (or a queue someone else fills)

    c, flushed = coalescer(hold, max_hold=0.05)
    running = asyncio.create_task(c.run())
    c.add(Tick("BTC", Decimal("1"), T0))
    await until(lambda: flushed and flushed[0], "a flush after max_hold")
    c.add(Tick("BTC", Decimal("3"), T0.replace(second=2)))
    await until(lambda: [("BTC", Decimal("3"))] in flushed, "the next one too")
    running.cancel()


@pytest.mark.parametrize("option", ["window", "hold_poll"])
def test_a_coalescer_refuses_a_window_or_poll_that_is_not_positive(option):
    async def flush(batch):
        pass

    options = {"window": 0.1, "hold_poll": 0.02} | {option: 0}
    with pytest.raises(ValueError, match=f"{option}"):
        Coalescer(flush=flush, **options)


async def test_a_slow_backpressure_check_does_not_stretch_the_hold_past_max_hold():
    # Each check takes 50 ms (a busy Redis); the hold is bounded by the clock, not by the
    # number of polls (20 polls of 10 ms, each after a 50 ms check: held over 1.2 s).
    async def hold():
        await asyncio.sleep(0.05)
        return True

    flushed_at = []

    async def flush(batch):
        flushed_at.append(asyncio.get_running_loop().time())

    c = Coalescer(window=0.01, flush=flush, hold=hold, max_hold=0.2, hold_poll=0.01)
    started = asyncio.get_running_loop().time()
    running = asyncio.create_task(c.run())
    await until(lambda: flushed_at, "a flush after max_hold")
    running.cancel()
    assert flushed_at[0] - started < 1.0  # max_hold (0.2 s), one check and a window over it


async def test_when_the_backpressure_check_fails_the_window_goes_out(caplog):
    async def hold():
        raise ConnectionError("redis down")

    c, flushed = coalescer(hold)
    running = asyncio.create_task(c.run())
    c.add(Tick("BTC", Decimal("1"), T0))
    with caplog.at_level(logging.WARNING):
        await until(lambda: flushed and flushed[0], "a flush despite the failing check")
    running.cancel()
    assert flushed[0] == [("BTC", Decimal("1"))]
    assert "backpressure check failed" in caplog.text
