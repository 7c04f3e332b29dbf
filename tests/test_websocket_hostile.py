"""Hostile clients: ended sessions, floods, too many sockets, frames nobody expects, random
frames. Each is refused or answered with a documented error or close code; everyone else keeps
being served; and whatever ended a socket, its clean-up ran (groups, socket watch, connection
slot, /metrics). The second half runs through a real daphne."""

import asyncio
import json
from datetime import timedelta
from urllib.parse import quote

import pytest
import websockets
from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.api import new_token
from tests.conftest import free_port, start_daphne
from tests.websocket import (
    LiveServer,
    communicator,
    frames_until_close,
    next_json,
    session_cookie,
)

pytestmark = pytest.mark.django_db(transaction=True)

SERVER_TYPES = {"snapshot", "valuation", "quote", "pong", "error"}


async def open_as(user=None, *, cookie=None):
    cookie = cookie or await database_sync_to_async(session_cookie)(user)
    comm = communicator("/ws/portfolio/", cookie=cookie)
    connected, _ = await comm.connect()
    assert connected
    assert (await comm.receive_json_from())["type"] == "snapshot"
    return comm


async def still_served(comm) -> None:
    await comm.send_json_to({"type": "ping"})
    assert (await comm.receive_json_from(timeout=5))["type"] == "pong"


def logged_in_client(user) -> tuple[Client, str]:
    client = Client()
    client.force_login(user)
    return client, f"sessionid={client.cookies['sessionid'].value}"


async def test_logging_out_closes_that_sessions_sockets_with_4401_within_5_seconds(
    world, redis_client
):
    alice = world["users"]["alice"]
    browser, cookie = await database_sync_to_async(logged_in_client)(alice)
    leaving = await open_as(cookie=cookie)
    other_device = await open_as(alice)  # alice's other session stays logged in
    bob = await open_as(world["users"]["bob"])

    response = await sync_to_async(browser.post)("/logout/")
    assert response.status_code == 302

    error = await leaving.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("error", "session_ended")
    assert await leaving.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}
    await still_served(other_device)
    await still_served(bob)
    await other_device.disconnect()
    await bob.disconnect()


async def test_an_expired_session_closes_its_socket_with_4401(world, redis_client, settings):
    settings.LIVEFOLIO_SESSION_CHECK_SECONDS = 1
    alice = world["users"]["alice"]
    _browser, cookie = await database_sync_to_async(logged_in_client)(alice)
    comm = await open_as(cookie=cookie)
    key = cookie.split("=", 1)[1]
    await database_sync_to_async(
        lambda: Session.objects.filter(session_key=key).update(
            expire_date=timezone.now() - timedelta(seconds=1)
        )
    )()
    error = await comm.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("error", "session_ended")
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}


async def test_an_expired_session_cannot_open_a_socket(world, redis_client):
    alice = world["users"]["alice"]
    _browser, cookie = await database_sync_to_async(logged_in_client)(alice)
    await database_sync_to_async(Session.objects.all().delete)()
    comm = communicator("/ws/portfolio/", cookie=cookie)
    connected, _ = await comm.connect()
    assert connected is False


async def test_a_flood_is_answered_rate_limited_then_closed_4429_and_others_are_unaffected(
    world, redis_client, settings
):
    settings.LIVEFOLIO_WS_RATE = 5
    settings.LIVEFOLIO_WS_BURST = 10
    flooder = await open_as(world["users"]["alice"])
    neighbour = await open_as(world["users"]["charlie"])
    for _ in range(40):
        await flooder.send_json_to({"type": "ping"})
    replies, closed = [], None
    while closed is None:
        output = await flooder.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            closed = output["code"]
        else:
            replies.append(json.loads(output["text"]))
    kinds = [r["type"] if r["type"] != "error" else r["code"] for r in replies]
    assert kinds[:10] == ["pong"] * 10  # the burst is served
    assert kinds.count("rate_limited") == 10  # then each dropped frame is named, up to the limit
    assert "at most 5 messages per second" in replies[-1]["message"]
    assert closed == 4429
    await still_served(neighbour)
    await neighbour.disconnect()


async def test_one_user_cannot_hold_more_sockets_than_the_cap(world, redis_client, settings):
    settings.LIVEFOLIO_WS_MAX_PER_USER = 2
    alice = world["users"]["alice"]
    first, second = await open_as(alice), await open_as(alice)
    third = communicator(
        "/ws/portfolio/", cookie=await database_sync_to_async(session_cookie)(alice)
    )
    connected, _ = await third.connect()
    assert connected  # accepted only to say why it is closed at once
    error = await third.receive_json_from()
    assert (error["type"], error["code"]) == ("error", "too_many_connections")
    assert "at most 2 open connections per user" in error["message"]
    assert await third.receive_output() == {"type": "websocket.close", "code": 4409}
    charlie = await open_as(world["users"]["charlie"])  # another user is not affected
    await first.disconnect()
    fourth = await open_as(alice)  # a freed slot can be used again
    for comm in (second, charlie, fourth):
        await still_served(comm)
        await comm.disconnect()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
frames = st.one_of(
    st.text(max_size=200).map(lambda t: {"text": t}),
    st.binary(max_size=200).map(lambda b: {"bytes": b}),
    json_values.map(lambda v: {"text": json.dumps(v)}),
    st.dictionaries(
        st.sampled_from(["type", "seq", "portfolio", "id"]),
        st.sampled_from(["ping", "resync", "snapshot", "valuation", "subscribe", ""])
        | st.integers()
        | st.none(),
    ).map(lambda v: {"text": json.dumps(v)}),
)


@hypothesis_settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(frames, min_size=50, max_size=80))
def test_thousands_of_random_frames_never_raise_and_every_reply_is_a_protocol_frame(
    world, redis_client, settings, batch
):
    settings.LIVEFOLIO_WS_RATE = 100_000
    settings.LIVEFOLIO_WS_BURST = 100_000

    async def run() -> None:
        comm = await open_as(world["users"]["alice"])
        seq = 1
        for frame in batch:
            await comm.send_input({"type": "websocket.receive", **frame})
            await comm.send_json_to({"type": "ping"})
            while True:  # the server answers in order: everything up to our pong
                message = await comm.receive_json_from(timeout=5)
                seq += 1
                assert message["seq"] == seq
                assert message["type"] in SERVER_TYPES
                if message["type"] == "error":
                    assert message["code"] and message["message"]
                if message["type"] == "pong":
                    break
        await comm.disconnect()

    async_to_sync(run)()


async def test_session_fingerprint_of_another_session_does_not_close_the_socket(
    world, redis_client
):
    from streaming import events

    alice = world["users"]["alice"]
    comm = await open_as(alice)
    await sync_to_async(events.session_ended)(user_id=alice.id, session_key="not-this-one")
    await still_served(comm)
    await asyncio.sleep(0)
    await comm.disconnect()


# -- through a real daphne ----------------------------------------------------------------------
# Each hostile frame below once raised inside a consumer: daphne closed the socket 1011 and the
# clean-up of a normal close never ran (a zombie in the socket watch and /metrics, holding one of
# its user's connection slots). Each test now checks the documented answer AND the clean-up.

PAGE_LIMIT, API_LIMIT = 3, 2  # small caps: "all of the user's sockets" opens quickly
DEEP = "[" * 3000 + "]" * 3000  # 6 KB, nested far past the interpreter's recursion limit


@pytest.fixture
def live(transactional_db, redis_client, tmp_path):
    port = free_port()
    server = start_daphne(
        tmp_path,
        port,
        LIVEFOLIO_WS_MAX_PER_USER=str(PAGE_LIMIT),
        LIVEFOLIO_API_MAX_CONNECTIONS=str(API_LIMIT),
        LIVEFOLIO_METRICS_TOKEN=LiveServer.METRICS_TOKEN,
    )
    yield LiveServer(f"http://127.0.0.1:{port}", server, page_limit=PAGE_LIMIT, api_limit=API_LIMIT)
    server.stop()


@pytest.fixture
async def alice_keys(world):
    """alice's session cookie and one API token per connection she may hold."""
    alice = world["users"]["alice"]
    cookie = await database_sync_to_async(session_cookie)(alice)
    tokens = [await new_token(alice, f"bot {n}") for n in range(API_LIMIT)]
    return cookie, tokens


async def open_each_endpoint(live, cookie, tokens):
    """alice's portfolio page, instrument page and API socket, first frames read."""
    return {
        "portfolio": await live.open_page(cookie),
        "instrument": await live.open_page(cookie, "/ws/instrument/BTC-USD/"),
        "api": await live.open_api(tokens[0]),
    }


async def test_deeply_nested_json_is_a_bad_message_and_the_socket_keeps_serving(live, alice_keys):
    cookie, tokens = alice_keys
    sockets = await open_each_endpoint(live, cookie, tokens)
    for ws in sockets.values():
        await ws.send(DEEP)
        error = await next_json(ws)
        assert (error["type"], error["code"]) == ("error", "bad_message")
        assert "nest at most 32 deep" in error["message"]
        await ws.send(json.dumps({"type": "ping", "id": "after"}))
        assert (await next_json(ws))["type"] in ("pong", "reply")
    await live.wait_open_sockets({"portfolio": 1, "instrument": 1, "api": 1, "watched": 2})
    for ws in sockets.values():
        await ws.close()
    await live.assert_clean(cookie=cookie, tokens=tokens)
    live.assert_no_crash()


async def test_a_lone_surrogate_is_refused_naming_its_field_and_never_echoed(live, alice_keys):
    cookie, tokens = alice_keys
    api = await live.open_api(tokens[0])
    # "\udfff" is valid JSON text (RFC 8259 section 7) that no UTF-8 frame can carry back.
    await api.send('{"type": "ping", "id": "\\udfff"}')
    error = await next_json(api)
    assert (error["type"], error["code"]) == ("error", "bad_message")
    assert error["message"].startswith("id: text must not hold")
    assert "id" not in error  # the id is what is wrong: not sent back
    await api.send('{"type": "subscribe", "id": 7, "stream": "quotes:\\ud800BTC"}')
    error = await next_json(api)
    assert (error["code"], error["id"]) == ("bad_message", 7)  # a valid id is still echoed
    assert error["message"].startswith("stream: text must not hold")
    page = await live.open_page(cookie)
    await page.send('{"type": "\\udfff"}')
    error = await next_json(page)
    assert (error["code"], error["message"][:24]) == ("bad_message", "type: text must not hold")
    for ws in (api, page):
        await ws.send('{"type": "ping", "id": 2}')
        assert (await next_json(ws))["type"] in ("pong", "reply")
        await ws.close()
    await live.assert_clean(cookie=cookie, tokens=tokens)
    live.assert_no_crash()


async def test_a_nul_in_a_stream_name_or_token_never_reaches_the_database(live, alice_keys):
    cookie, tokens = alice_keys
    api = await live.open_api(tokens[0])
    await api.send('{"type": "subscribe", "id": "s", "stream": "quotes:BTC\\u0000USD"}')
    error = await next_json(api)
    assert (error["code"], error["id"]) == ("bad_message", "s")
    assert error["message"].startswith("stream: text must not hold NUL")
    await api.send('{"type": "subscribe", "id": "ok", "stream": "quotes:BTC-USD"}')
    assert (await next_json(api))["type"] == "reply"  # still subscribed and served
    await api.close()
    bot = await live.open("/ws/v1/", origin=False)
    assert (await next_json(bot))["type"] == "welcome"
    await bot.send('{"type": "auth", "id": 1, "token": "lf_ab\\u0000cd_secret"}')
    error = await next_json(bot)
    assert (error["code"], error["id"]) == ("bad_message", 1)
    assert error["message"].startswith("token: text must not hold NUL")
    await bot.close()
    # A NUL in the URL of an instrument page: refused like an unknown symbol (not a 500).
    with pytest.raises(websockets.InvalidStatus) as refused:
        await live.open(f"/ws/instrument/{quote(chr(0))}/", cookie=cookie)
    assert refused.value.response.status_code == 403
    await live.assert_clean(cookie=cookie, tokens=tokens)
    live.assert_no_crash()


async def test_a_frame_over_64_kib_gets_frame_too_large_then_close_4009(live, alice_keys):
    cookie, tokens = alice_keys
    sockets = await open_each_endpoint(live, cookie, tokens)
    for ws in sockets.values():
        await ws.send(json.dumps({"type": "ping", "pad": "x" * 70_000}))
        frames, code = await frames_until_close(ws)
        assert [(f["type"], f["code"]) for f in frames] == [("error", "frame_too_large")]
        assert "limited to 65536 bytes" in frames[0]["message"]
        assert code == 4009
    await live.assert_clean(cookie=cookie, tokens=tokens)
    live.assert_no_crash()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        pytest.param(b"\xff\xfe{}", 1007, id="invalid-utf8"),
        pytest.param(b'{"type": "ping", "pad": "' + b"x" * 200_000 + b'"}', 1009, id="200KB"),
    ],
)
async def test_what_the_websocket_layer_refuses_is_closed_with_the_rfc_code_and_cleaned_up(
    live, alice_keys, payload, code
):
    """The WebSocket layer refuses a text frame that is not UTF-8 and a frame over 128 KiB
    before the application sees it, with a close frame naming why (RFC 6455 7.4.1: 1007
    "data within a message that was not consistent with the type of the message", 1009 "a
    message that is too big for it to process"), and closes without waiting for the client's
    close. daphne then tells the application the socket disconnected: the clean-up runs."""
    cookie, tokens = alice_keys
    for ws in (await open_each_endpoint(live, cookie, tokens)).values():
        await ws.send(payload, text=True)
        frames, received = await frames_until_close(ws)
        assert (frames, received) == ([], code)
    await live.assert_clean(cookie=cookie, tokens=tokens)
    live.assert_no_crash()


class PortfolioTable:
    """Takes the portfolio table away (as a broken migration or a lost privilege would), so
    every read of a portfolio fails in the database, and puts it back."""

    def __init__(self) -> None:
        self.away = False

    def _rename(self, old: str, new: str) -> None:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {old} RENAME TO {new}")

    async def take_away(self) -> None:
        await database_sync_to_async(self._rename)("portfolio_portfolio", "portfolio_gone")
        self.away = True

    async def put_back(self) -> None:
        if self.away:
            await database_sync_to_async(self._rename)("portfolio_gone", "portfolio_portfolio")
            self.away = False


@pytest.fixture
async def portfolio_table(transactional_db):
    table = PortfolioTable()
    yield table
    await table.put_back()


async def test_a_database_error_in_a_request_closes_4500_after_internal_error_and_cleans_up(
    live, alice_keys, world, portfolio_table
):
    cookie, tokens = alice_keys
    page = await live.open_page(cookie)
    api = await live.open_api(tokens[0])
    await portfolio_table.take_away()
    await page.send('{"type": "resync"}')
    pid = world["portfolios"]["alice"].id
    await api.send(json.dumps({"type": "subscribe", "id": 5, "stream": f"portfolio:{pid}"}))
    for ws in (page, api):
        frames, code = await frames_until_close(ws)
        assert [(f["type"], f["code"]) for f in frames] == [("error", "internal_error")]
        assert code == 4500
    assert "handling a WebSocket message failed; closing with 4500" in live.process.output()
    await portfolio_table.put_back()
    await live.assert_clean(cookie=cookie, tokens=tokens)
    live.assert_no_crash()


async def test_an_update_the_page_cannot_handle_closes_it_4500_and_cleans_up(
    live, alice_keys, world
):
    """The boundary also covers what arrives from the channel layer: a valuation without its
    portfolio (a publisher's bug) ends the page socket documentedly, not with daphne's 1011."""
    from streaming import events

    cookie, tokens = alice_keys
    page = await live.open_page(cookie)
    api = await live.open_api(tokens[0])  # also in alice's group: it skips what it cannot route
    alice = world["users"]["alice"]
    await sync_to_async(events.publish)([(events.user_group(alice.id), {"type": "valuation"})])
    frames, code = await frames_until_close(page)
    assert ([(f["type"], f["code"]) for f in frames], code) == ([("error", "internal_error")], 4500)
    await api.send('{"type": "ping", "id": "api still served"}')
    assert (await next_json(api))["id"] == "api still served"
    await api.close()
    await live.assert_clean(cookie=cookie, tokens=tokens)
    live.assert_no_crash()


async def test_an_api_connection_that_keeps_flooding_is_closed_4429(live, alice_keys):
    """docs/api.md section 5: a refused request gets rate_limited (10 a second, bursts of 20);
    refused requests coming faster than that same rate close the connection with 4429."""
    cookie, tokens = alice_keys
    api = await live.open_api(tokens[0])
    for n in range(300):
        await api.send(json.dumps({"type": "ping", "id": n}))
    frames, code = await frames_until_close(api)
    kinds = [f["type"] if f["type"] != "error" else f["code"] for f in frames]
    assert kinds[:20] == ["reply"] * 20  # the burst is served
    assert 20 <= kinds.count("rate_limited") < 40  # then about a burst of refusals
    assert len(frames) < 100  # and not an answer to every one of the 300
    assert code == 4429
    await live.assert_clean(cookie=cookie, tokens=tokens)
    live.assert_no_crash()


async def test_a_page_flood_closes_4429_and_frames_queued_behind_the_close_are_not_handled(
    live, alice_keys
):
    cookie, tokens = alice_keys
    page = await live.open_page(cookie)
    for _ in range(300):  # written at once: queued in daphne before the first is handled
        await page.send(json.dumps({"type": "ping"}))
    frames, code = await frames_until_close(page)
    kinds = [f["type"] if f["type"] != "error" else f["code"] for f in frames]
    assert kinds == ["pong"] * 30 + ["rate_limited"] * 30  # burst 30, then 30 dropped
    assert code == 4429
    await live.assert_clean(cookie=cookie, tokens=tokens)
    live.assert_no_crash()  # no reply was attempted on the closed socket


async def test_welcome_is_the_first_api_frame_even_when_the_connection_is_refused(live, alice_keys):
    """docs/api.md section 2: the first server frame is always a welcome; a refusal follows."""
    cookie, tokens = alice_keys
    bad = await live.open("/ws/v1/", origin=False, headers={"Authorization": "Bearer lf_x_y"})
    frames, code = await frames_until_close(bad)
    assert [(f["type"], f["seq"]) for f in frames] == [("welcome", 1), ("error", 2)]
    assert (frames[0]["user"], frames[1]["code"], code) == (None, "unauthorized", 4401)

    held = [await live.open_api(token) for token in tokens]  # all of alice's slots
    one_more = await live.open(
        "/ws/v1/", origin=False, headers={"Authorization": f"Bearer {tokens[0]}"}
    )
    frames, code = await frames_until_close(one_more)
    assert [(f["type"], f["seq"]) for f in frames] == [("welcome", 1), ("error", 2)]
    assert (frames[0]["user"], frames[1]["code"], code) == (None, "too_many_connections", 4409)
    for ws in held:
        await ws.close()
    await live.assert_clean(cookie=cookie, tokens=tokens)
    live.assert_no_crash()


async def test_a_session_cookie_without_origin_is_refused_on_the_api(live, alice_keys):
    """docs/asyncapi.yaml: a client without Origin must authenticate by token; only a browser's
    Origin shows that a session cookie was sent by a page of this site."""
    cookie, tokens = alice_keys
    no_origin = await live.open("/ws/v1/", cookie=cookie, origin=False)
    frames, code = await frames_until_close(no_origin)
    assert [(f["type"], f.get("code")) for f in frames] == [
        ("welcome", None),
        ("error", "unauthorized"),
    ]
    assert frames[0]["user"] is None and "Origin" in frames[1]["message"]
    assert code == 4401
    browser = await live.open("/ws/v1/", cookie=cookie)  # the same cookie from a page: fine
    assert (await next_json(browser))["user"] == "alice"
    await browser.close()
    await live.assert_clean(cookie=cookie, tokens=tokens)
    live.assert_no_crash()


# Frames a hostile client can send: any text (escaped surrogates and NULs in JSON included),
# bytes sent as a text frame (often not UTF-8), binary frames, deep nesting, oversized frames,
# and requests of every kind with strange fields.
hostile_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40
) | st.sampled_from(["\x00", "\udfff", "\ud800x", "quotes:BTC\x00", "portfolio:1\x00"])
hostile_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=8,
)
hostile_frames = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80).map(
        lambda t: (t, None)
    ),
    st.binary(max_size=80).map(lambda b: (b, True)),
    st.binary(max_size=80).map(lambda b: (b, False)),
    st.integers(1, 3000).map(lambda n: ("[" * n + "]" * n, None)),
    st.integers(65_537, 140_000).map(lambda n: ("x" * n, None)),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                ["ping", "resync", "auth", "subscribe", "unsubscribe", "snapshot"]
            )
            | hostile_text,
            "id": hostile_values,
            "stream": hostile_values,
            "token": hostile_values,
            "max_rate": hostile_values,
        }
    ).map(lambda m: (json.dumps(m), None)),
    hostile_values.map(lambda v: (json.dumps(v), None)),
)


@pytest.fixture
def fuzz_keys(world):
    """alice's cookie and tokens, made once for all the examples of a hypothesis test."""
    from streaming import tokens

    alice = world["users"]["alice"]
    keys = [tokens.token_create(user=alice, name=f"fuzz {n}")[1] for n in range(API_LIMIT)]
    return session_cookie(alice), keys


@hypothesis_settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    endpoint=st.sampled_from(["/ws/portfolio/", "/ws/instrument/BTC-USD/", "/ws/v1/"]),
    batch=st.lists(hostile_frames, min_size=1, max_size=12),
)
def test_random_hostile_frames_through_daphne_leave_no_zombie(live, fuzz_keys, endpoint, batch):
    """Whatever a socket is sent, it ends in a documented way, and afterwards /metrics counts
    only the sockets still open and alice can open every socket she is allowed."""
    cookie, keys = fuzz_keys

    async def run() -> None:
        if endpoint == "/ws/v1/":
            ws = await live.open_api(keys[0])
        else:
            ws = await live.open_page(cookie, endpoint)
        try:
            for payload, text in batch:
                await ws.send(payload, text=text)
        except websockets.ConnectionClosed:
            pass  # refused by the WebSocket layer (not UTF-8, too large): dropped
        await ws.close()
        assert ws.close_code in (1000, 1006, 4009, 4429), ws.close_code
        await live.wait_open_sockets({})
        await live.assert_clean(cookie=cookie, tokens=keys)

    async_to_sync(run)()
    live.assert_no_crash()
