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


# Coinbase Exchange WebSocket docs (https://docs.cdp.coinbase.com/exchange/websocket-feed/
# channels), "Ticker Channel": the sample ticker, verbatim.
DOC_TICKER = {
    "type": "ticker",
    "sequence": 37475248783,
    "product_id": "ETH-USD",
    "price": "1285.22",
    "open_24h": "1310.79",
    "volume_24h": "245532.79269678",
    "low_24h": "1280.52",
    "high_24h": "1313.8",
    "volume_30d": "9788783.60117027",
    "best_bid": "1285.04",
    "best_bid_size": "0.46688654",
    "best_ask": "1285.27",
    "best_ask_size": "1.56637040",
    "side": "buy",
    "time": "2022-10-19T23:28:22.061769Z",
    "trade_id": 370843401,
    "last_size": "11.4396987",
}
# The same page, "Match": the sample match's fields, for the trade the ticker above reports.
# Overview, "Sequence Numbers": most messages carry a sequence number *per product*, so the
# ticker and the match of one trade carry the same number (a ticker is sent for each match).
DOC_MATCH = {
    "type": "match",
    "trade_id": 370843401,
    "sequence": 37475248783,
    "maker_order_id": "ac928c66-ca53-498f-9c13-a110027a60e8",
    "taker_order_id": "132fb6ae-456b-4654-b4e0-d681ac05cea1",
    "time": "2022-10-19T23:28:22.061769Z",
    "product_id": "ETH-USD",
    "size": "11.4396987",
    "price": "1285.22",
    "side": "sell",
}


async def test_a_trades_ticker_and_match_share_a_sequence_and_both_are_published():
    async with FakeCoinbase() as exchange:
        got = Collector()
        feed = CoinbaseFeed(emit=got, url=exchange.url, **FAST)
        await feed.set_symbols(frozenset({"ETH-USD"}))
        async with running(feed):
            client = await exchange.wait_clients(1)
            await exchange.wait_message(is_subscribe)
            last_match = {**DOC_MATCH, "type": "last_match", "trade_id": 370843400}
            await exchange.push({**last_match, "sequence": 37475248780})
            await exchange.push(DOC_TICKER)
            await exchange.push(DOC_MATCH)
            await eventually(lambda: got.ticks() and got.trades())
            # From now on the heartbeats (Heartbeat Channel) report this trade as the last.
            exchange.sequence["ETH-USD"] = 37475248783
            exchange.last_trade_id["ETH-USD"] = 370843401
            heartbeats = feed.stats.messages
            await eventually(lambda: feed.stats.messages >= heartbeats + 5)
        [trade] = got.trades()
        assert trade.trade_id == "370843401"
        assert (trade.price, trade.size) == (Decimal("1285.22"), Decimal("11.4396987"))
        assert trade.side == "buy"  # the ticker's side is the taker's; the match's the maker's
        assert [t.price for t in got.ticks()] == [Decimal("1285.22")]
        assert feed.stats.out_of_order == 0
        assert feed.stats.gaps == 0
        assert len(client.messages(is_subscribe)) == 1  # no resubscribe
        assert len(exchange.clients) == 1


async def test_order_and_duplicates_are_checked_per_channel():
    async with FakeCoinbase() as exchange:
        got = Collector()
        feed = CoinbaseFeed(emit=got, url=exchange.url, **FAST)
        await feed.set_symbols(frozenset({"BTC-USD"}))
        async with running(feed):
            await exchange.wait_clients(1)
            await exchange.wait_message(is_subscribe)
            match = {**DOC_MATCH, "product_id": "BTC-USD"}
            await exchange.push({**match, "trade_id": 11, "sequence": 201})
            # The ticker channel batches: its next message may carry an older sequence than
            # the match channel's last one, and is still news on its own channel.
            await exchange.push(exchange.ticker("BTC-USD", "100.00", sequence=200))
            await exchange.push({**match, "trade_id": 11, "sequence": 201})  # duplicate
            await exchange.push({**match, "trade_id": 10, "sequence": 199})  # late
            await exchange.push({**match, "trade_id": 12, "sequence": 203})
            await eventually(lambda: len(got.trades()) == 2 and got.ticks())
            await asyncio.sleep(0.1)
        assert [t.trade_id for t in got.trades()] == ["11", "12"]
        assert feed.stats.out_of_order == 2
        assert feed.stats.gaps == 0


async def test_a_skipped_trade_id_is_a_missed_match():
    # Trade ids of a product are consecutive; the matches channel's sequence numbers skip
    # (they are shared with the other channels), its trade ids must not.
    async with FakeCoinbase() as exchange:
        got = Collector()
        feed = CoinbaseFeed(emit=got, url=exchange.url, **FAST)
        await feed.set_symbols(frozenset({"BTC-USD"}))
        async with running(feed):
            await exchange.wait_clients(1)
            await exchange.wait_message(is_subscribe)
            match = {**DOC_MATCH, "product_id": "BTC-USD"}
            await exchange.push({**match, "trade_id": 20, "sequence": 300})
            await exchange.push({**match, "trade_id": 21, "sequence": 305})
            await eventually(lambda: len(got.trades()) == 2)
            assert feed.stats.gaps == 0
            await exchange.push({**match, "trade_id": 24, "sequence": 306})
            await eventually(lambda: len(got.trades()) == 3)
        assert feed.stats.gaps == 1


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
