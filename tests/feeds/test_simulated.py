"""The simulated exchange: deterministic prices for a seed, ticks only for the symbols it has,
and a loop that does not wake for every single tick."""

from __future__ import annotations

import asyncio

import pytest

from streaming.feeds import simulated
from streaming.feeds.simulated import SimulatedFeed

pytestmark = pytest.mark.unit


def _prices(seed: int, symbols: list[str], steps: int) -> list[tuple[str, str]]:
    feed = SimulatedFeed(emit=lambda tick: None, seed=seed, rate=1000)
    return [(s, str(feed.step(s).price)) for s in symbols * steps]


def test_a_seed_gives_the_same_price_path_every_time():
    path = _prices(7, ["BTC-USD", "ETH-USD"], 50)
    assert path == _prices(7, ["BTC-USD", "ETH-USD"], 50)
    assert path != _prices(8, ["BTC-USD", "ETH-USD"], 50)


async def _run_until(feed: SimulatedFeed, monkeypatch, on_sleep, sleeps: int) -> list[float]:
    """Run ``feed`` until its loop has slept ``sleeps`` times; each sleep awaits ``on_sleep(n)``,
    then really waits 2 ms (so ticks fall due). Returns the delays the loop asked for."""
    delays: list[float] = []
    real_sleep = asyncio.sleep
    done = asyncio.Event()

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await on_sleep(len(delays))
        if len(delays) == sleeps:
            done.set()
            await real_sleep(3600)
        await real_sleep(0.002)

    monkeypatch.setattr(simulated.asyncio, "sleep", sleep)
    runner = asyncio.create_task(feed.run())
    await asyncio.wait_for(done.wait(), 10)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    return delays


async def test_ticks_follow_the_symbol_set_and_wake_ups_are_at_least_5_ms_apart(monkeypatch):
    ticks = []
    feed = SimulatedFeed(emit=ticks.append, seed=1, rate=5000)
    await feed.set_symbols(frozenset({"A", "B"}))
    per_wake: list[int] = []

    async def on_sleep(n: int) -> None:
        per_wake.append(len(ticks) - sum(per_wake))
        if n == 3:  # the admin changed the instruments: the next ticks use the new set
            ticks.clear()
            per_wake.clear()
            await feed.set_symbols(frozenset({"C"}))

    delays = await _run_until(feed, monkeypatch, on_sleep, sleeps=7)
    # At 5,000 ticks/s a tick is owed every 0.2 ms; the loop still sleeps 5 ms or more between
    # wake-ups, and each wake-up emits all that the clock says is owed (2 ms or more: >= 10).
    assert min(delays) >= 0.005
    assert max(per_wake) >= 10
    assert ticks and {t.feed_symbol for t in ticks} == {"C"}


async def test_at_a_low_rate_the_loop_sleeps_until_the_next_tick_is_due(monkeypatch):
    feed = SimulatedFeed(emit=lambda tick: None, seed=1, rate=10)
    await feed.set_symbols(frozenset({"A"}))

    async def nothing(n: int) -> None:
        pass

    delays = await _run_until(feed, monkeypatch, nothing, sleeps=1)
    assert 0.05 < delays[0] <= 0.1  # a tick every 100 ms, not one every MIN_WAKE
