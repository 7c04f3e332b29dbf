"""A feed runner whose batch cannot be sent (the broker down) keeps its ticks, the newest per
instrument, and sends them with the first batch that goes through, after a backoff. The end to
end run (Redis killed and restarted under a real feed process) is in
tests/faults/test_feed_outages.py."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

from streaming.feeds.base import Tick
from streaming.runner import SEND_RETRY_BASE, FeedRunner, Target
from tests.test_ingest import T0


def tick(symbol: str, price: str, seconds: float) -> Tick:
    return Tick(feed_symbol=symbol, price=Decimal(price), ts=T0 + timedelta(seconds=seconds))


class Broker:
    """The runner's sink: refuses batches while ``down``, records those it takes."""

    def __init__(self) -> None:
        self.down = False
        self.tries = 0
        self.taken: list[dict[str, str]] = []

    async def __call__(self, batch: list[dict]) -> None:
        self.tries += 1
        if self.down:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        self.taken.append({item["instrument"]: item["price"] for item in batch})


def runner_with(broker: Broker) -> tuple[FeedRunner, list[float]]:
    runner = FeedRunner(kind="simulated", sink=broker)
    runner.symbols = {"BTC-USD": Target(1, "BTC-USD"), "ETH-USD": Target(2, "ETH-USD")}
    now = [0.0]
    runner.clock = lambda: now[0]
    return runner, now


def test_ticks_of_a_failed_send_go_with_the_next_batch_that_goes_through_newest_first():
    broker = Broker()
    runner, now = runner_with(broker)
    broker.down = True
    asyncio.run(runner.flush([tick("BTC-USD", "100", 1), tick("ETH-USD", "10", 1)]))
    assert broker.tries == 1 and broker.taken == []

    # Within the backoff nothing is tried; a newer BTC replaces the kept one, an older ETH
    # (out of order) does not.
    asyncio.run(runner.flush([tick("BTC-USD", "101", 2), tick("ETH-USD", "9", 0)]))
    assert broker.tries == 1

    broker.down = False
    now[0] += SEND_RETRY_BASE  # the first retry waits at most the base delay
    asyncio.run(runner.flush([]))
    assert broker.taken == [{1: "101", 2: "10"}]
    # Sent once: the next batch carries only its own ticks.
    now[0] += 0.1
    asyncio.run(runner.flush([tick("BTC-USD", "102", 3)]))
    assert broker.taken[-1] == {1: "102"}


def test_kept_ticks_are_at_most_one_per_instrument_and_only_of_instruments_still_streamed():
    broker = Broker()
    runner, now = runner_with(broker)
    broker.down = True
    for second in range(50):
        for symbol, price in (("BTC-USD", 100 + second), ("ETH-USD", 10 + second)):
            now[0] += 10  # past any backoff: every flush is a try, and fails
            asyncio.run(runner.flush([tick(symbol, str(price), second)]))
    assert broker.tries == 100
    assert sorted(runner.unsent) == ["BTC-USD", "ETH-USD"]

    runner.symbols = {"BTC-USD": Target(1, "BTC-USD")}  # ETH switched off in the admin
    broker.down = False
    now[0] += 10
    asyncio.run(runner.flush([]))
    assert broker.taken == [{1: "149"}]
