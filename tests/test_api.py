"""API v1 (/ws/v1/) through the real ASGI app and the real Redis channel layer."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async

from portfolio.selectors import live_states
from streaming import events, marketdata, protocol, tokens
from tests.api import (
    api_communicator,
    assert_documented,
    closed_with,
    connect,
    documented_error_codes,
    new_token,
    request,
)
from tests.websocket import ORIGIN, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


def quote_for(instrument, price: str, at: datetime | None = None) -> dict:
    return protocol.quote(
        instrument_id=instrument.id,
        symbol=instrument.symbol,
        price=Decimal(price),
        bid=None,
        ask=None,
        exchange_ts=at or datetime.now(UTC),
    )


async def publish_quote(instrument, price: str) -> None:
    await events.apublish([(events.instrument_group(instrument.id), quote_for(instrument, price))])


async def publish_valuation(user, portfolio) -> None:
    states = await database_sync_to_async(live_states.portfolio_states)(
        portfolio_ids=[portfolio.id]
    )
    await events.apublish([(events.user_group(user.id), protocol.valuation(portfolio=states[0]))])


# -- authentication and origins ---------------------------------------------------------------


async def test_bearer_header_token_authenticates_and_welcome_names_the_user(world, redis_client):
    token = await new_token(world["users"]["alice"])
    comm = api_communicator(token=token)
    connected, _ = await comm.connect()
    assert connected
    welcome = await comm.receive_json_from()
    assert (welcome["type"], welcome["seq"], welcome["user"]) == ("welcome", 1, "alice")
    reply = await request(comm, type="ping", id="p-1")
    assert (reply["type"], reply["id"], reply["request"], reply["seq"]) == (
        "reply",
        "p-1",
        "ping",
        2,
    )
    await comm.disconnect()


async def test_auth_request_authenticates_a_bot_without_origin_and_records_last_use(
    world, redis_client
):
    alice = world["users"]["alice"]
    token = await new_token(alice)
    comm = api_communicator()
    connected, _ = await comm.connect()
    assert connected
    welcome = await comm.receive_json_from()
    assert welcome["user"] is None
    before = await request(comm, type="list_portfolios", id=1)
    assert (before["type"], before["code"], before["id"]) == ("error", "auth_required", 1)
    reply = await request(comm, type="auth", id=2, token=token)
    assert (reply["type"], reply["id"], reply["result"]) == ("reply", 2, {"user": "alice"})
    portfolios = await request(comm, type="list_portfolios", id=3)
    assert portfolios["result"]["portfolios"] == [
        {"id": world["portfolios"]["alice"].id, "name": "Alice's", "base_currency": "USD"}
    ]
    used = await database_sync_to_async(lambda: alice.api_tokens.get().last_used_at)()
    assert used is not None
    await comm.disconnect()


async def test_revoked_token_is_refused_with_unauthorized_and_close_4401(world, redis_client):
    alice = world["users"]["alice"]
    token = await new_token(alice)
    row = await database_sync_to_async(alice.api_tokens.get)()
    await database_sync_to_async(tokens.token_revoke)(token=row)
    by_header = api_communicator(token=token)
    assert (await by_header.connect())[0]
    welcome = await by_header.receive_json_from()  # docs/api.md section 2: always first
    assert (welcome["type"], welcome["seq"], welcome["user"]) == ("welcome", 1, None)
    error = await by_header.receive_json_from()
    assert (error["type"], error["code"]) == ("error", "unauthorized")
    assert await closed_with(by_header) == 4401
    by_request = api_communicator()
    await by_request.connect()
    await by_request.receive_json_from()
    error = await request(by_request, type="auth", id="a", token=token)
    assert (error["code"], error["id"]) == ("unauthorized", "a")
    assert await closed_with(by_request) == 4401


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # wrong secret
        lambda t: "lf_zzzzzzzz_" + t.split("_", 2)[2],  # unknown prefix
        lambda t: t.replace("lf_", "", 1),  # malformed
        lambda t: "",  # empty
    ],
    ids=["wrong-secret", "unknown-prefix", "malformed", "empty"],
)
async def test_wrong_token_is_refused_with_unauthorized_and_close_4401(world, redis_client, mangle):
    token = mangle(await new_token(world["users"]["alice"]))
    comm = api_communicator(token=token)
    assert (await comm.connect())[0]
    welcome = await comm.receive_json_from()
    assert (welcome["type"], welcome["user"]) == ("welcome", None)
    error = await comm.receive_json_from()
    assert (error["type"], error["code"], error["seq"]) == ("error", "unauthorized", 2)
    assert await closed_with(comm) == 4401


async def test_a_bot_that_never_authenticates_is_closed_with_4408(world, redis_client, settings):
    settings.LIVEFOLIO_API_AUTH_TIMEOUT = 0.5
    comm = api_communicator()
    assert (await comm.connect())[0]
    welcome = await comm.receive_json_from()
    assert welcome["auth_timeout"] == 0.5
    error = await comm.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("error", "auth_timeout")
    assert await closed_with(comm) == 4408


async def test_an_authenticated_bot_is_not_closed_by_the_auth_timeout(
    world, redis_client, settings
):
    settings.LIVEFOLIO_API_AUTH_TIMEOUT = 0.3
    token = await new_token(world["users"]["alice"])
    comm = api_communicator()
    await comm.connect()
    await comm.receive_json_from()
    assert (await request(comm, type="auth", id=1, token=token))["type"] == "reply"
    assert await comm.receive_nothing(timeout=1)
    assert (await request(comm, type="ping", id=2))["type"] == "reply"
    await comm.disconnect()


async def test_the_token_never_appears_in_the_logs(world, redis_client, caplog):
    caplog.set_level(logging.DEBUG)
    alice = world["users"]["alice"]
    token = await new_token(alice)
    secret = token.split("_", 2)[2]
    good = await connect(token=token)
    await request(good, type="subscribe", id=1, stream="quotes:BTC-USD")
    await good.disconnect()
    by_request = api_communicator()
    await by_request.connect()
    await by_request.receive_json_from()
    await request(by_request, type="auth", id=1, token=token[:-1] + "x")
    await closed_with(by_request)
    row = await database_sync_to_async(alice.api_tokens.get)()
    await database_sync_to_async(tokens.token_revoke)(token=row)
    revoked = api_communicator(token=token)
    await revoked.connect()
    await revoked.receive_json_from()
    assert caplog.records, "the test must see the log records it checks"
    assert secret not in caplog.text
    assert secret[:-1] not in caplog.text


async def test_browser_session_with_an_allowed_origin_is_authenticated(world, redis_client):
    cookie = await database_sync_to_async(session_cookie)(world["users"]["bob"])
    comm = api_communicator(origin=ORIGIN, cookie=cookie)
    assert (await comm.connect())[0]
    assert (await comm.receive_json_from())["user"] == "bob"
    await comm.disconnect()


async def test_browser_from_another_origin_is_refused_even_with_a_valid_token(world, redis_client):
    token = await new_token(world["users"]["alice"])
    comm = api_communicator(origin="https://evil.example", token=token)
    connected, _ = await comm.connect()
    assert connected is False


# -- streams ----------------------------------------------------------------------------------


async def test_subscribe_sends_reply_then_snapshot_then_updates_numbered_per_stream(
    world, redis_client
):
    btc = world["btc"]
    comm = await connect(world["users"]["alice"])
    reply = await request(comm, type="subscribe", id="s1", stream="quotes:btc-usd")
    assert reply["result"] == {"stream": "quotes:BTC-USD", "max_rate": None, "stream_seq": 0}
    snapshot = await comm.receive_json_from()
    assert (snapshot["type"], snapshot["stream"], snapshot["stream_seq"]) == (
        "snapshot",
        "quotes:BTC-USD",
        0,
    )
    assert snapshot["data"] is None  # no price yet
    pid = world["portfolios"]["alice"].id
    await request(comm, type="subscribe", id="s2", stream=f"portfolio:{pid}")
    portfolio = await comm.receive_json_from()
    assert portfolio["data"]["id"] == pid
    for price in ("100", "101", "102"):
        await publish_quote(btc, price)
    await publish_valuation(world["users"]["alice"], world["portfolios"]["alice"])
    updates = [await comm.receive_json_from(timeout=5) for _ in range(4)]
    quotes = [u for u in updates if u["stream"] == "quotes:BTC-USD"]
    assert [(u["stream_seq"], u["data"]["price"]) for u in quotes] == [
        (1, "100"),
        (2, "101"),
        (3, "102"),
    ]
    valuation = next(u for u in updates if u["stream"] == f"portfolio:{pid}")
    assert valuation["stream_seq"] == 1  # its own numbering
    assert [u["seq"] for u in updates] == list(range(updates[0]["seq"], updates[0]["seq"] + 4))
    await comm.disconnect()


async def test_a_snapshot_request_resends_the_state_and_updates_continue_from_its_stream_seq(
    world, redis_client
):
    from streaming.tasks import ingest_quotes

    btc = world["btc"]
    comm = await connect(world["users"]["alice"])
    await request(comm, type="subscribe", id=1, stream="quotes:BTC-USD")
    await comm.receive_json_from()
    await sync_ingest(ingest_quotes, btc, "200")
    first = await comm.receive_json_from(timeout=5)
    assert (first["stream_seq"], first["data"]["price"]) == (1, "200")
    await sync_ingest(ingest_quotes, btc, "201")
    await sync_ingest(ingest_quotes, btc, "202")
    missed = [await comm.receive_json_from(timeout=5) for _ in range(2)]
    assert [m["stream_seq"] for m in missed] == [2, 3]
    reply = await request(comm, type="snapshot", id="gap", stream="quotes:BTC-USD")
    assert (reply["type"], reply["id"], reply["result"]) == (
        "reply",
        "gap",
        {"stream": "quotes:BTC-USD"},
    )
    snapshot = await comm.receive_json_from()
    assert (snapshot["type"], snapshot["stream_seq"], snapshot["data"]["price"]) == (
        "snapshot",
        3,
        "202",
    )
    await sync_ingest(ingest_quotes, btc, "203")
    after = await comm.receive_json_from(timeout=5)
    assert (after["stream_seq"], after["data"]["price"]) == (4, "203")
    listed = await request(comm, type="list_subscriptions", id=9)
    assert listed["result"]["subscriptions"] == [
        {"stream": "quotes:BTC-USD", "max_rate": None, "stream_seq": 4}
    ]
    await comm.disconnect()


async def record_and_publish_trade(instrument, trade_id: str, price: str) -> None:
    trade = await database_sync_to_async(marketdata.trade_record)(
        instrument_id=instrument.id,
        symbol=instrument.symbol,
        price=Decimal(price),
        size=Decimal("0.1"),
        side="buy",
        trade_id=trade_id,
        exchange_ts=datetime.now(UTC),
    )
    await events.apublish([(events.instrument_group(instrument.id), trade)])


async def test_trades_skipped_by_max_rate_show_as_a_stream_seq_gap_that_a_snapshot_fills(
    world, redis_client
):
    btc = world["btc"]
    comm = await connect(world["users"]["alice"])
    await request(comm, type="subscribe", id=1, stream="trades:BTC-USD", max_rate=1)
    assert (await comm.receive_json_from())["data"] == {"trades": []}
    for i in range(5):
        await record_and_publish_trade(btc, f"t{i}", f"{100 + i}")
    first = await comm.receive_json_from(timeout=5)
    assert (first["stream_seq"], first["data"]["trade_id"]) == (1, "t0")
    latest = await comm.receive_json_from(timeout=5)  # after the 1 s interval
    assert (latest["stream_seq"], latest["data"]["trade_id"]) == (5, "t4")
    # The client sees 1 -> 5: three trades it did not get. A snapshot has them.
    await request(comm, type="snapshot", id="gap", stream="trades:BTC-USD")
    snapshot = await comm.receive_json_from()
    assert snapshot["stream_seq"] == 5
    assert [t["trade_id"] for t in snapshot["data"]["trades"]] == ["t0", "t1", "t2", "t3", "t4"]
    await asyncio.sleep(1)  # past the interval: the next trade goes out at once
    await record_and_publish_trade(btc, "t5", "105")
    after = await comm.receive_json_from(timeout=5)
    assert (after["stream_seq"], after["data"]["trade_id"]) == (6, "t5")
    await comm.disconnect()


async def test_quotes_conflated_by_max_rate_leave_no_gap_the_latest_supersedes_them(
    world, redis_client
):
    btc = world["btc"]
    comm = await connect(world["users"]["alice"])
    await request(comm, type="subscribe", id=1, stream="quotes:BTC-USD", max_rate=1)
    await comm.receive_json_from()
    for price in ("1", "2", "3", "4"):
        await publish_quote(btc, price)
    first = await comm.receive_json_from(timeout=5)
    latest = await comm.receive_json_from(timeout=5)
    assert [(u["stream_seq"], u["data"]["price"]) for u in (first, latest)] == [(1, "1"), (2, "4")]
    await comm.disconnect()


_ingest_clock = [datetime(2026, 1, 1, tzinfo=UTC)]


async def sync_ingest(task, instrument, price: str) -> None:
    """Store a quote through the real ingest task (DB, then publish after commit)."""
    from asgiref.sync import sync_to_async

    _ingest_clock[0] += timedelta(seconds=1)
    item = {
        "instrument": instrument.id,
        "price": price,
        "ts": _ingest_clock[0].isoformat(),
        "source": "simulated",
    }
    await sync_to_async(task)([item])


async def test_max_rate_conflates_to_at_most_the_rate_and_always_ends_with_the_latest_value(
    world, redis_client
):
    btc = world["btc"]
    comm = await connect(world["users"]["alice"])
    await request(comm, type="subscribe", id=1, stream="quotes:BTC-USD", max_rate=2)
    await comm.receive_json_from()
    prices = [str(1000 + i) for i in range(30)]
    for price in prices:
        await publish_quote(btc, price)
        await asyncio.sleep(0.04)
    updates = []
    while not updates or updates[-1]["data"]["price"] != prices[-1]:
        updates.append(await comm.receive_json_from(timeout=5))
    assert await comm.receive_nothing(timeout=1)  # and nothing after the latest value
    assert updates[-1]["data"]["price"] == prices[-1]
    assert len(updates) < len(prices)
    assert [u["stream_seq"] for u in updates] == list(range(1, len(updates) + 1))
    stamps = [datetime.fromisoformat(u["ts"]) for u in updates]
    # At most 2 in any second of the server's own time (ts is cut to milliseconds: 2 ms slack).
    for start in stamps:
        window = [t for t in stamps if start <= t < start + timedelta(milliseconds=998)]
        assert len(window) <= 2, [u["ts"] for u in updates]
    await comm.disconnect()


async def test_trades_and_book_snapshots_come_from_the_cache_and_updates_are_forwarded(
    world, redis_client
):
    btc = world["btc"]
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    for i in range(3):
        await database_sync_to_async(marketdata.trade_record)(
            instrument_id=btc.id,
            symbol=btc.symbol,
            price=Decimal("60000.5") + i,
            size=Decimal("0.01"),
            side="buy" if i % 2 == 0 else "sell",
            trade_id=f"t{i}",
            exchange_ts=t0 + timedelta(seconds=i),
        )
    await database_sync_to_async(marketdata.book_store)(
        instrument_id=btc.id,
        symbol=btc.symbol,
        bids=[(Decimal("59999"), Decimal("1")), (Decimal("60000"), Decimal("0.5"))],
        asks=[(Decimal("60002"), Decimal("2")), (Decimal("60001"), Decimal("0.25"))],
        exchange_ts=t0,
    )
    comm = await connect(world["users"]["alice"])
    await request(comm, type="subscribe", id=1, stream="trades:BTC-USD")
    trades = await comm.receive_json_from()
    assert [t["trade_id"] for t in trades["data"]["trades"]] == ["t0", "t1", "t2"]
    assert trades["data"]["trades"][2]["price"] == "60002.5"
    await request(comm, type="subscribe", id=2, stream="book:BTC-USD")
    book = await comm.receive_json_from()
    assert book["data"]["bids"] == [["60000", "0.5"], ["59999", "1"]]
    assert book["data"]["asks"] == [["60001", "0.25"], ["60002", "2"]]
    trade = await database_sync_to_async(marketdata.trade_record)(
        instrument_id=btc.id,
        symbol=btc.symbol,
        price=Decimal("60010"),
        size=Decimal("0.2"),
        side="sell",
        trade_id="t3",
        exchange_ts=t0 + timedelta(seconds=5),
    )
    await events.apublish([(events.instrument_group(btc.id), trade)])
    update = await comm.receive_json_from(timeout=5)
    assert (update["stream"], update["stream_seq"], update["data"]["trade_id"]) == (
        "trades:BTC-USD",
        1,
        "t3",
    )
    await publish_quote(btc, "1")  # a quote: no quotes subscription, nothing arrives
    assert await comm.receive_nothing(timeout=1)
    await comm.disconnect()


def test_market_data_cache_keeps_the_latest_trades_and_the_top_of_the_book(world, redis_client):
    btc = world["btc"]
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    for i in range(marketdata.RECENT_TRADES + 5):
        marketdata.trade_record(
            instrument_id=btc.id,
            symbol=btc.symbol,
            price=Decimal("1.5"),
            size=Decimal(i + 1),
            side="buy",
            trade_id=str(i),
            exchange_ts=t0,
        )
    recent = marketdata.recent_trades(btc.id)
    assert [t["trade_id"] for t in recent] == [str(i) for i in range(5, 55)]
    assert marketdata.latest_book(btc.id) is None
    levels = [(Decimal(p), Decimal("1")) for p in range(1, 31)]
    marketdata.book_store(
        instrument_id=btc.id, symbol=btc.symbol, bids=levels, asks=levels, exchange_ts=t0
    )
    book = marketdata.latest_book(btc.id)
    assert len(book["bids"]) == len(book["asks"]) == protocol.BOOK_DEPTH
    assert book["bids"][0] == ["30", "1"] and book["asks"][0] == ["1", "1"]
    assert marketdata.recent_trades(world["eth"].id) == []


# -- permissions: alice, bob, charlie -----------------------------------------------------------


async def test_a_user_can_never_subscribe_to_another_users_portfolio(world, redis_client):
    users, portfolios = world["users"], world["portfolios"]
    for name in ("alice", "bob", "charlie"):
        comm = await connect(users[name])
        for other in ("alice", "bob", "charlie"):
            reply = await request(
                comm, type="subscribe", id=other, stream=f"portfolio:{portfolios[other].id}"
            )
            if other == name:
                assert reply["type"] == "reply"
                snapshot = await comm.receive_json_from()
                assert snapshot["data"]["id"] == portfolios[name].id
            else:
                assert (reply["type"], reply["code"], reply["id"]) == ("error", "forbidden", other)
        listed = await request(comm, type="list_subscriptions", id="l")
        assert [s["stream"] for s in listed["result"]["subscriptions"]] == [
            f"portfolio:{portfolios[name].id}"
        ]
        await comm.disconnect()


async def test_an_outsider_receives_nothing_of_alices_valuations(world, redis_client):
    users, portfolios = world["users"], world["portfolios"]
    alice = await connect(users["alice"])
    charlie = await connect(users["charlie"])
    await request(alice, type="subscribe", id=1, stream=f"portfolio:{portfolios['alice'].id}")
    await alice.receive_json_from()
    await request(charlie, type="subscribe", id=1, stream=f"portfolio:{portfolios['charlie'].id}")
    await charlie.receive_json_from()
    await request(charlie, type="subscribe", id=2, stream="quotes:BTC-USD")
    await charlie.receive_json_from()
    await publish_valuation(users["alice"], portfolios["alice"])
    got = await alice.receive_json_from(timeout=5)
    assert got["data"]["id"] == portfolios["alice"].id
    assert await charlie.receive_nothing(timeout=1)
    await alice.disconnect()
    await charlie.disconnect()


# -- errors and limits --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "buy_everything", "id": 1}, "unknown_type"),
        ({"type": "subscribe", "id": 1}, "bad_params"),
        ({"type": "subscribe", "id": 1, "stream": "weather:BTC-USD"}, "bad_params"),
        ({"type": "subscribe", "id": 1, "stream": "portfolio:abc"}, "bad_params"),
        ({"type": "subscribe", "id": 1, "stream": "quotes:BTC-USD", "max_rate": 0}, "bad_params"),
        ({"type": "subscribe", "id": 1, "stream": "quotes:BTC-USD", "max_rate": "2"}, "bad_params"),
        ({"type": "subscribe", "id": [1], "stream": "quotes:BTC-USD"}, "bad_params"),
        ({"type": "ping", "id": 10**30}, "bad_params"),  # too large to echo: the reply had crashed
        ({"type": "ping", "id": -(2**53)}, "bad_params"),
        ({"type": "auth", "id": 1, "token": "lf_x_y"}, "bad_params"),  # already authenticated
        ({"type": "subscribe", "id": 1, "stream": "quotes:DOGE-USD"}, "not_found"),
        ({"type": "subscribe", "id": 1, "stream": "portfolio:999999"}, "not_found"),
        ({"type": "unsubscribe", "id": 1, "stream": "quotes:BTC-USD"}, "not_found"),
        ({"type": "snapshot", "id": 1, "stream": "quotes:BTC-USD"}, "not_found"),
    ],
)
async def test_each_bad_request_gets_its_documented_error_code_and_the_id(
    world, redis_client, frame, code
):
    comm = await connect(world["users"]["alice"])
    error = await request(comm, **frame)
    assert (error["type"], error["code"]) == ("error", code)
    assert error["message"]
    echoed = isinstance(frame["id"], int) and abs(frame["id"]) < 2**53
    assert error.get("id") == (frame["id"] if echoed else None)
    assert code in documented_error_codes()
    assert_documented(error)
    assert (await request(comm, type="ping", id="still"))["type"] == "reply"
    assert (await request(comm, type="ping", id=2**53 - 1))["id"] == 2**53 - 1  # the largest
    await comm.disconnect()


async def test_framing_errors_are_shared_with_the_portfolio_socket(world, redis_client):
    comm = await connect(world["users"]["alice"])
    for frame, code in (
        ({"text_data": "{nope"}, "invalid_json"),
        ({"text_data": "[]"}, "bad_message"),
        ({"bytes_data": b"\x00"}, "binary_not_supported"),
    ):
        await comm.send_to(**frame)
        error = await comm.receive_json_from()
        assert error["code"] == code
        assert_documented(error)
    await comm.send_to(text_data='{"type": "ping", "pad": "' + "x" * 70_000 + '"}')
    error = await comm.receive_json_from()
    assert error["code"] == "frame_too_large"
    assert await closed_with(comm) == 4009


async def test_requests_over_the_rate_are_refused_with_rate_limited(world, redis_client, settings):
    settings.LIVEFOLIO_API_RATE = 0.01  # one token per 100 s: the burst is all there is
    settings.LIVEFOLIO_API_BURST = 3
    comm = await connect(world["users"]["alice"])
    replies = [await request(comm, type="ping", id=i) for i in range(5)]
    assert [r["type"] for r in replies] == ["reply", "reply", "reply", "error", "error"]
    assert (replies[3]["code"], replies[3]["id"]) == ("rate_limited", 3)
    assert_documented(replies[3])
    await comm.disconnect()


async def test_the_subscription_cap_refuses_one_more_until_one_is_dropped(
    world, redis_client, settings
):
    settings.LIVEFOLIO_API_MAX_SUBSCRIPTIONS = 2
    comm = await connect(world["users"]["alice"])
    for i, stream in enumerate(("quotes:BTC-USD", "quotes:ETH-USD")):
        assert (await request(comm, type="subscribe", id=i, stream=stream))["type"] == "reply"
        await comm.receive_json_from()
    error = await request(comm, type="subscribe", id="x", stream="trades:BTC-USD")
    assert (error["code"], error["id"]) == ("too_many_subscriptions", "x")
    again = await request(comm, type="subscribe", id="y", stream="quotes:BTC-USD", max_rate=5)
    assert again["result"]["max_rate"] == 5  # re-subscribing is not one more
    await comm.receive_json_from()
    assert (await request(comm, type="unsubscribe", id="u", stream="quotes:eth-usd"))["result"] == {
        "stream": "quotes:ETH-USD"
    }
    assert (await request(comm, type="subscribe", id="z", stream="trades:BTC-USD"))["type"] == (
        "reply"
    )
    await comm.disconnect()


async def test_the_per_user_connection_cap_closes_one_more_with_4409_and_frees_on_disconnect(
    world, redis_client, settings
):
    settings.LIVEFOLIO_API_MAX_CONNECTIONS = 2
    alice = world["users"]["alice"]
    first = await connect(alice)
    second = await connect(alice)
    third = api_communicator(token=await new_token(alice, "third"))
    assert (await third.connect())[0]
    welcome = await third.receive_json_from()
    assert (welcome["type"], welcome["user"]) == ("welcome", None)  # it holds no slot
    error = await third.receive_json_from()
    assert (error["type"], error["code"]) == ("error", "too_many_connections")
    assert await closed_with(third) == 4409
    bob = await connect(world["users"]["bob"])  # other users are not counted against alice
    await first.disconnect()
    fourth = await connect(alice)
    assert (await request(fourth, type="ping", id=1))["type"] == "reply"
    for comm in (second, bob, fourth):
        await comm.disconnect()


async def test_a_crashed_servers_connection_slots_expire(world, redis_client, settings):
    from streaming.flow import UserConnections

    settings.LIVEFOLIO_API_MAX_CONNECTIONS = 1
    uid = world["users"]["alice"].id

    def cap(lease: float) -> UserConnections:  # one cap, held with this lease
        return UserConnections(
            scope="api", limit_setting="LIVEFOLIO_API_MAX_CONNECTIONS", lease=lambda: lease
        )

    assert await cap(0.3).acquire(uid, "dead-server")
    assert not await cap(10).acquire(uid, "live")
    assert await cap(0.3).acquire(uid, "dead-server")  # a renewal
    await asyncio.sleep(0.8)  # the dead server never renews
    assert await cap(10).acquire(uid, "live")


async def test_heartbeats_come_and_an_idle_connection_is_closed_with_4000(
    world, redis_client, settings
):
    settings.LIVEFOLIO_API_HEARTBEAT_SECONDS = 0.2
    settings.LIVEFOLIO_API_IDLE_TIMEOUT = 0.7
    subscribed = await connect(world["users"]["alice"])
    await request(subscribed, type="subscribe", id=1, stream="quotes:ETH-USD")
    await subscribed.receive_json_from()
    idle = await connect(world["users"]["bob"])
    beat = await idle.receive_json_from(timeout=5)
    assert beat["type"] == "heartbeat"
    assert_documented(beat)
    frames = []
    while (output := await idle.receive_output(timeout=5))["type"] == "websocket.send":
        frames.append(output)
    assert output["code"] == 4000
    assert '"idle_timeout"' in frames[-1]["text"]
    # The subscribed one stays open past the idle timeout and keeps getting heartbeats.
    await asyncio.sleep(1)
    await subscribed.send_json_to({"type": "ping", "id": "alive"})
    seen = []
    while not seen or seen[-1].get("id") != "alive":
        output = await subscribed.receive_output(timeout=5)
        assert output["type"] == "websocket.send", output  # not closed
        seen.append(json.loads(output["text"]))
    assert {f["type"] for f in seen[:-1]} == {"heartbeat"}
    await subscribed.disconnect()


def test_without_redis_the_embedded_default_keeps_slots_and_market_data_in_memory(
    monkeypatch, settings
):
    from streaming.flow import UserConnections

    # The embedded default has no REDIS_URL: both fall back to one process's memory.
    settings.REDIS_URL = ""
    settings.LIVEFOLIO_API_MAX_CONNECTIONS = 1
    monkeypatch.setattr(marketdata, "_client", lambda: None)
    monkeypatch.setattr(UserConnections, "_local", {})
    monkeypatch.setattr(marketdata, "_memory_books", {})
    lease = {"seconds": 60.0}
    cap = UserConnections(
        scope="api", limit_setting="LIVEFOLIO_API_MAX_CONNECTIONS", lease=lambda: lease["seconds"]
    )
    assert async_to_sync(cap.acquire)(1, "a")
    assert not async_to_sync(cap.acquire)(1, "b")
    assert async_to_sync(cap.acquire)(2, "b")
    async_to_sync(cap.release)(1, "a")
    assert async_to_sync(cap.acquire)(1, "b")
    lease["seconds"] = 0.01  # a lease not renewed runs out here too
    assert async_to_sync(cap.acquire)(3, "c")
    time.sleep(0.05)
    assert async_to_sync(cap.acquire)(3, "d")
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    for i in range(marketdata.RECENT_TRADES + 1):
        marketdata.trade_record(
            instrument_id=-7,
            symbol="X",
            price=Decimal("1"),
            size=Decimal("1"),
            side="sell",
            trade_id=str(i),
            exchange_ts=t0,
        )
    trades = marketdata.recent_trades(-7)
    assert (len(trades), trades[0]["trade_id"], trades[-1]["trade_id"]) == (50, "1", "50")
    marketdata.book_store(instrument_id=-7, symbol="X", bids=[], asks=[], exchange_ts=t0)
    assert marketdata.latest_book(-7)["bids"] == []


async def test_revoking_a_token_closes_the_connections_open_with_it_and_no_others(
    world, redis_client
):
    alice = world["users"]["alice"]
    revoked, kept = await new_token(alice, "bot"), await new_token(alice, "dashboard")
    doomed, other = api_communicator(token=revoked), api_communicator(token=kept)
    for comm in (doomed, other):
        assert (await comm.connect())[0]
        assert (await comm.receive_json_from())["type"] == "welcome"
    row = await database_sync_to_async(alice.api_tokens.get)(name="bot")
    await database_sync_to_async(tokens.token_revoke)(token=row)
    error = await doomed.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("error", "unauthorized")
    assert await closed_with(doomed) == 4401
    reply = await request(other, type="ping", id="still-here")
    assert (reply["type"], reply["id"]) == ("reply", "still-here")
    await other.disconnect()


async def test_logging_out_closes_api_connections_signed_in_with_that_session(world, redis_client):
    from tests.websocket import ORIGIN, session_cookie

    alice = world["users"]["alice"]
    cookie = await database_sync_to_async(session_cookie)(alice)
    comm = api_communicator(cookie=cookie, origin=ORIGIN)
    assert (await comm.connect())[0]
    assert (await comm.receive_json_from())["user"] == "alice"
    session_key = cookie.split("=", 1)[1]
    await database_sync_to_async(events.session_ended)(user_id=alice.id, session_key=session_key)
    error = await comm.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("error", "session_ended")
    assert await closed_with(comm) == 4401
