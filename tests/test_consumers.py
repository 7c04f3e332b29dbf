"""The live portfolio socket through the real ASGI stack and the real Redis channel layer."""

import gc
import json
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async

from streaming import events
from streaming.tasks import ingest_quotes
from tests.websocket import communicator, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


async def connect(user, **kwargs):
    cookie = await database_sync_to_async(session_cookie)(user)
    comm = communicator("/ws/portfolio/", cookie=cookie, **kwargs)
    connected, _ = await comm.connect()
    return comm, connected


async def test_anonymous_handshake_is_refused(world, redis_client):
    comm = communicator("/ws/portfolio/")
    connected, _ = await comm.connect()
    assert connected is False


async def test_cross_origin_handshake_is_refused(world, redis_client):
    _comm, connected = await connect(world["users"]["alice"], origin="https://evil.example")
    assert connected is False


async def test_handshake_without_origin_is_refused(world, redis_client):
    _comm, connected = await connect(world["users"]["alice"], origin=None)
    assert connected is False


async def test_snapshot_comes_first_with_seq_1_and_only_own_portfolios(world, redis_client):
    comm, connected = await connect(world["users"]["alice"])
    assert connected
    message = await comm.receive_json_from()
    assert message["type"] == "snapshot"
    assert message["seq"] == 1
    assert message["ts"].endswith("Z")
    assert [p["id"] for p in message["portfolios"]] == [world["portfolios"]["alice"].id]
    holding = message["portfolios"][0]["holdings"][0]
    assert holding["symbol"] == "BTC-USD"
    assert holding["quantity"] == "2"
    assert holding["price"] is None  # no quote yet
    await comm.disconnect()


async def test_ingested_tick_arrives_as_the_next_seq_and_resync_sends_the_same_state(
    world, redis_client
):
    comm, _ = await connect(world["users"]["alice"])
    await comm.receive_json_from()
    await comm.send_json_to({"type": "ping"})
    pong = await comm.receive_json_from()
    assert (pong["type"], pong["seq"]) == ("pong", 2)
    await sync_to_async(ingest_quotes)(
        [
            {
                "instrument": world["btc"].id,
                "price": "100",
                "ts": datetime.now(UTC).isoformat(),
                "source": "simulated",
            }
        ]
    )
    valuation = await comm.receive_json_from(timeout=5)
    assert (valuation["type"], valuation["seq"]) == ("valuation", 3)
    assert valuation["portfolio"]["total"] == "200.00"
    await comm.send_json_to({"type": "resync"})
    snapshot = await comm.receive_json_from()
    assert (snapshot["type"], snapshot["seq"]) == ("snapshot", 4)
    [again] = snapshot["portfolios"]
    assert again["valued_at"] >= valuation["portfolio"]["valued_at"]  # valued later, same numbers
    strip = lambda state: {k: v for k, v in state.items() if k != "valued_at"}  # noqa: E731
    assert strip(again) == strip(valuation["portfolio"])
    await comm.disconnect()


async def test_group_event_reaches_the_user_with_the_next_seq(world, redis_client):
    comm, _ = await connect(world["users"]["alice"])
    await comm.receive_json_from()
    payload = {"type": "valuation", "portfolio": {"id": world["portfolios"]["alice"].id}}
    await events.apublish([(events.user_group(world["users"]["alice"].id), payload)])
    message = await comm.receive_json_from(timeout=5)
    assert message["type"] == "valuation"
    assert message["seq"] == 2
    assert message["portfolio"] == payload["portfolio"]
    await comm.disconnect()


async def test_outsider_never_receives_alices_valuation(world, redis_client):
    alice, _ = await connect(world["users"]["alice"])
    bob, _ = await connect(world["users"]["bob"])
    await alice.receive_json_from()
    await bob.receive_json_from()
    payload = {"type": "valuation", "portfolio": {"id": world["portfolios"]["alice"].id}}
    await events.apublish([(events.user_group(world["users"]["alice"].id), payload)])
    assert (await alice.receive_json_from(timeout=5))["type"] == "valuation"
    assert await bob.receive_nothing(timeout=1)
    await alice.disconnect()
    await bob.disconnect()


async def test_invalid_json_gets_an_error_and_the_connection_keeps_serving(world, redis_client):
    comm, _ = await connect(world["users"]["alice"])
    await comm.receive_json_from()
    await comm.send_to(text_data="{not json")
    error = await comm.receive_json_from()
    assert (error["type"], error["code"], error["seq"]) == ("error", "invalid_json", 2)
    await comm.send_json_to({"type": "ping"})
    assert (await comm.receive_json_from())["type"] == "pong"
    await comm.disconnect()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"text_data": "[1, 2]"}, "bad_message"),
        ({"text_data": '{"type": 7}'}, "bad_message"),
        ({"text_data": '{"type": "subscribe_everything"}'}, "unknown_type"),
        ({"bytes_data": b"\x00\x01"}, "binary_not_supported"),
    ],
)
async def test_malformed_messages_get_a_named_error(world, redis_client, frame, code):
    comm, _ = await connect(world["users"]["alice"])
    await comm.receive_json_from()
    await comm.send_to(**frame)
    error = await comm.receive_json_from()
    assert error["type"] == "error"
    assert error["code"] == code
    assert error["message"]
    await comm.disconnect()


async def test_oversized_frame_gets_an_error_then_close_4009_and_others_are_unaffected(
    world, redis_client
):
    alice, _ = await connect(world["users"]["alice"])
    charlie, _ = await connect(world["users"]["charlie"])
    await alice.receive_json_from()
    await charlie.receive_json_from()
    await alice.send_to(text_data=json.dumps({"type": "ping", "pad": "x" * 70_000}))
    error = await alice.receive_json_from()
    assert (error["type"], error["code"]) == ("error", "frame_too_large")
    assert "65536 bytes" in error["message"]
    closed = await alice.receive_output()
    assert closed == {"type": "websocket.close", "code": 4009}
    await charlie.send_json_to({"type": "ping"})
    assert (await charlie.receive_json_from())["type"] == "pong"
    await charlie.disconnect()


async def test_instrument_socket_sends_quote_bars_stats_and_position_then_quotes(
    world, redis_client
):
    t0 = datetime.now(UTC).replace(second=0, microsecond=0)
    for seconds, price in ((1, "100"), (20, "120"), (40, "90"), (59, "110")):
        await sync_to_async(ingest_quotes)(
            [
                {
                    "instrument": world["btc"].id,
                    "price": price,
                    "ts": (t0 - timedelta(minutes=2, seconds=-seconds)).isoformat(),
                    "source": "simulated",
                }
            ]
        )
    cookie = await database_sync_to_async(session_cookie)(world["users"]["alice"])
    comm = communicator("/ws/instrument/BTC-USD/", cookie=cookie)
    connected, _ = await comm.connect()
    assert connected
    snapshot = await comm.receive_json_from()
    assert (snapshot["type"], snapshot["seq"]) == ("snapshot", 1)
    assert snapshot["instrument"]["symbol"] == "BTC-USD"
    assert snapshot["quote"]["price"] == "110"
    assert [(b["open"], b["high"], b["low"], b["close"]) for b in snapshot["bars"]] == [
        ("100", "120", "90", "110")
    ]
    assert snapshot["stats_24h"] == {
        "open": "100",
        "high": "120",
        "low": "90",
        "change": "10",
        "change_pct": "10",
    }
    assert snapshot["position"]["quantity"] == "2"  # alice's own position only
    assert snapshot["position"]["value"] == "220.00"

    await sync_to_async(ingest_quotes)(
        [
            {
                "instrument": world["btc"].id,
                "price": "111.5",
                "ts": datetime.now(UTC).isoformat(),
                "source": "simulated",
            }
        ]
    )
    quote = await comm.receive_json_from(timeout=5)
    assert (quote["type"], quote["seq"], quote["price"]) == ("quote", 2, "111.5")
    await comm.disconnect()


async def test_instrument_socket_refuses_unknown_symbols_and_anonymous_visitors(
    world, redis_client
):
    cookie = await database_sync_to_async(session_cookie)(world["users"]["alice"])
    unknown = communicator("/ws/instrument/NOPE/", cookie=cookie)
    assert (await unknown.connect())[0] is False
    anonymous = communicator("/ws/instrument/BTC-USD/")
    assert (await anonymous.connect())[0] is False


async def test_open_sockets_keep_no_user_or_session_object(world, redis_client):
    """Each open page socket keeps its user's id and session key, not the ``User`` and the
    decoded session its handshake loaded (memory kept per idle socket; logging out still closes it:
    tests/test_websocket_hostile.py)."""
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.backends.base import SessionBase

    def alive(kind) -> int:
        gc.collect()
        return sum(isinstance(o, kind) for o in gc.get_objects())

    user_model = get_user_model()
    cookies = [
        await database_sync_to_async(session_cookie)(world["users"][name])
        for name in ("alice", "bob", "charlie")
        for _ in range(4)
    ]
    users, sessions = alive(user_model), alive(SessionBase)
    sockets = [communicator("/ws/portfolio/", cookie=cookie) for cookie in cookies]
    for comm in sockets:
        assert (await comm.connect())[0]
        assert (await comm.receive_json_from())["type"] == "snapshot"
    assert (alive(user_model), alive(SessionBase)) == (users, sessions)
    for comm in sockets:
        await comm.send_json_to({"type": "ping"})
        assert (await comm.receive_json_from())["type"] == "pong"
        await comm.disconnect()
