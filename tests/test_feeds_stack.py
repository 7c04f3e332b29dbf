"""Exchange feeds end to end: a local fake exchange → `manage.py runfeed` process → Celery worker
→ PostgreSQL and Redis → what a subscribed WebSocket client receives. Nothing leaves the machine."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async

from portfolio import services
from portfolio.ledger import TxKind
from portfolio.models import AssetClass, FeedStatus, Instrument, Quote
from tests.conftest import Process, stack_env
from tests.feeds.fakes import FakeBinance, FakeCoinbase, FakeKraken
from tests.feeds.test_kraken import DOC_ASKS, DOC_BIDS, is_book_request
from tests.websocket import communicator, session_cookie

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]


def listed(world, *, symbol: str, feed: str, feed_symbol: str, holder: str | None = "alice"):
    instrument = Instrument.objects.create(
        symbol=symbol,
        name=symbol,
        asset_class=AssetClass.CRYPTO,
        quote_currency="USD",
        feed=feed,
        feed_symbol=feed_symbol,
    )
    if holder:
        # Paid for with a matching deposit, so the portfolio's cash stays where it was.
        bought_at = datetime.now(UTC) - timedelta(days=1)
        portfolio = world["portfolios"][holder]
        services.transaction_add(
            portfolio=portfolio, kind=TxKind.DEPOSIT, amount=Decimal("2"), executed_at=bought_at
        )
        services.transaction_add(
            portfolio=portfolio,
            kind=TxKind.BUY,
            instrument=instrument,
            quantity=Decimal("2"),
            price=Decimal("1"),
            executed_at=bought_at,
        )
    return instrument


def start_feed(kind: str, tmp_path, *args: str, **env: str) -> Process:
    return Process(
        f"runfeed-{kind}",
        [sys.executable, "manage.py", "runfeed", kind, *args],
        stack_env(**env),
        tmp_path,
    )


async def until(fn, *, within: float = 20.0):
    """Poll a synchronous (database) check until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        value = await sync_to_async(fn)()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {fn.__doc__ or fn}")
        await asyncio.sleep(0.1)


async def subscribe(user, path: str):
    cookie = await database_sync_to_async(session_cookie)(user)
    comm = communicator(path, cookie=cookie)
    assert (await comm.connect())[0]
    assert (await comm.receive_json_from(timeout=5))["type"] == "snapshot"
    return comm


async def next_of(comm, kind: str, within: float = 20.0) -> dict:
    return (await collect(comm, kind, within=within))[kind]


async def collect(comm, *kinds: str, within: float = 20.0) -> dict[str, dict]:
    """The first message of each kind, whatever order they arrive in (others are skipped)."""
    found: dict[str, dict] = {}
    deadline = time.monotonic() + within
    while set(found) != set(kinds):
        message = await comm.receive_json_from(timeout=max(0.1, deadline - time.monotonic()))
        if message["type"] in kinds:
            found.setdefault(message["type"], message)
    return found


def price_of(instrument):
    def check():
        quote = Quote.objects.filter(instrument=instrument).first()
        return quote.price if quote else None

    return check


def binance_trade(price: str, trade_id: int) -> dict:
    now_ms = int(time.time() * 1000)
    return {
        "e": "trade",
        "E": now_ms,
        "s": "BTCUSDT",
        "t": trade_id,
        "p": price,
        "q": "0.5",
        "T": now_ms,
        "m": False,
        "M": True,
    }


async def test_binance_trades_reach_the_database_and_the_pages_and_survive_a_dropped_connection(
    world, celery_worker, tmp_path
):
    btc = await sync_to_async(listed)(
        world, symbol="BTC-USDT", feed="binance", feed_symbol="BTCUSDT"
    )
    async with FakeBinance() as exchange:
        feed = start_feed(
            "binance", tmp_path, BINANCE_WS_URL=exchange.url, BINANCE_CHANNELS="trade,miniTicker"
        )
        try:
            instrument_page = await subscribe(world["users"]["alice"], "/ws/instrument/BTC-USDT/")
            portfolio_page = await subscribe(world["users"]["alice"], "/ws/portfolio/")
            client = await exchange.wait_clients(1, within=30)
            assert exchange.streams(client) == {"btcusdt@trade", "btcusdt@miniTicker"}

            await exchange.event("btcusdt@trade", binance_trade("64000.12", 1))
            got = await collect(instrument_page, "trade", "quote")
            trade = got["trade"]
            assert (trade["price"], trade["size"], trade["side"]) == ("64000.12", "0.5", "buy")
            assert got["quote"]["price"] == "64000.12"
            valuation = await next_of(portfolio_page, "valuation")
            assert valuation["portfolio"]["total"] == "128000.24"  # 2 x 64000.12
            assert await until(price_of(btc)) == Decimal("64000.12")
            # A page opened later draws the recent trades from its snapshot.
            cookie = await database_sync_to_async(session_cookie)(world["users"]["bob"])
            late = communicator("/ws/instrument/BTC-USDT/", cookie=cookie)
            assert (await late.connect())[0]
            late_snapshot = await late.receive_json_from(timeout=5)
            assert [t["price"] for t in late_snapshot["trades"]] == ["64000.12"]
            assert late_snapshot["position"] is None  # bob holds none of it
            await late.disconnect()

            await exchange.push("{this is not json")  # malformed frames are counted, not fatal
            await exchange.drop()
            await exchange.wait_clients(2, within=30)
            await exchange.event("btcusdt@trade", binance_trade("64100", 2))
            assert (await next_of(instrument_page, "quote"))["price"] == "64100"
            # Binance announces a restart: the feed moves to a new connection before it drops.
            await exchange.push({"event": {"e": "serverShutdown", "E": 1770123456789}})
            await exchange.wait_clients(3, within=30)
            await exchange.event("btcusdt@trade", binance_trade("64200", 3))
            assert (await next_of(instrument_page, "quote"))["price"] == "64200"

            def health():
                """feed health shows the reconnect and the malformed frame, and the feed
                connected again (a row written during the move reads "backoff")"""
                status = FeedStatus.objects.filter(feed="binance").first()
                return (
                    status
                    if status
                    and status.reconnects >= 1
                    and status.malformed_frames >= 1
                    and status.state == "connected"
                    else None
                )

            status = await until(health)
            assert "BTCUSDT" in status.symbols

            # An instrument added in the admin is streamed within 10 s, without a restart.
            await sync_to_async(listed)(
                world, symbol="ETH-USDT", feed="binance", feed_symbol="ETHUSDT", holder=None
            )
            subscribed = await exchange.wait_message(
                lambda m: m.get("method") == "SUBSCRIBE", within=10
            )
            assert set(subscribed["params"]) == {"ethusdt@trade", "ethusdt@miniTicker"}
            await instrument_page.disconnect()
            await portfolio_page.disconnect()
        finally:
            code = await asyncio.to_thread(feed.stop)
    assert code == 0, feed.output()


async def test_trades_never_wait_for_the_books_conflation_interval(world, celery_worker, tmp_path):
    # Books are conflated to one per LIVEFOLIO_BOOK_INTERVAL_MS; trades are not: with an
    # hour-long book interval a trade still reaches the instrument page as it happens.
    await sync_to_async(listed)(
        world, symbol="BTC-USDT", feed="binance", feed_symbol="BTCUSDT", holder=None
    )
    async with FakeBinance() as exchange:
        feed = start_feed(
            "binance",
            tmp_path,
            BINANCE_WS_URL=exchange.url,
            BINANCE_CHANNELS="trade",
            LIVEFOLIO_BOOK_INTERVAL_MS="3600000",
        )
        try:
            page = await subscribe(world["users"]["bob"], "/ws/instrument/BTC-USDT/")
            await exchange.wait_clients(1, within=30)
            for trade_id, price in ((1, "64000.12"), (2, "64000.13")):
                await exchange.event("btcusdt@trade", binance_trade(price, trade_id))
                trade = await next_of(page, "trade")
                assert (trade["trade_id"], trade["price"]) == (str(trade_id), price)
            await page.disconnect()
        finally:
            code = await asyncio.to_thread(feed.stop)
    assert code == 0, feed.output()


async def test_kraken_books_reach_the_instrument_page_and_a_checksum_mismatch_resyncs(
    world, celery_worker, tmp_path
):
    await sync_to_async(listed)(world, symbol="XBT-USD", feed="kraken", feed_symbol="BTC/USD")
    async with FakeKraken() as exchange:
        exchange.books["BTC/USD"] = (list(DOC_BIDS), list(DOC_ASKS))
        feed = start_feed("kraken", tmp_path, KRAKEN_WS_URL=exchange.url)
        try:
            page = await subscribe(world["users"]["bob"], "/ws/instrument/XBT-USD/")
            await exchange.wait_clients(1, within=30)
            book = await next_of(page, "book")
            assert book["bids"][0] == ["45283.5", "0.1"]
            assert book["asks"][0] == ["45285.2", "0.001"]
            await exchange.push(
                exchange.book_message("BTC/USD", "update", asks=[("45285.3", "1")], checksum=12345)
            )
            await exchange.wait_message(is_book_request("unsubscribe"), within=10)

            def failure_counted():
                """feed health counts the checksum failure"""
                status = FeedStatus.objects.filter(feed="kraken").first()
                return status and status.checksum_failures == 1

            await until(failure_counted)
            resynced = await next_of(page, "book")  # from the fresh snapshot
            assert ["45285.3", "1"] in resynced["asks"]
            await page.send_json_to({"type": "resync"})
            snapshot = await next_of(page, "snapshot")
            assert snapshot["book"]["bids"][0] == ["45283.5", "0.1"]
            await page.disconnect()
        finally:
            code = await asyncio.to_thread(feed.stop)
    assert code == 0, feed.output()


async def test_coinbase_tickers_update_quotes_a_missed_match_is_a_gap_and_a_stall_reconnects(
    world, celery_worker, tmp_path
):
    eth = await sync_to_async(listed)(
        world, symbol="ETH-USD-CB", feed="coinbase", feed_symbol="ETH-USD"
    )
    async with FakeCoinbase() as exchange:
        feed = start_feed("coinbase", tmp_path, COINBASE_WS_URL=exchange.url)
        try:
            client = await exchange.wait_clients(1, within=30)
            await exchange.wait_message(lambda m: m.get("type") == "subscribe", client=client)
            ticker = exchange.ticker("ETH-USD", "1285.15")
            ticker["time"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            await exchange.push(ticker)
            assert await until(price_of(eth)) == Decimal("1285.15")

            await exchange.push(exchange.match("ETH-USD", 10))
            exchange.last_trade_id["ETH-USD"] = 12  # trade 11 never arrives: the heartbeat tells

            def gap_counted():
                """feed health counts the missed match"""
                status = FeedStatus.objects.filter(feed="coinbase").first()
                return status and status.gaps >= 1

            await until(gap_counted)

            # The exchange goes silent (no heartbeats): past twice the heartbeat interval the
            # feed reconnects by itself, resubscribes, and prices flow again.
            exchange.silent = True
            second = await exchange.wait_clients(2, within=30)
            exchange.silent = False
            await exchange.wait_message(lambda m: m.get("type") == "subscribe", client=second)
            ticker = exchange.ticker("ETH-USD", "1290.5")
            ticker["time"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            await exchange.push(ticker)

            def new_price():
                """the price sent after the reconnect is stored"""
                return price_of(eth)() == Decimal("1290.5")

            await until(new_price)

            def reconnect_counted():
                """feed health counts the reconnect after the stall"""
                status = FeedStatus.objects.filter(feed="coinbase").first()
                return status and status.reconnects >= 1

            await until(reconnect_counted)
        finally:
            code = await asyncio.to_thread(feed.stop)
    assert code == 0, feed.output()


def test_replay_plays_a_file_of_ticks_into_the_database(world, celery_worker, tmp_path):
    btc = world["btc"]
    (tmp_path / "day.csv").write_text(
        "ts,symbol,price,bid,ask\n"
        "2026-11-27T09:00:00Z,BTC-USD,50000,49999,50001\n"
        "2026-11-27T09:00:01Z,BTC-USD,50010.5,50010,50011\n"
        "not a row\n"
        "2026-11-27T09:00:02Z,BTC-USD,50020.25,50020,50021\n"
    )
    Instrument.objects.filter(pk=btc.pk).update(feed="replay")
    feed = start_feed("replay", tmp_path, "--file", str(tmp_path / "day.csv"), "--speed", "0")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            quote = Quote.objects.filter(instrument=btc).first()
            if quote and quote.price == Decimal("50020.25"):
                break
            time.sleep(0.2)
        quote = Quote.objects.get(instrument=btc)
        assert quote.price == Decimal("50020.25")
        assert quote.exchange_ts == datetime(2026, 11, 27, 9, 0, 2, tzinfo=UTC)
        assert quote.source == "replay"
    finally:
        code = feed.stop()
    assert code == 0, feed.output()
    assert "line 4" in feed.output()  # the malformed row is reported with its line number
