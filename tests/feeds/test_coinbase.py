"""Coinbase adapter against a local fake speaking the documented Exchange WebSocket feed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from streaming.feeds.coinbase import CoinbaseFeed

from .fakes import Collector, FakeCoinbase, eventually, running

pytestmark = pytest.mark.unit

FAST = {"backoff_base": 0.01, "backoff_cap": 0.05, "close_timeout": 0.5, "stall_timeout": 0.5}


def is_subscribe(message) -> bool:
    return message.get("type") == "subscribe"


async def test_subscribes_and_emits_ticks_and_trades_with_exact_decimals():
    async with FakeCoinbase() as exchange:
        got = Collector()
        feed = CoinbaseFeed(emit=got, url=exchange.url, **FAST)
        await feed.set_symbols(frozenset({"ETH-USD", "BTC-USD"}))
        async with running(feed):
            await exchange.wait_clients(1)
            subscribe = await exchange.wait_message(is_subscribe)
            assert subscribe == {
                "type": "subscribe",
                "product_ids": ["BTC-USD", "ETH-USD"],
                "channels": ["ticker", "heartbeat", "matches"],
            }
            await exchange.push(exchange.ticker("ETH-USD", "1285.22"))
            await exchange.push(exchange.match("ETH-USD", 10))
            await eventually(lambda: got.ticks() and got.trades())
            assert "ETH-USD" in feed.stats.symbol_last_message

    [tick] = got.ticks()
    assert tick.feed_symbol == "ETH-USD"
    assert tick.price == Decimal("1285.22")
    assert (tick.bid, tick.ask) == (Decimal("1285.04"), Decimal("1285.27"))
    assert tick.ts == datetime(2022, 10, 19, 23, 28, 22, 61769, tzinfo=UTC)
    [trade] = got.trades()
    assert (trade.price, trade.size) == (Decimal("400.23"), Decimal("5.23512"))
    assert trade.side == "buy"  # the maker sold, so the taker bought
    assert trade.trade_id == "10"


async def test_late_and_duplicate_messages_are_dropped_but_a_sequence_skip_is_not_a_loss():
    async with FakeCoinbase() as exchange:
        got = Collector()
        feed = CoinbaseFeed(emit=got, url=exchange.url, **FAST)
        await feed.set_symbols(frozenset({"BTC-USD"}))
        async with running(feed):
            await exchange.wait_clients(1)
            await exchange.wait_message(is_subscribe)
            await exchange.push(exchange.ticker("BTC-USD", "100.00", sequence=105))
            await exchange.push(exchange.ticker("BTC-USD", "99.00", sequence=103))  # late
            await exchange.push(exchange.ticker("BTC-USD", "100.00", sequence=105))  # duplicate
            await exchange.push(exchange.ticker("BTC-USD", "101.00", sequence=110))  # skip
            await eventually(lambda: len(got.ticks()) == 2)
            await asyncio.sleep(0.1)
        assert [t.price for t in got.ticks()] == [Decimal("100.00"), Decimal("101.00")]
        assert feed.stats.out_of_order == 2
        assert feed.stats.gaps == 0
        assert feed.stats.reconnects == 0


async def test_heartbeat_revealing_a_missed_match_counts_a_gap_and_resubscribes():
    async with FakeCoinbase() as exchange:
        got = Collector()
        feed = CoinbaseFeed(emit=got, url=exchange.url, **FAST)
        await feed.set_symbols(frozenset({"BTC-USD"}))
        async with running(feed):
            client = await exchange.wait_clients(1)
            await exchange.wait_message(is_subscribe)
            await exchange.push(exchange.match("BTC-USD", 10))
            await eventually(lambda: got.trades())
            # Matches 11 and 12 happen but never reach us; the next heartbeat says 12.
            exchange.last_trade_id["BTC-USD"] = 12
            await exchange.wait_message(lambda m: m.get("type") == "unsubscribe")
            await eventually(lambda: len(client.messages(is_subscribe)) == 2)
            assert client.messages(is_subscribe)[1]["product_ids"] == ["BTC-USD"]
            assert feed.stats.gaps == 1
            await exchange.push(exchange.match("BTC-USD", 13))
            await exchange.push(exchange.ticker("BTC-USD", "42.00"))
            await eventually(lambda: len(got.trades()) == 2 and got.ticks())
            await asyncio.sleep(0.15)  # a few more heartbeats: the same gap is not counted again
        assert feed.stats.gaps == 1
        assert [t.trade_id for t in got.trades()] == ["10", "13"]
        assert len(exchange.clients) == 1


async def test_an_error_message_is_counted_and_the_feed_reconnects_with_backoff():
    async with FakeCoinbase() as exchange:
        got = Collector()
        feed = CoinbaseFeed(emit=got, url=exchange.url, **FAST)
        await feed.set_symbols(frozenset({"BTC-USD"}))
        async with running(feed):
            await exchange.wait_clients(1)
            await exchange.wait_message(is_subscribe)
            await exchange.push({"type": "error", "message": "ErrSlowConsume", "reason": "slow"})
            second = await exchange.wait_clients(2)
            await exchange.wait_message(is_subscribe, client=second)
            await exchange.push(exchange.ticker("BTC-USD", "7.00"), second)
            await eventually(lambda: got.ticks())
        assert feed.stats.errors == 1
        assert feed.stats.reconnects == 1


async def test_a_rejected_product_is_dropped_and_the_rest_subscribed_again():
    async with FakeCoinbase() as exchange:
        got = Collector()
        feed = CoinbaseFeed(emit=got, url=exchange.url, **FAST)
        await feed.set_symbols(frozenset({"BTC-USD", "GIBBERISH-USD"}))
        async with running(feed):
            client = await exchange.wait_clients(1)
            await exchange.wait_message(is_subscribe)
            await exchange.push(
                {
                    "type": "error",
                    "message": "Failed to subscribe",
                    "reason": "GIBBERISH-USD is not a valid product",
                }
            )
            await eventually(lambda: len(client.messages(is_subscribe)) == 2)
            assert client.messages(is_subscribe)[1]["product_ids"] == ["BTC-USD"]
            await exchange.push(exchange.ticker("BTC-USD", "8.00"))
            await eventually(lambda: got.ticks())
        assert feed.rejected == {"GIBBERISH-USD"}
        assert feed.stats.errors == 1
        assert len(exchange.clients) == 1


async def test_a_silent_feed_is_a_stall_and_the_feed_reconnects_and_resubscribes():
    async with FakeCoinbase() as exchange:
        got = Collector()
        feed = CoinbaseFeed(emit=got, url=exchange.url, **FAST)
        await feed.set_symbols(frozenset({"BTC-USD"}))
        async with running(feed):
            await exchange.wait_clients(1)
            await exchange.wait_message(is_subscribe)
            await asyncio.sleep(0.7)  # heartbeats every 50 ms keep it alive past the timeout
            assert len(exchange.clients) == 1
            exchange.silent = True
            second = await exchange.wait_clients(2, within=3)
            exchange.silent = False
            await exchange.wait_message(is_subscribe, client=second)
            await exchange.push(exchange.ticker("BTC-USD", "9.00"), second)
            await eventually(lambda: got.ticks())
        assert feed.stats.reconnects >= 1


async def test_symbol_changes_subscribe_and_unsubscribe_on_the_live_connection():
    async with FakeCoinbase() as exchange:
        feed = CoinbaseFeed(emit=Collector(), url=exchange.url, **FAST)
        await feed.set_symbols(frozenset({"BTC-USD", "ETH-USD"}))
        async with running(feed):
            client = await exchange.wait_clients(1)
            await exchange.wait_message(is_subscribe)
            await feed.set_symbols(frozenset({"BTC-USD", "SOL-USD"}))
            unsubscribe = await exchange.wait_message(lambda m: m.get("type") == "unsubscribe")
            assert unsubscribe["product_ids"] == ["ETH-USD"]
            await eventually(lambda: len(client.messages(is_subscribe)) == 2)
            assert client.messages(is_subscribe)[1]["product_ids"] == ["SOL-USD"]
            assert exchange.subscribed(client) == {"BTC-USD", "SOL-USD"}


async def test_without_symbols_the_feed_stays_disconnected_until_it_gets_some():
    async with FakeCoinbase() as exchange:
        feed = CoinbaseFeed(emit=Collector(), url=exchange.url, **FAST)
        async with running(feed):
            await asyncio.sleep(0.3)
            assert exchange.clients == []
            assert feed.stats.state == "stopped"
            await feed.set_symbols(frozenset({"BTC-USD"}))
            await exchange.wait_clients(1)
            await exchange.wait_message(is_subscribe)
            await eventually(lambda: feed.stats.state == "connected")


async def test_a_connection_closed_by_the_exchange_is_reopened_and_resubscribed():
    async with FakeCoinbase() as exchange:
        got = Collector()
        feed = CoinbaseFeed(emit=got, url=exchange.url, **FAST)
        await feed.set_symbols(frozenset({"BTC-USD"}))
        async with running(feed):
            await exchange.wait_clients(1)
            await exchange.wait_message(is_subscribe)
            await exchange.drop()
            second = await exchange.wait_clients(2)
            subscribe = await exchange.wait_message(is_subscribe, client=second)
            assert subscribe["product_ids"] == ["BTC-USD"]
            await exchange.push(exchange.ticker("BTC-USD", "10.00"), second)
            await eventually(lambda: got.ticks())
        assert feed.stats.reconnects == 1
