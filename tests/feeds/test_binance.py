"""Binance adapter against a local fake speaking the documented Spot WebSocket Streams protocol."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from streaming.feeds.binance import BinanceFeed, DepthBook

from .fakes import Collector, FakeBinance, FakeBinanceRest, eventually, running

pytestmark = pytest.mark.unit

FAST = {"backoff_base": 0.01, "backoff_cap": 0.05, "close_timeout": 0.5}
UNUSED_REST = "http://127.0.0.1:9"  # for feeds without the depth channel


def trade(price: str = "25.36000000", trade_id: int = 12345, buyer_is_maker: bool = True):
    return {
        "e": "trade",
        "E": 1672515782136,
        "s": "BTCUSDT",
        "t": trade_id,
        "p": price,
        "q": "100",
        "b": 88,
        "a": 50,
        "T": 1672515782136,
        "m": buyer_is_maker,
        "M": True,
    }


def mini_ticker(close: str) -> dict[str, Any]:
    return {
        "e": "24hrMiniTicker",
        "E": 1672515783000,
        "s": "BTCUSDT",
        "c": close,
        "o": "0.0010",
        "h": "0.0025",
        "l": "0.0010",
        "v": "10000",
        "q": "18",
    }


BOOK_TICKER = {
    "u": 400900217,
    "s": "BTCUSDT",
    "b": "25.35190000",
    "B": "31.21000000",
    "a": "25.36520000",
    "A": "40.66000000",
}


def depth(first: int, last: int, bids=(), asks=()) -> dict[str, Any]:
    return {
        "e": "depthUpdate",
        "E": 1672515782136,
        "s": "BTCUSDT",
        "U": first,
        "u": last,
        "b": [list(level) for level in bids],
        "a": [list(level) for level in asks],
    }


async def test_ticks_and_trades_carry_exact_decimals_from_the_wire():
    async with FakeBinance() as exchange:
        got = Collector()
        feed = BinanceFeed(emit=got, url=exchange.url, rest_url=UNUSED_REST, **FAST)
        await feed.set_symbols(frozenset({"BTCUSDT"}))
        async with running(feed):
            client = await exchange.wait_clients(1)
            assert client.path.startswith("/stream?streams=")
            assert exchange.streams(client) == {
                "btcusdt@miniTicker",
                "btcusdt@bookTicker",
                "btcusdt@trade",
            }
            await exchange.event("btcusdt@bookTicker", BOOK_TICKER)
            await exchange.event("btcusdt@trade", trade())
            await exchange.event("btcusdt@miniTicker", mini_ticker("25.37000000"))
            await eventually(lambda: len(got.ticks()) == 3)

    from_book, from_trade, from_ticker = got.ticks("BTCUSDT")
    # Before any trade, a best bid/ask update is priced at the mid.
    assert from_book.price == Decimal("25.35855000")
    assert (from_book.bid, from_book.ask) == (Decimal("25.35190000"), Decimal("25.36520000"))
    assert from_trade.price == Decimal("25.36000000")
    assert from_trade.ts == datetime(2022, 12, 31, 19, 43, 2, 136000, tzinfo=UTC)
    assert from_trade.bid == Decimal("25.35190000")
    assert from_ticker.price == Decimal("25.37000000")
    [executed] = got.trades()
    assert executed.price == Decimal("25.36000000") and executed.size == Decimal("100")
    assert executed.side == "sell"  # the buyer was the maker, so the taker sold
    assert executed.trade_id == "12345"
    assert isinstance(executed.price, Decimal) and isinstance(from_book.price, Decimal)


async def test_order_book_follows_snapshot_then_diffs_and_resyncs_after_a_gap():
    async with FakeBinance() as exchange, FakeBinanceRest() as rest:
        rest.snapshots["BTCUSDT"] = [
            {
                "lastUpdateId": 160,
                "bids": [["0.0024", "10"], ["0.0023", "5"]],
                "asks": [["0.0026", "100"]],
            },
            {"lastUpdateId": 300, "bids": [["0.0030", "1"]], "asks": [["0.0031", "2"]]},
        ]
        got = Collector()
        feed = BinanceFeed(
            emit=got,
            url=exchange.url,
            rest_url=rest.url,
            channels=("depth",),
            depth_limit=50,
            **FAST,
        )
        await feed.set_symbols(frozenset({"BTCUSDT"}))
        async with running(feed):
            await exchange.wait_clients(1)
            assert exchange.streams(exchange.current) == {"btcusdt@depth@100ms"}
            await exchange.event("btcusdt@depth@100ms", depth(150, 160, bids=[("0.0024", "99")]))
            await exchange.event("btcusdt@depth@100ms", depth(161, 162, bids=[("0.0024", "12")]))
            await eventually(lambda: got.books())
            assert rest.requests == ["/api/v3/depth?symbol=BTCUSDT&limit=50"]
            synced = got.books()[-1]
            # The event already contained in the snapshot (u <= lastUpdateId) was dropped.
            assert synced.bids == (
                (Decimal("0.0024"), Decimal("12")),
                (Decimal("0.0023"), Decimal("5")),
            )
            assert synced.asks == ((Decimal("0.0026"), Decimal("100")),)

            # A level with quantity 0 is removed.
            await exchange.event("btcusdt@depth@100ms", depth(163, 163, bids=[("0.0023", "0")]))
            await eventually(lambda: len(got.books()[-1].bids) == 1)

            # 164..169 never arrive: the book must not be trusted; it resyncs from a new snapshot.
            await exchange.event("btcusdt@depth@100ms", depth(170, 171, asks=[("0.0027", "1")]))
            await eventually(lambda: len(rest.requests) == 2)
            assert feed.stats.gaps == 1
            books_before = len(got.books())
            await exchange.event("btcusdt@depth@100ms", depth(295, 301, asks=[("0.0031", "7")]))
            await eventually(lambda: len(got.books()) > books_before)
            resynced = got.books()[-1]
            assert resynced.bids == ((Decimal("0.0030"), Decimal("1")),)
            assert resynced.asks == ((Decimal("0.0031"), Decimal("7")),)


def test_depth_book_refetches_a_snapshot_older_than_the_first_buffered_event():
    book = DepthBook()
    assert book.on_event(depth(200, 205)) == "buffered"
    # Binance: if the snapshot's lastUpdateId < the first event's U, fetch the snapshot again.
    assert book.on_snapshot(150, [], []) == "refetch"
    assert book.on_snapshot(202, [["1.0", "1"]], []) == "applied"
    assert book.update_id == 205
    assert book.on_event(depth(203, 205)) == "ignored"  # already in the book
    assert book.on_event(depth(206, 210)) == "applied"
    assert book.on_event(depth(212, 213)) == "gap"
    assert not book.synced


async def test_symbol_changes_subscribe_and_unsubscribe_live_with_ids():
    async with FakeBinance() as exchange:
        got = Collector()
        feed = BinanceFeed(
            emit=got, url=exchange.url, rest_url=UNUSED_REST, channels=("trade",), **FAST
        )
        await feed.set_symbols(frozenset({"BTCUSDT", "ETHUSDT"}))
        async with running(feed):
            client = await exchange.wait_clients(1)
            await feed.set_symbols(frozenset({"BTCUSDT", "SOLUSDT"}))
            sub = await exchange.wait_message(lambda m: m.get("method") == "SUBSCRIBE")
            unsub = await exchange.wait_message(lambda m: m.get("method") == "UNSUBSCRIBE")
            assert sub["params"] == ["solusdt@trade"]
            assert unsub["params"] == ["ethusdt@trade"]
            assert isinstance(sub["id"], int) and sub["id"] != unsub["id"]
            assert exchange.streams(client) == {"btcusdt@trade", "solusdt@trade"}
            await eventually(lambda: not feed.pending)  # both acknowledged with result: null
            await exchange.event("solusdt@trade", {**trade(), "s": "SOLUSDT"})
            await eventually(lambda: got.trades())
            assert got.trades()[0].feed_symbol == "SOLUSDT"
            assert len(exchange.clients) == 1  # no reconnect was needed


async def test_2000_symbols_are_sharded_within_1024_streams_and_5_messages_a_second():
    async with FakeBinance() as exchange:
        feed = BinanceFeed(
            emit=Collector(),
            url=exchange.url,
            rest_url=UNUSED_REST,
            channels=("miniTicker",),
            url_max_streams=100,
            subscribe_chunk=100,
            **FAST,
        )
        symbols = frozenset(f"SYM{i:04d}USDT" for i in range(2000))
        await feed.set_symbols(symbols)
        async with running(feed):
            await exchange.wait_clients(2)
            # 1024 + 976 streams: 100 in each URL, the rest in throttled SUBSCRIBE requests.
            await eventually(
                lambda: sum(len(exchange.streams(c)) for c in exchange.clients) == 2000,
                within=15,
            )
            await asyncio.sleep(0.2)
            assert len(exchange.clients) == 2
            per_connection = [exchange.streams(c) for c in exchange.clients]
            assert all(len(streams) <= 1024 for streams in per_connection)
            assert set.union(*per_connection) == {f"{s.lower()}@miniTicker" for s in symbols}
            for client in exchange.clients:
                times = sorted(r.at for r in client.received)
                assert len(times) >= 9
                busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
                assert busiest <= 5, f"{busiest} control messages within one second"


async def test_server_shutdown_event_reconnects_and_resubscribes():
    async with FakeBinance() as exchange:
        got = Collector()
        feed = BinanceFeed(emit=got, url=exchange.url, rest_url=UNUSED_REST, **FAST)
        await feed.set_symbols(frozenset({"BTCUSDT"}))
        async with running(feed):
            first = await exchange.wait_clients(1)
            await exchange.push({"event": {"e": "serverShutdown", "E": 1770123456789}})
            second = await exchange.wait_clients(2)
            assert exchange.streams(second) == exchange.streams(first)
            await first.closed.wait()  # the old connection is let go
            await exchange.event("btcusdt@trade", trade("30000.01"))
            await eventually(lambda: got.ticks())
            assert got.ticks()[-1].price == Decimal("30000.01")
            assert feed.stats.reconnects == 1


async def test_connection_closed_by_exchange_reconnects_and_ticks_flow_again():
    async with FakeBinance() as exchange:
        got = Collector()
        feed = BinanceFeed(emit=got, url=exchange.url, rest_url=UNUSED_REST, **FAST)
        await feed.set_symbols(frozenset({"BTCUSDT"}))
        async with running(feed):
            await exchange.wait_clients(1)
            await exchange.drop(code=1001)  # e.g. the 24 h limit
            second = await exchange.wait_clients(2)
            await exchange.event("btcusdt@miniTicker", mini_ticker("1.5"), second)
            await eventually(lambda: got.ticks())
            assert feed.stats.reconnects == 1
            assert feed.stats.state == "connected"


async def test_planned_reconnect_before_the_connection_age_limit():
    async with FakeBinance() as exchange:
        feed = BinanceFeed(
            emit=Collector(),
            url=exchange.url,
            rest_url=UNUSED_REST,
            max_connection_age=0.3,
            **FAST,
        )
        await feed.set_symbols(frozenset({"BTCUSDT"}))
        async with running(feed):
            second = await exchange.wait_clients(2)
            assert "btcusdt@trade" in exchange.streams(second)


async def test_a_silent_exchange_is_detected_as_a_stall_and_reconnected():
    async with FakeBinance(ping_interval=None) as exchange:
        got = Collector()
        feed = BinanceFeed(
            emit=got, url=exchange.url, rest_url=UNUSED_REST, stall_timeout=0.3, **FAST
        )
        await feed.set_symbols(frozenset({"BTCUSDT"}))
        async with running(feed):
            await exchange.wait_clients(1)
            second = await exchange.wait_clients(2, within=3)
            await exchange.event("btcusdt@trade", trade(), second)
            await eventually(lambda: got.trades())
            assert feed.stats.reconnects >= 1


async def test_a_connection_that_answers_pings_but_carries_no_data_is_a_stall():
    # Binance Spot "WebSocket Streams" (binance/binance-spot-api-docs, web-socket-streams.md,
    # "General WSS information"): the server sends a ping frame every 20 seconds and drops a
    # connection that does not pong within a minute. A ping proves the socket, not the
    # streams: a connection that answers pings while no stream data arrives has stalled.
    async with FakeBinance(ping_interval=0.05) as exchange:
        got = Collector()
        feed = BinanceFeed(
            emit=got, url=exchange.url, rest_url=UNUSED_REST, stall_timeout=0.3, **FAST
        )
        await feed.set_symbols(frozenset({"BTCUSDT"}))
        async with running(feed):
            client = await exchange.wait_clients(1)
            pong = await client.ws.ping(b"binance")
            assert await asyncio.wait_for(pong, 1) >= 0  # pings are answered
            second = await exchange.wait_clients(2, within=3)
            assert "btcusdt@trade" in exchange.streams(second)
            await exchange.event("btcusdt@trade", trade(), second)
            await eventually(lambda: got.trades())
        assert feed.stats.reconnects >= 1


async def test_stream_data_keeps_a_connection_alive():
    async with FakeBinance(ping_interval=0.05) as exchange:
        got = Collector()
        feed = BinanceFeed(
            emit=got, url=exchange.url, rest_url=UNUSED_REST, stall_timeout=0.3, **FAST
        )
        await feed.set_symbols(frozenset({"BTCUSDT"}))
        async with running(feed):
            await exchange.wait_clients(1)
            for n in range(10):
                await exchange.event("btcusdt@trade", trade(trade_id=n + 1))
                await asyncio.sleep(0.1)
            await eventually(lambda: len(got.trades()) == 10)
            assert len(exchange.clients) == 1
        assert feed.stats.reconnects == 0


async def test_malformed_frames_are_counted_and_logged_and_the_feed_carries_on(caplog):
    async with FakeBinance() as exchange:
        got = Collector()
        feed = BinanceFeed(emit=got, url=exchange.url, rest_url=UNUSED_REST, **FAST)
        await feed.set_symbols(frozenset({"BTCUSDT"}))
        with caplog.at_level(logging.WARNING):
            async with running(feed):
                await exchange.wait_clients(1)
                await exchange.push("this is not json")
                await exchange.event("btcusdt@trade", trade(price="abc"))
                await exchange.event("btcusdt@trade", {**trade(), "p": None})
                await exchange.event("btcusdt@trade", trade("2.5"))
                await eventually(lambda: got.trades())
        assert feed.stats.malformed_frames == 3
        assert [t.price for t in got.trades()] == [Decimal("2.5")]
        assert "this is not json" in caplog.text
        assert len(exchange.clients) == 1


async def test_a_rejected_subscribe_is_counted_and_the_connection_keeps_streaming():
    async with FakeBinance() as exchange:
        exchange.reject.add("nosuchusdt@trade")
        got = Collector()
        feed = BinanceFeed(
            emit=got, url=exchange.url, rest_url=UNUSED_REST, channels=("trade",), **FAST
        )
        await feed.set_symbols(frozenset({"BTCUSDT"}))
        async with running(feed):
            await exchange.wait_clients(1)
            await feed.set_symbols(frozenset({"BTCUSDT", "NOSUCHUSDT"}))
            await eventually(lambda: feed.stats.errors == 1)
            await exchange.event("btcusdt@trade", trade("3.5"))
            await eventually(lambda: got.trades())
        assert len(exchange.clients) == 1


async def test_a_failed_depth_snapshot_is_retried_until_the_book_syncs():
    async with FakeBinance() as exchange, FakeBinanceRest() as rest:
        got = Collector()
        feed = BinanceFeed(
            emit=got, url=exchange.url, rest_url=rest.url, channels=("depth",), **FAST
        )
        await feed.set_symbols(frozenset({"BTCUSDT"}))
        async with running(feed):
            await exchange.wait_clients(1)
            # HTTP 400 (unknown symbol) twice: counted, and retried with backoff.
            await eventually(lambda: len(rest.requests) >= 2 and feed.stats.errors >= 2)
            rest.snapshots["BTCUSDT"] = [{"lastUpdateId": 10, "bids": [["5", "1"]], "asks": []}]
            await exchange.event("btcusdt@depth@100ms", depth(9, 11, asks=[("6", "2")]))
            await eventually(lambda: got.books())
        assert got.books()[-1].asks == ((Decimal("6"), Decimal("2")),)


async def test_a_connection_emptied_by_symbol_changes_is_closed():
    async with FakeBinance() as exchange:
        feed = BinanceFeed(
            emit=Collector(),
            url=exchange.url,
            rest_url=UNUSED_REST,
            channels=("trade",),
            max_streams_per_connection=2,
            **FAST,
        )
        await feed.set_symbols(frozenset({"AUSDT", "BUSDT", "CUSDT"}))
        async with running(feed):
            await exchange.wait_clients(2)
            streams = [exchange.streams(client) for client in exchange.clients]
            lone = next(c for c, s in zip(exchange.clients, streams, strict=True) if len(s) == 1)
            [symbol] = [s.split("@")[0].upper() for s in exchange.streams(lone)]
            await feed.set_symbols(frozenset({"AUSDT", "BUSDT", "CUSDT"} - {symbol}))
            await asyncio.wait_for(lone.closed.wait(), 3)
            assert len(feed.shards) == 1
            assert feed.stats.state == "connected"
