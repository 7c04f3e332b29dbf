"""Valuation pacing (streaming/pacing.py): each portfolio valued at most once per interval, on
a phase of its own; what moves in between is deferred to its next turn, never dropped.
Real Redis; a real Celery worker for the turns that come after the feed went quiet."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from channels.layers import get_channel_layer
from django.conf import settings as django_settings

from streaming import events, pacing
from streaming.feeds.base import Tick
from streaming.runner import FeedRunner, Target
from streaming.tasks import ingest_quotes
from tests.conftest import start_worker
from tests.test_ingest import T0, deliveries, tick
from tests.websocket import as_sent

pytestmark = pytest.mark.django_db(transaction=True)

INTERVAL = 500
START = 1_800_000_000_000  # epoch ms


@pytest.fixture
def clock(redis_client, monkeypatch, settings):
    """Pacing on at INTERVAL ms, on a clock the test moves."""
    settings.LIVEFOLIO_VALUATION_INTERVAL_MS = INTERVAL
    settings.LIVEFOLIO_COALESCE_MS = INTERVAL // 2  # a pass may value every portfolio
    now = [START]
    monkeypatch.setattr(pacing, "clock_ms", lambda: now[0])
    return now


def slot(portfolio_id: int, at: int) -> int:
    return (at - pacing.phase_ms(portfolio_id, INTERVAL)) // INTERVAL


def next_turn(portfolio_id: int, at: int) -> int:
    return pacing.phase_ms(portfolio_id, INTERVAL) + (slot(portfolio_id, at) + 1) * INTERVAL


def test_off_by_default_every_moving_portfolio_is_valued_at_once(redis_client, settings):
    assert settings.LIVEFOLIO_VALUATION_INTERVAL_MS == 0
    assert pacing.take_turns([1, 2, 3]) is None


def test_once_per_slot_then_deferred_to_the_portfolios_next_turn(clock):
    assert pacing.take_turns([42]) == [42]
    clock[0] += 1
    assert pacing.take_turns([42]) == []  # moved again inside the slot it was valued in
    clock[0] = next_turn(42, START) - 1
    assert pacing.take_turns([]) == []  # not yet
    clock[0] += 1
    assert pacing.take_turns([]) == [42]  # its turn: valued without moving again
    assert pacing.take_turns([]) == []  # once


# 2,500: more than the script's chunks of a thousand ids (and two thousand entries) a command.
@pytest.mark.parametrize("count", [500, 2500])
def test_phases_spread_the_valuations_evenly_over_the_interval(clock, count):
    """Portfolios moving at every 100 ms batch: after the first pass, each batch values the
    fifth whose slot began since the last, and each is valued exactly once per interval."""
    ids = list(range(1, count + 1))
    assert sorted(pacing.take_turns(ids)) == ids
    valued: list[int] = []
    for step in range(1, 6):
        clock[0] = START + 100 * step
        due = pacing.take_turns(ids)
        assert len(due) == count // 5
        assert set(due) == {p for p in ids if slot(p, clock[0]) > slot(p, clock[0] - 100)}
        valued += due
    assert sorted(valued) == ids


@pytest.mark.parametrize("count", [500, 2500])
def test_every_deferred_portfolio_gets_its_turn_without_moving_again(clock, count):
    ids = list(range(1, count + 1))
    assert sorted(pacing.take_turns(ids)) == ids
    clock[0] += 1
    # All move again: valued now only where a new slot began this millisecond, the rest deferred.
    valued = pacing.take_turns(ids)
    assert set(valued) == {p for p in ids if slot(p, clock[0]) > slot(p, START)}
    for step in range(1, 6):
        before, clock[0] = clock[0], START + 100 * step
        due = pacing.take_turns([])  # nothing moves: only deferred turns come
        assert set(due) == {p for p in ids if before < next_turn(p, START) <= clock[0]}
        valued += due
    assert sorted(valued) == ids  # each once


def test_a_pass_values_at_most_its_share_longest_unvalued_first(clock, settings):
    """A worker that fell behind finds every portfolio's turn come: a pass values at most twice
    the share of them the time between passes gives (here passes 100 ms apart, and a
    100 ms window before the first: 40% of 500), the ones valued longest ago first, and leaves
    the rest to the next pass."""
    settings.LIVEFOLIO_COALESCE_MS = 100
    ids = list(range(1, 501))
    first = pacing.take_turns(ids)
    assert len(first) == 200  # the rest are ready for the next pass
    clock[0] += 100
    second = pacing.take_turns(ids)
    assert len(second) == 200
    assert not set(second) & set(first)  # never valued before them
    clock[0] += 100
    third = pacing.take_turns(ids)
    assert len(third) == 200
    assert set(first) | set(second) | set(third) == set(ids)  # nobody starved


def test_passes_further_apart_than_the_window_value_every_turn(clock, settings):
    """A runner holds its window while the worker is busy, so passes come further apart than the
    window: the cap follows the time between passes, or the portfolios would get fewer turns a
    second than the interval gives them (a 25 ms window's share, 10% a pass, at a pass every
    125 ms: 400 of the 1,000 turns a second)."""
    settings.LIVEFOLIO_COALESCE_MS = 25
    ids = list(range(1, 501))
    counts = dict.fromkeys(ids, 0)
    for _ in range(40):  # 5 s: every portfolio's turn comes 10 times
        for p in pacing.take_turns(ids):
            counts[p] += 1
        clock[0] += 125
    assert sum(counts.values()) >= 0.95 * 10 * len(ids)
    assert min(counts.values()) >= 8  # nobody starved


def test_one_slow_pass_does_not_let_the_next_value_every_turn(clock, settings):
    """The time between passes is smoothed: after one long pass the next values a little more
    than its share, not everyone due (a pass that long again, and the next due all again)."""
    settings.LIVEFOLIO_COALESCE_MS = 100
    ids = list(range(1, 501))
    for _ in range(20):
        pacing.take_turns(ids)
        clock[0] += 100
    clock[0] += 300  # the last pass took 400 ms: every turn is due
    assert len(pacing.take_turns(ids)) < 0.6 * len(ids)


def test_the_share_is_of_every_paced_portfolio_not_of_the_few_a_pass_considers(clock, settings):
    """A flush after the feed went quiet considers only the deferred, a quiet market only a few
    moving: their turns are not cut to a share of so few."""
    ids = list(range(1, 101))
    assert len(pacing.take_turns(ids)) == 100
    settings.LIVEFOLIO_COALESCE_MS = 100  # a pass may value 40% of the 100 paced
    clock[0] += 10 * INTERVAL
    assert sorted(pacing.take_turns(ids[:10])) == ids[:10]


def totals(messages):
    return [as_sent(m)["portfolio"]["total"] for m in messages]


def test_a_price_inside_the_slot_is_valued_at_the_next_turn_not_dropped(world, clock):
    """The feed went quiet: the empty batches its runner sends while it settles take the
    deferred portfolios' turns."""
    users = {"alice": world["users"]["alice"]}
    alice = world["portfolios"]["alice"].id
    charlie = world["portfolios"]["charlie"].id
    first = deliveries(users, lambda: ingest_quotes([tick(world["btc"], "600", T0)]))
    assert totals(first["alice"]) == ["1200.00"]
    clock[0] += 1
    later = T0 + timedelta(seconds=1)
    held = deliveries(users, lambda: ingest_quotes([tick(world["btc"], "601", later)]))
    assert held == {"alice": []}
    clock[0] = next_turn(alice, START) - 1
    assert deliveries(users, lambda: ingest_quotes([])) == {"alice": []}  # not its turn yet
    clock[0] = max(next_turn(alice, START), next_turn(charlie, START))
    got = deliveries(users, lambda: ingest_quotes([]))
    assert totals(got["alice"]) == ["1202.00"]  # the newest price, once
    assert deliveries(users, lambda: ingest_quotes([])) == {"alice": []}


def test_a_batch_after_the_turn_values_the_deferred_portfolio_itself(world, clock):
    users = {"alice": world["users"]["alice"], "bob": world["users"]["bob"]}
    alice = world["portfolios"]["alice"].id
    deliveries(users, lambda: ingest_quotes([tick(world["btc"], "600", T0)]))
    clock[0] += 1
    later = T0 + timedelta(seconds=1)
    assert deliveries(users, lambda: ingest_quotes([tick(world["btc"], "601", later)])) == {
        "alice": [],
        "bob": [],
    }
    clock[0] = max(next_turn(alice, START), START + 1)
    got = deliveries(users, lambda: ingest_quotes([tick(world["eth"], "200", later)]))
    assert totals(got["alice"]) == ["1202.00"]  # deferred BTC, though this batch moved ETH only
    assert totals(got["bob"]) == ["2000.00"]


def recording_runner(*, window: float) -> tuple[FeedRunner, list[int]]:
    """A feed runner for BTC-USD whose batches are only counted: the sizes, in order."""
    sent: list[int] = []

    async def sink(batch):
        sent.append(len(batch))

    runner = FeedRunner(kind="simulated", window=window, sink=sink)
    runner.symbols = {"BTC-USD": Target(1, "BTC-USD")}
    return runner, sent


def test_a_feed_runner_settles_with_empty_batches_for_one_interval_and_two_windows(settings):
    """After its last tick a runner goes on sending empty batches so the turns its ticks
    deferred still come; then it goes quiet. Without pacing it sends nothing empty."""
    settings.LIVEFOLIO_VALUATION_INTERVAL_MS = 500
    settings.LIVEFOLIO_COALESCE_MS = 100
    runner, sent = recording_runner(window=0.1)
    now = [0.0]
    runner.clock = lambda: now[0]
    btc = Tick(feed_symbol="BTC-USD", price=Decimal("1"), ts=T0)

    async def windows(ticks_first: bool, count: int):
        for n in range(count):
            await runner.flush([btc] if ticks_first and n == 0 else [])
            now[0] += 0.1

    asyncio.run(windows(True, 10))
    assert sent == [1] + [0] * 6  # 0.1 .. 0.6 s: within 0.5 + 2 x 0.1 of the tick
    settings.LIVEFOLIO_VALUATION_INTERVAL_MS = 0
    sent.clear()
    asyncio.run(windows(True, 10))
    assert sent == [1]


def test_a_stopping_runner_hands_on_its_last_window_and_settles_before_it_exits(settings):
    """SIGTERM cancels the runner: the ticks of the window in progress are still sent, then
    the settling batches, so no deferred turn waits for a feed process that is gone."""
    settings.LIVEFOLIO_VALUATION_INTERVAL_MS = 200
    settings.LIVEFOLIO_COALESCE_MS = 50
    runner, sent = recording_runner(window=0.05)
    runner.on_event(Tick(feed_symbol="BTC-USD", price=Decimal("1"), ts=T0))  # not flushed yet
    asyncio.run(runner.settle())
    assert sent[0] == 1
    assert len(sent) > 1 and set(sent[1:]) == {0}
    assert runner.clock() >= runner.settle_until


async def swallows_one_cancellation(log: list[str]) -> None:
    """A loop around a call that loses a cancellation, as asgiref's sync_to_async does when
    its thread is already running: it returns instead of raising."""
    swallowed = False
    while True:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if swallowed:
                log.append("ended")
                raise
            swallowed = True
            log.append("swallowed")


def test_shutdown_cancels_again_a_task_that_lost_its_cancellation():
    from streaming.runner import cancel_and_wait

    async def run() -> list[str]:
        log: list[str] = []
        task = asyncio.create_task(swallows_one_cancellation(log))
        await asyncio.sleep(0.01)
        async with asyncio.timeout(5):  # awaiting it after one cancel() would never end
            await cancel_and_wait([task], again_every=0.05)
        assert task.cancelled()
        return log

    assert asyncio.run(run()) == ["swallowed", "ended"]


def test_a_stopped_runner_ends_even_if_its_cancellation_is_lost(settings, monkeypatch):
    """runfeed's SIGTERM handler calls stop(): the run ends and settles even when the
    cancellation lands in a call that loses it (here: every instruments refresh)."""
    settings.LIVEFOLIO_VALUATION_INTERVAL_MS = 0
    runner, sent = recording_runner(window=0.02)
    runner.refresh = 0.02
    refreshed: list[int] = []
    busy = None  # set as the runner starts its third refresh
    lossy = True

    async def refresh_symbols():
        refreshed.append(1)
        if len(refreshed) == 3:
            busy.set()  # stop() comes while this refresh waits: its cancellation is lost
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if not lossy:
                raise
            # lost, as in sync_to_async

    monkeypatch.setattr(runner, "refresh_symbols", refresh_symbols)
    # No database here: the feed, its start prices and its health row are stand-ins.
    monkeypatch.setattr("streaming.runner.build_feed", lambda *a, **k: IdleFeed())
    monkeypatch.setattr("streaming.runner._latest_prices", lambda kind: {})
    monkeypatch.setattr("streaming.runner.services.feed_status_record", lambda **kw: None)

    async def run() -> bool:
        nonlocal busy, lossy
        busy = asyncio.Event()
        task = asyncio.create_task(runner.run())
        await busy.wait()
        runner.on_event(Tick(feed_symbol="BTC-USD", price=Decimal("1"), ts=T0))
        runner.stop(task)
        done, _ = await asyncio.wait({task}, timeout=5)
        if not done:  # it runs on: end it for good, so that the test can fail
            lossy = False
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return bool(done)

    assert asyncio.run(run()), "the stopped runner was still running 5 s later"
    assert 1 in sent  # the last window's tick was handed on before it exited


class IdleFeed:
    """A feed that connects to nothing and only waits to be cancelled."""

    stats = type("Stats", (), {"as_dict": lambda self: {}})()

    async def set_symbols(self, symbols) -> None:
        pass

    async def run(self) -> None:
        await asyncio.Event().wait()


@pytest.mark.stack
def test_with_a_real_runner_and_worker_the_last_price_of_a_burst_arrives_when_it_goes_quiet(
    world, redis_client, tmp_path, settings
):
    """Two ticks in two windows, then nothing: the second is deferred (inside the slot the
    first was valued in), and a settling batch of the runner, in the worker, delivers it."""
    settings.LIVEFOLIO_VALUATION_INTERVAL_MS = 2000
    worker = start_worker(tmp_path, LIVEFOLIO_VALUATION_INTERVAL_MS="2000")
    alice = world["users"]["alice"]
    runner = FeedRunner(kind="simulated", window=0.1)
    runner.symbols = {"BTC-USD": Target(world["btc"].id, "BTC-USD")}

    async def run():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(events.user_group(alice.id), channel)
        feeding = asyncio.create_task(runner.coalescer.run())
        now = datetime.now(UTC)
        for n, price in enumerate(["700", "701"]):
            ts = now + timedelta(milliseconds=n)
            runner.on_event(Tick(feed_symbol="BTC-USD", price=Decimal(price), ts=ts))
            await asyncio.sleep(0.15)  # the next window
        received = []
        try:
            while not received or totals(received)[-1] != "1402.00":
                received.append(await asyncio.wait_for(layer.receive(channel), timeout=15))
        finally:
            feeding.cancel()
        return totals(received)

    try:
        got = asyncio.run(run())
    finally:
        worker.stop()
    assert got[-1] == "1402.00"
    assert got in (["1400.00", "1402.00"], ["1402.00"])  # never more than one per tick


def test_with_pacing_one_task_waiting_is_no_backlog_two_are(world, clock, redis_client):
    """A paced pass is bounded, so the next batch arriving while this one runs does not make
    it skip its valuations (streaming/tasks.py valuations_due); two waiting do."""
    users = {"alice": world["users"]["alice"]}
    queue = django_settings.CELERY_TASK_DEFAULT_QUEUE
    redis_client.lpush(queue, "the next batch")
    got = deliveries(users, lambda: ingest_quotes([tick(world["btc"], "600", T0)]))
    assert totals(got["alice"]) == ["1200.00"]
    redis_client.lpush(queue, "and one more")
    clock[0] += INTERVAL  # alice's turn again
    later = T0 + timedelta(seconds=1)
    got = deliveries(users, lambda: ingest_quotes([tick(world["btc"], "601", later)]))
    assert got == {"alice": []}  # left to the next task
