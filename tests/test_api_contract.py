"""API v1 against its AsyncAPI document: the document is valid, the server speaks it, and no
frame, however random, crashes the consumer or gets an undocumented answer."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from portfolio.selectors import live_states
from streaming import events, marketdata, protocol
from tests.api import (
    ASYNCAPI,
    assert_documented,
    connect,
    documented_error_codes,
    request,
)
from tests.conftest import ROOT

NODE = shutil.which("node") or "node"
VALIDATOR = ROOT / "docs" / "validate-asyncapi.mjs"


def run_validator(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NODE, str(VALIDATOR), str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_asyncapi_document_is_valid_for_the_official_parser():
    result = run_validator(ASYNCAPI)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid AsyncAPI 3.0.0" in result.stdout


def test_the_validator_rejects_a_broken_document(tmp_path):
    broken = tmp_path / "asyncapi.yaml"
    text = ASYNCAPI.read_text().replace(
        "'#/components/schemas/Quote'", "'#/components/schemas/Nope'"
    )
    broken.write_text(text)
    result = run_validator(broken)
    assert result.returncode == 1
    assert "INVALID" in result.stdout


@pytest.mark.django_db
def test_the_document_is_served_without_login():
    response = Client().get("/api/asyncapi.yaml")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/yaml"
    assert b"".join(response.streaming_content) == ASYNCAPI.read_bytes()


def test_every_error_code_in_protocol_is_documented_and_vice_versa():
    codes = {v for k, v in vars(protocol).items() if k.startswith("ERROR_")}
    assert codes == documented_error_codes()


@pytest.mark.django_db(transaction=True)
async def test_recorded_server_messages_of_every_kind_match_the_document(
    world, redis_client, settings
):
    settings.LIVEFOLIO_API_HEARTBEAT_SECONDS = 0.3
    btc = world["btc"]
    alice, pid = world["users"]["alice"], world["portfolios"]["alice"].id
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    await database_sync_to_async(marketdata.trade_record)(
        instrument_id=btc.id,
        symbol=btc.symbol,
        price=Decimal("60000.1"),
        size=Decimal("0.5"),
        side="sell",
        trade_id="1",
        exchange_ts=t0,
    )
    comm = await connect(alice)
    recorded = []

    async def send(**frame):
        reply = await request(comm, **frame)
        recorded.append(reply)
        return reply

    await send(type="ping", id=1)
    await send(type="list_portfolios", id="two")
    for stream in ("quotes:BTC-USD", "trades:BTC-USD", "book:BTC-USD", f"portfolio:{pid}"):
        await send(type="subscribe", id=stream, stream=stream, max_rate=50)
        recorded.append(await comm.receive_json_from())  # snapshot (book: none yet)
    await send(type="snapshot", id=3, stream=f"portfolio:{pid}")
    recorded.append(await comm.receive_json_from())
    await send(type="list_subscriptions", id=4)
    await send(type="subscribe", id=5, stream="quotes:NOPE")
    book = await database_sync_to_async(marketdata.book_store)(
        instrument_id=btc.id,
        symbol=btc.symbol,
        bids=[(Decimal("1"), Decimal("2"))],
        asks=[(Decimal("3"), Decimal("4.5"))],
        exchange_ts=t0,
    )
    trade = await database_sync_to_async(marketdata.trade_record)(
        instrument_id=btc.id,
        symbol=btc.symbol,
        price=Decimal("2"),
        size=Decimal("1"),
        side="buy",
        trade_id="2",
        exchange_ts=t0 + timedelta(seconds=1),
    )
    quote = protocol.quote(
        instrument_id=btc.id,
        symbol=btc.symbol,
        price=Decimal("2.5"),
        bid=Decimal("2"),
        ask=Decimal("3"),
        exchange_ts=t0,
        received=t0,
    )
    state = (await database_sync_to_async(live_states.portfolio_states)(portfolio_ids=[pid]))[0]
    state["day_change"] = "12.30"  # a field from a parallel change: allowed
    group = events.instrument_group(btc.id)
    await events.apublish(
        [
            (group, book),
            (group, trade),
            (group, quote),
            (events.user_group(alice.id), protocol.valuation(portfolio=state)),
        ]
    )
    kinds = set()
    while len(kinds) < 4 or "heartbeat" not in {f["type"] for f in recorded}:
        frame = await comm.receive_json_from(timeout=5)
        recorded.append(frame)
        if frame["type"] == "update":
            kinds.add(frame["stream"].split(":")[0])
    await send(type="unsubscribe", id=6, stream="book:BTC-USD")
    await comm.disconnect()

    assert {f["type"] for f in recorded} == {"reply", "error", "snapshot", "update", "heartbeat"}
    assert {f["request"] for f in recorded if f["type"] == "reply"} == {
        "ping",
        "list_portfolios",
        "subscribe",
        "snapshot",
        "list_subscriptions",
        "unsubscribe",
    }
    for frame in recorded:
        assert_documented(frame)


def test_a_frame_that_breaks_the_document_is_caught():
    """The schema check itself can fail: an undocumented field or a number for a price."""
    frame = {
        "type": "update",
        "seq": 3,
        "ts": "2026-01-01T00:00:00.000Z",
        "stream": "quotes:BTC-USD",
        "stream_seq": 1,
        "data": {
            "type": "quote",
            "instrument": 1,
            "symbol": "BTC-USD",
            "price": 1.5,
            "bid": None,
            "ask": None,
            "as_of": "2026-01-01T00:00:00.000Z",
        },
    }
    with pytest.raises(AssertionError, match="price"):
        assert_documented(frame)
    with pytest.raises(AssertionError, match="not in docs"):
        assert_documented({"type": "surprise", "seq": 1, "ts": "2026-01-01T00:00:00Z"})


REQUEST_TYPES = [
    "auth",
    "ping",
    "list_portfolios",
    "subscribe",
    "unsubscribe",
    "list_subscriptions",
    "snapshot",
]
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
streams = st.sampled_from(
    [
        "quotes:BTC-USD",
        "trades:eth-usd",
        "book:BTC-USD",
        "portfolio:1",
        "portfolio:999",
        "quotes:",
        ":",
        "portfolio:-1",
        "weather:x",
    ]
) | st.text(max_size=30)
requests = st.fixed_dictionaries(
    {"type": st.sampled_from(REQUEST_TYPES) | st.text(max_size=12) | json_values},
    optional={
        "id": st.integers() | st.text(max_size=70) | json_values,
        "stream": streams | json_values,
        "max_rate": st.floats(allow_nan=True, allow_infinity=True) | st.integers() | json_values,
        "token": st.text(max_size=40) | json_values,
    },
)
# ASGI websocket.receive events, as daphne hands them over (empty frames included).
frames = (
    requests.map(lambda r: {"text": json.dumps(r)})
    | json_values.map(lambda v: {"text": json.dumps(v)})
    | st.text(max_size=60).map(lambda t: {"text": t})
    | st.binary(max_size=20).map(lambda b: {"bytes": b})
)


@pytest.mark.django_db(transaction=True)
@hsettings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sent=st.lists(frames, min_size=1, max_size=6))
async def test_random_frames_never_crash_the_consumer_and_get_documented_answers(
    world, redis_client, settings, sent
):
    settings.LIVEFOLIO_API_BURST = 1000
    comm = await connect(world["users"]["alice"])
    for frame in sent:
        await comm.send_input({"type": "websocket.receive", **frame})
        answer = await comm.receive_json_from(timeout=5)
        assert_documented(answer)
        assert answer["type"] in ("reply", "error")
        if answer["type"] == "error":
            assert answer["code"] in documented_error_codes()
        elif answer["request"] in ("subscribe", "snapshot"):
            assert_documented(await comm.receive_json_from(timeout=5))
    assert (await request(comm, type="ping", id="alive"))["type"] == "reply"
    await comm.disconnect()


def documented_close_codes(text: str, start: str) -> set[int]:
    """The close codes in the paragraph of ``text`` that begins with ``start``."""
    import re

    paragraph = text[text.index(start) :].split("\n\n", 1)[0]
    return {int(code) for code in re.findall(r"(?<!RFC )\b(\d{4})\b", paragraph)}


def test_every_close_code_the_server_sends_is_documented_and_daphne_can_send_it():
    """RFC 6455 section 7.4.2: 4000-4999 are for applications. autobahn, daphne's WebSocket
    library, raises in sendClose() for an application code other than 1000 or 3000-4999, so a
    1009 or 1011 from a consumer never reaches the client (it was closed 1011 by daphne)."""
    codes = {v for k, v in vars(protocol).items() if k.startswith("CLOSE_")}
    assert all(code == 1000 or 3000 <= code <= 4999 for code in codes), codes
    api = (ROOT / "docs" / "api.md").read_text()
    asyncapi = ASYNCAPI.read_text()
    # 1007 and 1009 come from the WebSocket layer itself (streaming/patches/websocket.py),
    # not the app.
    assert documented_close_codes(api, "Close codes:") - {1007, 1009} == codes
    assert documented_close_codes(asyncapi, "    Close codes") == codes
