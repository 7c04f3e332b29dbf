"""An exchange Livefolio has no adapter for, end to end through ccxt: a local fake of OKX (its
documented examples, tests/feeds/fake_venues.py) → `manage.py runfeed ccxt --exchange okx` →
Celery worker → PostgreSQL and Redis → the instrument page, the portfolio page and the API."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from portfolio import services
from portfolio.ledger import TxKind
from portfolio.models import AssetClass, FeedStatus, Instrument
from tests.api import connect
from tests.conftest import Process, stack_env
from tests.feeds.fake_venues import OKX_BOOK_SNAPSHOT, OKX_TICKER, OKX_TRADE, FakeOkx, frame, now_ms
from tests.test_feeds_stack import collect, next_of, price_of, subscribe, until

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]


def listed_on_okx(world) -> Instrument:
    """What an operator enters in the admin: the exchange id and the exchange's market symbol;
    alice holds some."""
    instrument = Instrument.objects.create(
        symbol="BTC-USDT",
        name="Bitcoin on OKX",
        asset_class=AssetClass.CRYPTO,
        quote_currency="USDT",
        feed="ccxt",
        exchange="okx",
        feed_symbol="BTC/USDT",
    )
    bought_at = datetime.now(UTC) - timedelta(days=1)
    portfolio = world["portfolios"]["alice"]
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


def okx_status() -> FeedStatus | None:
    return FeedStatus.objects.filter(feed="ccxt:okx").first()


async def api_update(comm, stream: str, key: str, value: Any, within: float = 20.0) -> dict:
    """The first message of ``stream`` whose data has ``key`` = ``value`` on an API connection
    (earlier ones skipped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        message = await comm.receive_json_from(timeout=max(0.1, deadline - loop.time()))
        if message.get("stream") == stream and (message.get("data") or {}).get(key) == value:
            return message


async def test_okx_through_ccxt_reaches_the_database_pages_and_api_and_survives_drop_and_stall(
    world, celery_worker, tmp_path
):
    btc = await sync_to_async(listed_on_okx)(world)
    async with FakeOkx() as okx:
        feed = Process(
            "runfeed-ccxt-okx",
            [
                sys.executable,
                "manage.py",
                "runfeed",
                "ccxt",
                "--exchange",
                "okx",
                "--stall-seconds",
                "2",
            ],
            stack_env(LIVEFOLIO_CCXT_URLS=json.dumps({"okx": okx.ccxt_urls()})),
            tmp_path,
        )
        try:
            instrument_page = await subscribe(world["users"]["alice"], "/ws/instrument/BTC-USDT/")
            bot = await connect(world["users"]["alice"])
            for n, stream in enumerate(("quotes:BTC-USDT", "trades:BTC-USDT", "book:BTC-USDT")):
                await bot.send_json_to({"type": "subscribe", "id": n, "stream": stream})
            for topic in ("tickers:BTC-USDT", "trades:BTC-USDT", "books:BTC-USDT"):
                await okx.wait_subscribed(topic, connection=1, within=30)

            # The book the fake sends on subscribe reaches the instrument page.
            book = await next_of(instrument_page, "book")
            assert book["bids"][0] == ["8476.97", "256"]
            assert book["asks"][0] == ["8476.98", "415"]

            await okx.push(frame(OKX_TRADE, ts=now_ms()))
            got = await collect(instrument_page, "trade", "quote")
            trade = got["trade"]
            assert (trade["price"], trade["size"], trade["side"]) == (
                "42219.9",
                "0.12060306",
                "buy",
            )
            assert got["quote"]["price"] == "42219.9"
            assert await until(price_of(btc)) == Decimal("42219.9")
            bot_trade = await api_update(bot, "trades:BTC-USDT", "trade_id", "130639474")
            assert (bot_trade["data"]["price"], bot_trade["data"]["size"]) == (
                "42219.9",
                "0.12060306",
            )
            await api_update(bot, "quotes:BTC-USDT", "price", "42219.9")

            # The exchange drops the connection: ccxt reconnects, the feed resubscribes.
            await okx.drop()
            await okx.wait_subscribed("tickers:BTC-USDT", connection=2, within=30)
            await okx.push(frame(OKX_TICKER, ts=now_ms()))
            assert (await next_of(instrument_page, "quote"))["price"] == "9999.99"
            assert await until(price_of(btc)) == Decimal("9999.99")
            # The new connection's book snapshot (OKX's documented one) reaches the bot.
            asks = [[p, q] for p, q, _, _ in OKX_BOOK_SNAPSHOT["data"][0]["asks"]]
            await api_update(bot, "book:BTC-USDT", "asks", asks)

            # The exchange goes silent with the socket open: a stall, and a fresh connection.
            okx.silent = True

            def stalled():
                """feed health shows the stall's reconnect"""
                status = okx_status()
                return status if status and status.reconnects >= 2 else None

            await until(stalled, within=30)
            okx.silent = False
            await okx.wait_subscribed("tickers:BTC-USDT", connection=3, within=30)
            await okx.push(frame(OKX_TICKER, last="10001.5", ts=now_ms()))
            await api_update(bot, "quotes:BTC-USDT", "price", "10001.5")
            assert await until(price_of(btc)) == Decimal("10001.5")

            def recovered():
                """feed health: connected again, with BTC/USDT's last message and the markets"""
                status = okx_status()
                return status if status and status.state == "connected" else None

            status = await until(recovered)
            assert status.reconnects >= 2
            assert "BTC/USDT" in status.symbols
            assert "BTC/USDT" in status.markets
            await instrument_page.disconnect()
            await bot.disconnect()
        finally:
            code = await asyncio.to_thread(feed.stop)
    assert code == 0, feed.output()
    assert "feed ccxt:okx: exited cleanly" in feed.output()


async def test_an_exchange_added_in_the_admin_alone_gets_a_feed_process(
    world, celery_worker, tmp_path
):
    """`runfeed ccxt --every-exchange` (the Procfile's and compose's ccxt line) starts a process
    for an exchange once an active instrument names it, and stops it when none does: adding an
    exchange takes the admin alone."""
    async with FakeOkx() as okx:
        supervisor = Process(
            "runfeed-every-exchange",
            [
                sys.executable,
                "manage.py",
                "runfeed",
                "ccxt",
                "--every-exchange",
            ],
            stack_env(LIVEFOLIO_CCXT_URLS=json.dumps({"okx": okx.ccxt_urls()})),
            tmp_path,
        )
        try:
            await asyncio.sleep(2)  # with no ccxt instrument, no exchange process
            assert "started" not in supervisor.output()
            btc = await sync_to_async(listed_on_okx)(world)  # what the operator adds
            await okx.wait_subscribed("tickers:BTC-USDT", connection=1, within=60)
            assert "supervisor: feed ccxt:okx started" in supervisor.output()
            await okx.push(frame(OKX_TICKER, ts=now_ms()))
            assert await until(price_of(btc)) == Decimal("9999.99")

            # Switched off in the admin: its exchange's process goes.
            await sync_to_async(Instrument.objects.filter(pk=btc.pk).update)(active=False)
            await asyncio.to_thread(
                supervisor.wait_for_output, "supervisor: feed ccxt:okx stopped (no active", 30
            )
        finally:
            supervisor.stop()
