"""The simulated exchange: deterministic prices for a seed, ticks only for the symbols it has,
and a loop that does not wake for every single tick."""

from __future__ import annotations

import asyncio

import pytest

from streaming.feeds import simulated
from streaming.feeds.simulated import SimulatedFeed


def _prices(seed: int, symbols: list[str], steps: int) -> list[tuple[str, str]]:
    feed = SimulatedFeed(emit=lambda tick: None, seed=seed, rate=1000)
    return [(s, str(feed.step(s).price)) for s in symbols * steps]


def test_a_seed_gives_the_same_price_path_every_time():
    path = _prices(7, ["BTC-USD", "ETH-USD"], 50)
    assert path == _prices(7, ["BTC-USD", "ETH-USD"], 50)
    assert path != _prices(8, ["BTC-USD", "ETH-USD"], 50)


async def test_ticks_follow_the_symbol_set_and_wake_ups_are_at_least_min_wake_apart(monkeypatch):
    ticks = []
    feed = SimulatedFeed(emit=ticks.append, seed=1, rate=5000)
    await feed.set_symbols(frozenset({"A", "B"}))
    delays: list[float] = []
    real_sleep = asyncio.sleep
    switched = asyncio.Event()

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 3:  # the admin changed the instruments: the next ticks use the new set
            ticks.clear()
            await feed.set_symbols(frozenset({"C"}))
        if len(delays) == 6:
            switched.set()
            await real_sleep(3600)
        await real_sleep(0.002)

    monkeypatch.setattr(simulated.asyncio, "sleep", sleep)
    runner = asyncio.create_task(feed.run())
    await asyncio.wait_for(switched.wait(), 10)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    # At 5,000 ticks/s a tick is owed every 0.2 ms; the loop still sleeps MIN_WAKE between
    # wake-ups and emits what is owed at each.
    assert delays and min(delays) >= simulated.MIN_WAKE
    assert ticks and {t.feed_symbol for t in ticks} == {"C"}
