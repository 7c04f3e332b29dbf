"""The ccxt feed against local fakes of OKX and Bybit speaking their documented protocols.

Every frame the fakes send is the exchange's own documented example (tests/feeds/fake_venues.py
cites each); the expected values below are read off those examples.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from streaming.feeds.ccxt_exchange import CcxtFeed, to_decimal
from tests.feeds.fake_venues import (
    BYBIT_TICKER,
    BYBIT_TRADE,
    OKX_BOOK_UPDATE,
    OKX_TICKER,
    OKX_TRADE,
    FakeBybit,
    FakeOkx,
    frame,
)
from tests.feeds.fakes import Collector, eventually

pytestmark = pytest.mark.unit


async def started(feed: CcxtFeed, symbols: set[str]) -> asyncio.Task:
    await feed.set_symbols(frozenset(symbols))
    return asyncio.create_task(feed.run())


async def stopped(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def at(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, UTC)


def test_ccxt_floats_read_back_as_the_exchanges_decimal_strings():
    # The strings of OKX's and Bybit's documented examples, through ccxt's float and back.
    for text in ("9999.99", "42219.9", "0.12060306", "16578.50", "0.001", "8476.98"):
        assert to_decimal(float(text)) == Decimal(text)
    with pytest.raises(TypeError):
        to_decimal(None)
    with pytest.raises(ValueError, match="finite"):
        to_decimal(float("nan"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ccxt"], "ccxt needs --exchange ID"),
        (["ccxt", "--exchange", "okex9"], "ccxt has no WebSocket exchange 'okex9'"),
        (["binance", "--exchange", "okx"], "--exchange goes only with the ccxt feed"),
        (["ccxt", "--exchange", "okx", "--stall-seconds", "0"], "--stall-seconds must be positive"),
    ],
)
def test_runfeed_ccxt_names_what_is_wrong_with_its_arguments(args, message):
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("runfeed", *args)


def test_an_exchange_ccxt_does_not_stream_from_is_refused_by_name():
    with pytest.raises(ValueError, match="'nosuchexchange'"):
        CcxtFeed(emit=Collector(), exchange="nosuchexchange")


async def test_okx_ticker_trade_and_book_from_the_documented_examples():
    events = Collector()
    async with FakeOkx() as okx:
        feed = CcxtFeed(emit=events, exchange="okx", urls=okx.ccxt_urls(), stall_timeout=30)
        task = await started(feed, {"BTC/USDT"})
        try:
            for topic in ("tickers:BTC-USDT", "trades:BTC-USDT", "books:BTC-USDT"):
                await okx.wait_subscribed(topic, connection=1)
            # load_markets asked for the instruments; BTC/USDT is ccxt's name for BTC-USDT.
            assert "/api/v5/public/instruments?instType=SPOT" in okx.rest_requests
            assert "BTC/USDT" in feed.listed_markets

            # The snapshot the fake sends on subscribe ("Full Snapshot" example).
            book = (await eventually(lambda: events.books("BTC/USDT")))[0]
            assert book.bids[0] == (Decimal("8476.97"), Decimal("256"))
            assert book.asks[0] == (Decimal("8476.98"), Decimal("415"))
            assert book.bids[-1] == (Decimal("8446"), Decimal("95"))
            assert book.ts == at(1597026383085)

            await okx.push(OKX_TICKER)
            tick = await eventually(lambda: [t for t in events.ticks() if t.bid is not None])
            assert (tick[0].price, tick[0].bid, tick[0].ask) == (
                Decimal("9999.99"),
                Decimal("8888.88"),
                Decimal("9999.99"),
            )
            assert tick[0].ts == at(1597026383085)

            await okx.push(OKX_TRADE)
            trade = (await eventually(events.trades))[0]
            assert (trade.price, trade.size, trade.side, trade.trade_id) == (
                Decimal("42219.9"),
                Decimal("0.12060306"),
                "buy",
                "130639474",
            )
            assert trade.ts == at(1630048897897)
            assert feed.stats.state == "connected"
            assert feed.stats.gaps == 0
        finally:
            await stopped(task)
    assert feed.stats.state == "stopped"


async def test_okx_sequence_gap_is_counted_and_the_book_starts_again_from_a_snapshot():
    # OKX "Sequence ID": an update's prevSeqId equals the previous message's seqId.
    events = Collector()
    async with FakeOkx() as okx:
        feed = CcxtFeed(emit=events, exchange="okx", urls=okx.ccxt_urls(), channels=("book",))
        task = await started(feed, {"BTC/USDT"})
        try:
            await eventually(lambda: events.books("BTC/USDT"))
            await okx.push(OKX_BOOK_UPDATE)  # seqId 123457 follows prevSeqId 123456: in sequence
            await eventually(lambda: len(events.books("BTC/USDT")) >= 2)
            assert feed.stats.gaps == 0
            books_before = len(events.books("BTC/USDT"))
            await okx.push(frame(OKX_BOOK_UPDATE, prevSeqId=200000, seqId=200001))
            await eventually(lambda: feed.stats.gaps == 1)
            # ccxt unsubscribes and subscribes again; the fresh snapshot rebuilds the book.
            client = okx.clients[0]
            await eventually(
                lambda: any(
                    isinstance(m, dict) and m.get("op") == "unsubscribe" for m in client.received
                )
            )
            await eventually(lambda: len(events.books("BTC/USDT")) > books_before)
            assert events.books("BTC/USDT")[-1].bids[0] == (Decimal("8476.97"), Decimal("256"))
        finally:
            await stopped(task)


async def test_bybit_ticker_trade_and_book_from_the_documented_examples():
    events = Collector()
    async with FakeBybit() as bybit:
        feed = CcxtFeed(emit=events, exchange="bybit", urls=bybit.ccxt_urls())
        task = await started(feed, {"BTC/USDT"})
        try:
            for topic in ("tickers.BTCUSDT", "publicTrade.BTCUSDT", "orderbook.50.BTCUSDT"):
                await bybit.wait_subscribed(topic, connection=1)
            assert "/v5/market/instruments-info?category=spot" in bybit.rest_requests

            book = (await eventually(lambda: events.books("BTC/USDT")))[0]
            assert book.bids == (
                (Decimal("16493.50"), Decimal("0.006")),
                (Decimal("16493.00"), Decimal("0.100")),
            )
            assert book.asks[0] == (Decimal("16611.00"), Decimal("0.029"))
            assert book.ts == at(1672304484978)

            await bybit.push(BYBIT_TICKER)
            tick = await eventually(lambda: events.ticks("BTC/USDT"))
            # The spot ticker carries no best bid/ask.
            assert (tick[0].price, tick[0].bid, tick[0].ask) == (Decimal("16363.78"), None, None)
            assert tick[0].ts == at(1672305380595)

            await bybit.push(BYBIT_TRADE)
            trade = (await eventually(events.trades))[0]
            assert (trade.price, trade.size, trade.side, trade.trade_id) == (
                Decimal("16578.50"),
                Decimal("0.001"),
                "buy",
                "20f43950-d8dd-5b31-9112-a178eb6023af",
            )
            assert trade.ts == at(1672304486865)
        finally:
            await stopped(task)


async def test_a_dropped_connection_is_counted_and_streaming_resumes():
    events = Collector()
    async with FakeBybit() as bybit:
        feed = CcxtFeed(
            emit=events,
            exchange="bybit",
            urls=bybit.ccxt_urls(),
            channels=("ticker",),
            backoff_base=0.05,
            backoff_cap=0.2,
        )
        task = await started(feed, {"BTC/USDT"})
        try:
            await bybit.wait_subscribed("tickers.BTCUSDT", connection=1)
            await bybit.push(BYBIT_TICKER)
            await eventually(lambda: events.ticks())
            await bybit.drop()
            await bybit.wait_subscribed("tickers.BTCUSDT", connection=2)
            assert feed.stats.reconnects == 1
            await bybit.push(frame(BYBIT_TICKER, lastPrice="16400.5"))
            await eventually(lambda: events.ticks()[-1].price == Decimal("16400.5"))
            assert feed.stats.state == "connected"
        finally:
            await stopped(task)


async def test_a_silent_exchange_is_a_stall_and_the_feed_reconnects():
    events = Collector()
    async with FakeOkx() as okx:
        feed = CcxtFeed(
            emit=events,
            exchange="okx",
            urls=okx.ccxt_urls(),
            channels=("ticker",),
            stall_timeout=0.5,
            backoff_base=0.05,
            backoff_cap=0.2,
        )
        task = await started(feed, {"BTC/USDT"})
        try:
            await okx.wait_subscribed("tickers:BTC-USDT", connection=1)
            await okx.push(OKX_TICKER)
            await eventually(lambda: events.ticks())
            okx.silent = True  # the socket stays open; nothing more comes
            await eventually(lambda: feed.stats.reconnects >= 1)
            okx.silent = False
            await okx.wait_subscribed("tickers:BTC-USDT", connection=2)
            await okx.push(frame(OKX_TICKER, last="10001.5", ts="1597026384085"))
            await eventually(lambda: events.ticks()[-1].price == Decimal("10001.5"))
            assert feed.stats.state == "connected"
        finally:
            await stopped(task)


async def test_a_symbol_the_exchange_does_not_list_is_not_watched_and_the_rest_stream():
    events = Collector()
    async with FakeOkx() as okx:
        feed = CcxtFeed(emit=events, exchange="okx", urls=okx.ccxt_urls(), channels=("ticker",))
        task = await started(feed, {"BTC/USDT", "NOPE/USDT"})
        try:
            await okx.wait_subscribed("tickers:BTC-USDT", connection=1)
            await okx.push(OKX_TICKER)
            await eventually(lambda: events.ticks("BTC/USDT"))
            assert okx.topics(okx.clients[0]) == {"tickers:BTC-USDT"}
            assert feed.stats.state == "connected"
        finally:
            await stopped(task)


async def test_a_symbol_removed_in_the_admin_is_unsubscribed_on_the_exchange():
    events = Collector()
    async with FakeBybit() as bybit:
        feed = CcxtFeed(emit=events, exchange="bybit", urls=bybit.ccxt_urls(), channels=("ticker",))
        task = await started(feed, {"BTC/USDT"})
        try:
            await bybit.wait_subscribed("tickers.BTCUSDT", connection=1)
            await feed.set_symbols(frozenset())
            client = bybit.clients[0]
            unsubscribed = await eventually(
                lambda: [
                    m
                    for m in client.received
                    if isinstance(m, dict) and m.get("op") == "unsubscribe"
                ]
            )
            assert unsubscribed[0]["args"] == ["tickers.BTCUSDT"]
            assert feed.stats.state == "stopped"
        finally:
            await stopped(task)
