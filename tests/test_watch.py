"""The one timer that keeps every page socket's session and memberships current
(streaming.watch): sessions are checked in batches, lost group memberships and cap entries come
back, and a socket that has left is never put back into its groups."""

import asyncio
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.contrib.sessions.models import Session
from django.utils import timezone

from streaming import events, namespace, protocol
from streaming.flow import UserConnections
from streaming.watch import SocketWatch, session_owners
from tests.websocket import communicator, open_portfolio_page, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


async def open_as(user):
    comm, _, cookie = await open_portfolio_page(user)
    return comm, cookie.split("=", 1)[1]


def test_session_owners_reads_each_session_in_one_batch(world, django_assert_num_queries):
    alice, bob = world["users"]["alice"], world["users"]["bob"]
    live_a = session_cookie(alice).split("=", 1)[1]
    live_b = session_cookie(bob).split("=", 1)[1]
    expired = session_cookie(bob).split("=", 1)[1]
    Session.objects.filter(session_key=expired).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    with django_assert_num_queries(1):
        owners = session_owners([live_a, None, "no-such-session", expired, live_b])
    assert owners == [str(alice.id), None, None, None, str(bob.id)]


async def test_only_the_socket_whose_session_ended_is_closed(world, redis_client, settings):
    settings.LIVEFOLIO_SESSION_CHECK_SECONDS = 1
    alice, bob = world["users"]["alice"], world["users"]["bob"]
    (ending, key), (staying, _) = await open_as(alice), await open_as(bob)
    await database_sync_to_async(Session.objects.filter(session_key=key).delete)()
    error = await ending.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("error", "session_ended")
    assert await ending.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}
    await asyncio.sleep(2)  # more session checks: bob's socket stays open and served
    await staying.send_json_to({"type": "ping"})
    assert (await staying.receive_json_from(timeout=5))["type"] == "pong"
    await staying.disconnect()


async def test_a_lost_group_membership_and_cap_entry_come_back(world, redis_client, monkeypatch):
    monkeypatch.setattr(UserConnections, "REFRESH_SECONDS", 1)
    alice = world["users"]["alice"]
    comm, _ = await open_as(alice)
    prefix = namespace.redis_prefix()
    cap_key = f"{prefix}:conn:portfolio:user.{alice.id}"
    assert redis_client.zcard(cap_key) == 1
    redis_client.flushdb()  # as if Redis restarted empty
    await asyncio.sleep(2.5)
    assert redis_client.zcard(cap_key) == 1
    await get_channel_layer().group_send(
        events.user_group(alice.id),
        {"type": events.EVENT, "payload": protocol.pong()},
    )
    assert (await comm.receive_json_from(timeout=5))["type"] == "pong"
    await comm.disconnect()


class Socket:
    """A watched socket whose renewal blocks until released; records what it did."""

    def __init__(self, user_id: int) -> None:
        self.session_key = None
        self.user_id = user_id
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.renewed = 0

    async def renew(self) -> None:
        self.started.set()
        await self.release.wait()
        self.renewed += 1

    async def end_session(self) -> None:
        raise AssertionError("not checked in this test")


async def test_removing_a_socket_stops_its_renewal_in_flight(monkeypatch):
    monkeypatch.setattr(UserConnections, "REFRESH_SECONDS", 0.01)
    watch = SocketWatch()
    leaving, staying = Socket(1), Socket(2)
    watch.add(leaving)
    watch.add(staying)
    await asyncio.wait_for(leaving.started.wait(), 5)
    await watch.remove(leaving)  # its renewal is cancelled, and the socket is not renewed again
    leaving.release.set()
    staying.release.set()
    await asyncio.sleep(0.1)
    assert leaving.renewed == 0
    assert staying.renewed > 1
    await watch.remove(staying)
    await asyncio.wait_for(watch.task, 5)  # the timer stops when nothing is left to watch


async def test_sockets_closing_while_renewals_run_leave_no_cap_entry_or_group_member(
    world, redis_client, monkeypatch, layer_kind
):
    monkeypatch.setattr(UserConnections, "REFRESH_SECONDS", 0.01)  # renewing all the time
    alice = world["users"]["alice"]
    cookie = await database_sync_to_async(session_cookie)(alice)
    for _ in range(30):
        comm = communicator("/ws/portfolio/", cookie=cookie)
        assert (await comm.connect())[0]
        assert (await comm.receive_json_from())["type"] == "snapshot"
        await asyncio.sleep(0.02)  # a renewal or two of this socket
        await comm.disconnect()
    await asyncio.sleep(0.1)
    prefix = namespace.redis_prefix()
    assert redis_client.zcard(f"{prefix}:conn:portfolio:user.{alice.id}") == 0
    assert redis_client.zcard(f"{prefix}:group:{events.user_group(alice.id)}") == 0  # core layer
    group_channel = f"{prefix}__group__{events.user_group(alice.id)}"  # the pub/sub layer's
    assert redis_client.pubsub_numsub(group_channel) == [(group_channel.encode(), 0)]
