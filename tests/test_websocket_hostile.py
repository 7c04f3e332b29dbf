"""Hostile clients on /ws/portfolio/: ended sessions, floods, too many sockets, random frames.
Each is refused or answered with a documented error; everyone else keeps being served."""

import asyncio
import json
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.websocket import communicator, session_cookie

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
