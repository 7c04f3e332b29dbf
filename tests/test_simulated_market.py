"""The simulated market downstream: the feed runner publishes its books and trades as the exchange
adapters' are, and what a bot on API v1 and the instrument page see is the simulated book.

Real pieces: the runner (streaming/runner.py) on the test database, the Redis channel layer, the
market-data cache in Redis and API v1 through the ASGI app. The market's order events are driven
by the test (the feed's own pacing is set to wait), so every frame can be checked against the
market's state at that moment.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from channels.db import aclose_old_connections, database_sync_to_async

from streaming import marketdata
from streaming.consumers import instrument_page_state
from streaming.feeds.base import Trade, utcnow
from streaming.runner import FeedRunner, cancel_and_wait
from tests.api import assert_documented, connect, request

pytestmark = pytest.mark.django_db(transaction=True)


def levels(book: dict) -> tuple[list, list]:
    """A ``book`` frame's levels as Decimals, to compare with the market's own."""
    return (
        [(Decimal(p), Decimal(s)) for p, s in book["bids"]],
        [(Decimal(p), Decimal(s)) for p, s in book["asks"]],
    )


def top(market) -> tuple[list, list]:
    bids, asks = market.top()
    return list(bids), list(asks)


async def started_runner(instrument) -> tuple[FeedRunner, asyncio.Task]:
    """A runner whose simulated market has opened and whose opening is in the cache; the feed's
    own pacing waits (one order event an hour), so the test makes the market's events."""
    ticks: list[list[dict]] = []

    async def sink(batch: list[dict]) -> None:
        ticks.append(batch)

    runner = FeedRunner(
        kind="simulated",
        sink=sink,
        order_books=True,
        seed=11,
        rate=0.001,
        order_rate=1 / 3600,
        speedup=Decimal("0.01"),  # an event's simulated time stays short at this order rate
    )
    task = asyncio.create_task(runner.run())
    for _ in range(100):
        book = await database_sync_to_async(marketdata.latest_book)(instrument.id)
        if book is not None and runner.feed.markets:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the simulated market's opening book was never published")
    return runner, task


async def stopped(runner: FeedRunner, task: asyncio.Task) -> None:
    runner.stopping = True
    await cancel_and_wait([task])
    # The runner's database calls ran in the sync thread, outside any consumer handler (which
    # would close them): close its connection, or the test database cannot be dropped.
    await aclose_old_connections()


def drive(runner: FeedRunner, symbol: str, *, trades: int) -> list[Trade]:
    """Order events on ``symbol``'s market, handed to the runner as the feed hands them, until
    ``trades`` trades have happened; returns them."""
    market = runner.feed.markets[symbol]
    made: list[Trade] = []
    while len(made) < trades:
        for event in market.event(utcnow()):
            runner.on_event(event)
            if isinstance(event, Trade):
                made.append(event)
    return made


async def frames_until(comm, done, limit: int = 200) -> list[dict]:
    frames: list[dict] = []
    while not done(frames):
        assert len(frames) < limit, frames[-3:]
        frames.append(await comm.receive_json_from(timeout=5))
    return frames


async def test_a_bot_gets_the_simulated_book_and_every_trade_snapshot_first(world, redis_client):
    btc = world["btc"]  # crypto on the simulated feed: it trades in a simulated market
    runner, task = await started_runner(btc)
    try:
        market = runner.feed.markets["BTC-USD"]
        comm = await connect(world["users"]["alice"])
        reply = await request(comm, type="subscribe", id=1, stream="book:BTC-USD")
        assert (reply["type"], reply["id"]) == ("reply", 1)
        snapshot = await comm.receive_json_from(timeout=5)
        assert_documented(snapshot)
        assert snapshot["type"] == "snapshot" and snapshot["stream"] == "book:BTC-USD"
        assert levels(snapshot["data"]) == top(market)
        assert 0 < len(snapshot["data"]["bids"]) <= 10 and 0 < len(snapshot["data"]["asks"]) <= 10

        await request(comm, type="subscribe", id=2, stream="trades:BTC-USD")
        tape = await comm.receive_json_from(timeout=5)
        assert_documented(tape)
        opening = [int(t["trade_id"]) for t in tape["data"]["trades"]]
        last = market.book._next_trade_id - 1  # the market's newest trade so far
        assert opening == list(range(last - len(opening) + 1, last + 1))
        assert len(opening) == marketdata.RECENT_TRADES  # the opening minute filled the tape

        made = drive(runner, "BTC-USD", trades=30)
        frames = await frames_until(
            comm,
            lambda fs: (
                any(
                    f.get("stream") == "trades:BTC-USD"
                    and f["data"]["trade_id"] == made[-1].trade_id
                    for f in fs
                )
                and any(f.get("stream") == "book:BTC-USD" for f in fs)
            ),
        )
        for frame in frames:
            assert_documented(frame)
        # (A trade the snapshot holds may also come as an update: a bot skips the ids it has.)
        trades = [
            f["data"]
            for f in frames
            if f["stream"] == "trades:BTC-USD" and int(f["data"]["trade_id"]) > last
        ]
        assert [int(t["trade_id"]) for t in trades] == list(range(last + 1, last + 1 + len(made)))
        assert [(Decimal(t["price"]), Decimal(t["size"]), t["side"]) for t in trades] == [
            (t.price, t.size, t.side) for t in made
        ]
        books = [f["data"] for f in frames if f["stream"] == "book:BTC-USD"]
        assert levels(books[-1]) == top(market)  # the newest book is the market's, as it stands
        await comm.disconnect()

        # What the instrument page draws first: the same book and the same newest trades.
        state = await database_sync_to_async(instrument_page_state)(
            instrument=btc, user_id=world["users"]["alice"].id
        )
        assert levels(state["book"]) == top(market)
        assert state["trades"][-1]["trade_id"] == made[-1].trade_id
    finally:
        await stopped(runner, task)


async def test_an_instrument_that_is_not_crypto_gets_no_simulated_market(world, redis_client):
    from portfolio.models import AssetClass

    eth = world["eth"]
    await database_sync_to_async(type(eth).objects.filter(pk=eth.pk).update)(
        asset_class=AssetClass.EQUITY
    )
    runner, task = await started_runner(world["btc"])
    try:
        assert set(runner.feed.markets) == {"BTC-USD"}
        assert await database_sync_to_async(marketdata.latest_book)(eth.id) is None
    finally:
        await stopped(runner, task)


def test_runfeed_refuses_order_books_for_a_feed_that_is_not_simulated():
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="--order-books: only the simulated feed"):
        call_command("runfeed", "binance", "--order-books")
    with pytest.raises(ValueError, match="order_books: only the simulated feed"):
        FeedRunner(kind="kraken", order_books=True)


async def test_a_feed_with_simulated_markets_writes_its_health(world, redis_client):
    """The feed's health row is written while it runs its simulated markets (their objects are
    not the ccxt feed's market list, which the row keeps)."""
    from portfolio.models import FeedStatus

    runner, task = await started_runner(world["btc"])
    try:
        await database_sync_to_async(runner.record_status)()
        status = await database_sync_to_async(FeedStatus.objects.get)(feed="simulated")
        assert status.state == "connected"
        assert status.markets in (None, [])
    finally:
        await stopped(runner, task)
