"""Kraken v2 adapter against a local fake speaking the documented WebSocket v2 protocol."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

import pytest

from streaming.feeds.kraken import KrakenFeed, book_checksum, checksum_token

from .fakes import Collector, FakeKraken, eventually, running

pytestmark = pytest.mark.unit

FAST = {"backoff_base": 0.01, "backoff_cap": 0.05, "close_timeout": 0.5, "stall_timeout": 0.5}

# The worked example of Kraken's "Book checksum (WebSocket v2)" guide
# (https://docs.kraken.com/exchange/guides/websockets/book-checksum-v2, formerly
# https://docs.kraken.com/api/docs/guides/spot-ws-book-v2): a BTC/USD snapshot whose top 10
# asks (low to high) then bids (high to low), formatted as "45285.2" -> "452852" and
# "0.00100000" -> "100000", concatenate to "452852100000452864154571953..." and give
# "checksum": 3310070434.
DOC_BIDS = [
    ("45283.5", "0.10000000"),
    ("45283.4", "1.54582015"),
    ("45282.1", "0.10000000"),
    ("45281.0", "0.10000000"),
    ("45280.3", "1.54592586"),
    ("45279.0", "0.07990000"),
    ("45277.6", "0.03310103"),
    ("45277.5", "0.30000000"),
    ("45277.3", "1.54602737"),
    ("45276.6", "0.15445238"),
]
DOC_ASKS = [
    ("45285.2", "0.00100000"),
    ("45286.4", "1.54571953"),
    ("45286.6", "1.54571109"),
    ("45289.6", "1.54560911"),
    ("45290.2", "0.15890660"),
    ("45291.8", "1.54553491"),
    ("45294.7", "0.04454749"),
    ("45296.1", "0.35380000"),
    ("45297.5", "0.09945542"),
    ("45299.5", "0.18772827"),
]
DOC_CHECKSUM = 3310070434


# The pair's precisions, as Kraken publishes them on its ``instrument`` channel
# (https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/instrument, "Snapshot":
# ``price_precision`` and ``qty_precision`` per pair); BTC/USD trades at 1 and 8 decimals,
# the precisions of the worked example above.
BTC_USD_PRECISION = (1, 8)


def levels(side):
    return [(Decimal(price), Decimal(qty)) for price, qty in side]


def shortest(side):
    """The same levels as the shortest JSON numbers that carry them ("0.10000000" -> "0.1"):
    a JSON number's text is not the pair's precision, so the checksum must not depend on it."""
    return [(price, format(Decimal(qty).normalize(), "f")) for price, qty in side]


def is_book_request(method: str):
    return lambda m: m.get("method") == method and m["params"]["channel"] == "book"


def test_checksum_matches_the_worked_example_in_krakens_docs():
    assert checksum_token(Decimal("45285.2")) == "452852"
    assert checksum_token(Decimal("0.00100000")) == "100000"
    assert book_checksum(levels(DOC_ASKS), levels(DOC_BIDS)) == DOC_CHECKSUM
    # Only the top 10 levels per side count, whatever the depth.
    deeper = [*levels(DOC_ASKS), (Decimal("45400.0"), Decimal("9.00000000"))]
    assert book_checksum(deeper, levels(DOC_BIDS)) == DOC_CHECKSUM


def test_checksum_formats_each_level_at_the_pairs_precision():
    # "Book checksum (WebSocket v2)", Algorithm: price and qty are formatted at the pair's
    # precision before the '.' and the leading zeros go; 0.566 at qty precision 4 is "5660".
    assert checksum_token(Decimal("0.566"), 4) == "5660"
    assert checksum_token(Decimal("45285.2"), 1) == "452852"
    assert checksum_token(Decimal("0.001"), 8) == "100000"
    assert checksum_token(Decimal("45283"), 1) == "452830"
    asks, bids = levels(shortest(DOC_ASKS)), levels(shortest(DOC_BIDS))
    assert book_checksum(asks, bids, precision=BTC_USD_PRECISION) == DOC_CHECKSUM


async def test_the_documented_snapshot_verifies_at_the_instrument_channels_precision():
    # The docs' worked snapshot (checksum 3310070434), its quantities sent as the shortest
    # JSON numbers (0.1, not 0.10000000): only formatting at the precision that the
    # instrument channel publishes gives Kraken's checksum.
    async with FakeKraken() as exchange:
        exchange.precisions["BTC/USD"] = BTC_USD_PRECISION
        exchange.books["BTC/USD"] = (shortest(DOC_BIDS), shortest(DOC_ASKS))
        got = Collector()
        feed = KrakenFeed(emit=got, url=exchange.url, channels=("book",), **FAST)
        await feed.set_symbols(frozenset({"BTC/USD"}))
        async with running(feed):
            client = await exchange.wait_clients(1)
            instrument = await exchange.wait_message(
                lambda m: m["params"]["channel"] == "instrument"
            )
            assert instrument["method"] == "subscribe"
            await eventually(lambda: got.books())
            update = exchange.book_message("BTC/USD", "update", bids=[("45283.5", "0.566")])
            await exchange.push(update)
            await eventually(lambda: len(got.books()) == 2)
        assert feed.stats.checksum_failures == 0
        assert got.books()[-1].bids[0] == (Decimal("45283.5"), Decimal("0.566"))
        assert got.books()[0].asks[0] == (Decimal("45285.2"), Decimal("0.001"))
        assert len(client.messages(is_book_request("subscribe"))) == 1


async def test_a_book_that_never_verifies_is_resubscribed_at_a_bounded_rate():
    # A real mismatch resyncs, but a book whose checksum never matches must not turn into a
    # subscribe storm against the exchange: resyncs back off.
    async with FakeKraken() as exchange:
        exchange.books["BTC/USD"] = (list(DOC_BIDS), list(DOC_ASKS))
        exchange.bad_checksums = True
        got = Collector()
        feed = KrakenFeed(
            emit=got,
            url=exchange.url,
            resync_backoff_base=0.1,
            resync_backoff_cap=0.4,
            **FAST,
        )
        await feed.set_symbols(frozenset({"BTC/USD"}))
        async with running(feed):
            client = await exchange.wait_clients(1)
            await eventually(lambda: len(client.messages(is_book_request("subscribe"))) >= 3)
            await asyncio.sleep(1.5)
            await exchange.push(exchange.ticker("BTC/USD", "45283.5"))
            await eventually(lambda: got.ticks())  # the connection itself stays healthy
        subscribes = len(client.messages(is_book_request("subscribe")))
        # Resyncs after 0, then at least 0.05, 0.1, 0.2, 0.2, ... s: far fewer than one per frame.
        assert 3 <= subscribes <= 12
        assert subscribes - 1 <= feed.stats.checksum_failures <= subscribes
        assert not got.books()
        assert len(exchange.clients) == 1


async def test_subscribes_to_ticker_and_book_and_verifies_the_documented_snapshot():
    async with FakeKraken() as exchange:
        exchange.books["BTC/USD"] = (list(DOC_BIDS), list(DOC_ASKS))
        got = Collector()
        feed = KrakenFeed(emit=got, url=exchange.url, **FAST)
        await feed.set_symbols(frozenset({"BTC/USD"}))
        async with running(feed):
            await exchange.wait_clients(1)
            ticker = await exchange.wait_message(lambda m: m["params"]["channel"] == "ticker")
            book = await exchange.wait_message(is_book_request("subscribe"))
            assert ticker["method"] == "subscribe"
            assert ticker["params"] == {"channel": "ticker", "symbol": ["BTC/USD"]}
            assert book["params"] == {"channel": "book", "symbol": ["BTC/USD"], "depth": 10}
            await eventually(lambda: got.books())
            await exchange.push(exchange.ticker("BTC/USD", "45283.5"))
            await eventually(lambda: got.ticks())

        snapshot = got.books()[0]
        assert snapshot.bids[0] == (Decimal("45283.5"), Decimal("0.10000000"))
        assert snapshot.asks[0] == (Decimal("45285.2"), Decimal("0.00100000"))
        assert len(snapshot.bids) == len(snapshot.asks) == 10
        assert feed.stats.checksum_failures == 0
        [tick] = got.ticks()
        assert tick.price == Decimal("45283.5") and isinstance(tick.price, Decimal)
        assert tick.bid == Decimal("45283.5")


async def test_book_updates_apply_deletions_and_truncate_to_the_subscribed_depth():
    async with FakeKraken() as exchange:
        exchange.books["BTC/USD"] = (list(DOC_BIDS), list(DOC_ASKS))
        got = Collector()
        feed = KrakenFeed(emit=got, url=exchange.url, channels=("book",), **FAST)
        await feed.set_symbols(frozenset({"BTC/USD"}))
        async with running(feed):
            await exchange.wait_clients(1)
            await eventually(lambda: got.books())
            update = exchange.book_message(
                "BTC/USD",
                "update",
                bids=[("45284.0", "2.00000000"), ("45283.4", "0.00000000")],
            )
            await exchange.push(update)
            await eventually(lambda: len(got.books()) == 2)
        latest = got.books()[-1]
        assert latest.bids[0] == (Decimal("45284.0"), Decimal("2.00000000"))
        assert Decimal("45283.4") not in {price for price, _ in latest.bids}
        assert len(latest.bids) == 10  # the 11th best bid fell out of the depth-10 book
        assert feed.stats.checksum_failures == 0


async def test_checksum_mismatch_resubscribes_that_book_and_books_flow_again():
    async with FakeKraken() as exchange:
        exchange.books["BTC/USD"] = (list(DOC_BIDS), list(DOC_ASKS))
        got = Collector()
        feed = KrakenFeed(emit=got, url=exchange.url, **FAST)
        await feed.set_symbols(frozenset({"BTC/USD"}))
        async with running(feed):
            client = await exchange.wait_clients(1)
            await eventually(lambda: got.books())
            bad = exchange.book_message(
                "BTC/USD", "update", asks=[("45285.3", "1.00000000")], checksum=12345
            )
            await exchange.push(bad)
            unsubscribe = await exchange.wait_message(is_book_request("unsubscribe"))
            assert unsubscribe["params"]["symbol"] == ["BTC/USD"]
            await eventually(lambda: len(client.messages(is_book_request("subscribe"))) == 2)
            assert feed.stats.checksum_failures == 1
            # The fresh snapshot (with the level the bad update carried) is accepted.
            await eventually(lambda: len(got.books()) == 2)
            assert got.books()[-1].asks[1] == (Decimal("45285.3"), Decimal("1.00000000"))
            await exchange.push(
                exchange.book_message("BTC/USD", "update", bids=[("45284.1", "1.0")])
            )
            await eventually(lambda: len(got.books()) == 3)
        assert feed.stats.checksum_failures == 1
        assert len(exchange.clients) == 1


async def test_heartbeats_keep_the_connection_and_silence_reconnects_it(caplog):
    async with FakeKraken() as exchange:
        got = Collector()
        feed = KrakenFeed(emit=got, url=exchange.url, channels=("ticker",), **FAST)
        await feed.set_symbols(frozenset({"ETH/USD"}))
        with caplog.at_level(logging.INFO):
            async with running(feed):
                await exchange.wait_clients(1)
                await asyncio.sleep(0.7)  # longer than the stall timeout; heartbeats every 50 ms
                assert len(exchange.clients) == 1
                exchange.silent = True
                second = await exchange.wait_clients(2, within=3)
                exchange.silent = False
                await exchange.wait_message(lambda m: m.get("method") == "subscribe", client=second)
                await exchange.push(exchange.ticker("ETH/USD", "2500.10"), second)
                await eventually(lambda: got.ticks())
        assert feed.stats.reconnects >= 1
        assert "trading engine online" in caplog.text


async def test_error_replies_are_counted_without_dropping_the_connection():
    async with FakeKraken() as exchange:
        exchange.reject["BTC/ABC"] = "Currency pair not supported BTC/ABC"
        got = Collector()
        feed = KrakenFeed(emit=got, url=exchange.url, channels=("ticker",), **FAST)
        await feed.set_symbols(frozenset({"BTC/ABC", "ETH/USD"}))
        async with running(feed):
            await exchange.wait_clients(1)
            await eventually(lambda: feed.stats.errors == 1)
            await exchange.push(exchange.ticker("ETH/USD", "2500.10"))
            await eventually(lambda: got.ticks())
            bad = '{"channel":"ticker","type":"update","data":[{"symbol":"ETH/USD","last":null}]}'
            await exchange.push(bad)
            await exchange.push(exchange.ticker("ETH/USD", "2500.20"))
            await eventually(lambda: len(got.ticks()) == 2)
        assert feed.stats.malformed_frames == 1
        assert len(exchange.clients) == 1


async def test_symbol_changes_follow_on_the_live_connection():
    async with FakeKraken() as exchange:
        feed = KrakenFeed(emit=Collector(), url=exchange.url, channels=("ticker",), **FAST)
        await feed.set_symbols(frozenset({"BTC/USD", "ETH/USD"}))
        async with running(feed):
            client = await exchange.wait_clients(1)
            await exchange.wait_message(lambda m: m.get("method") == "subscribe")
            await feed.set_symbols(frozenset({"BTC/USD", "SOL/USD"}))
            unsubscribe = await exchange.wait_message(lambda m: m.get("method") == "unsubscribe")
            assert unsubscribe["params"]["symbol"] == ["ETH/USD"]

            def subscribes():
                return client.messages(lambda m: m.get("method") == "subscribe")

            await eventually(lambda: len(subscribes()) == 2)
            assert subscribes()[1]["params"]["symbol"] == ["SOL/USD"]


async def test_a_connection_closed_by_the_exchange_is_reopened_with_fresh_books():
    async with FakeKraken() as exchange:
        exchange.books["BTC/USD"] = (list(DOC_BIDS), list(DOC_ASKS))
        got = Collector()
        feed = KrakenFeed(emit=got, url=exchange.url, **FAST)
        await feed.set_symbols(frozenset({"BTC/USD"}))
        async with running(feed):
            await exchange.wait_clients(1)
            await eventually(lambda: got.books())
            await exchange.drop()
            second = await exchange.wait_clients(2)
            await exchange.wait_message(is_book_request("subscribe"), client=second)
            await eventually(lambda: len(got.books()) == 2)  # a new snapshot, checksum verified
        assert feed.stats.reconnects == 1
        assert feed.stats.checksum_failures == 0
