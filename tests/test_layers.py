"""Both channel layers on the real Redis (Livefolio's pub/sub layer, the default, and
channels-redis' core layer): batched sends keep order per group and per connection, and an idle
connection keeps receiving. The pub/sub layer's own faults: a lost subscription fails every local
channel it carried (their sockets close with 4503), and a channel nobody reads stays bounded."""

import asyncio
import json
import logging
import uuid

import pytest
import redis
import websockets
from channels.db import aclose_old_connections, database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from streaming import events, namespace, protocol
from streaming.patches.layers import PubSubChannelLayer, SubscriptionLost, forget_channel
from tests.conftest import configured_layer, free_port
from tests.websocket import as_sent, communicator, open_portfolio_page, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


def numbered(n: int, portfolio: int = 1) -> dict:
    """A valuation whose total carries its position in the batch."""
    return protocol.valuation(portfolio={"id": portfolio, "total": f"{n}.00"})


def connection_name() -> str:
    """A Redis client name no other test run uses: a test cuts exactly its own connection."""
    return f"livefolio-test-{uuid.uuid4().hex}"


def cut_subscription(redis_client, name: str) -> None:
    """Close, from the Redis side, the subscription connection named ``name`` (as a Redis
    restart does), and only it: other test runs share this Redis."""
    ids = [c["id"] for c in redis_client.client_list(_type="pubsub") if c["name"] == name]
    assert len(ids) == 1, f"expected one subscription connection named {name}, found {ids}"
    redis_client.client_kill_filter(_id=ids[0])


def subscribers(redis_client, channel: str) -> int:
    return dict(redis_client.pubsub_numsub(channel))[channel.encode()]


async def wait_until(predicate, what: str) -> None:
    for _ in range(100):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within 5 s: {what}")


async def test_a_batch_reaches_each_group_whole_and_in_publish_order(
    world, redis_client, layer_kind
):
    layer = get_channel_layer()
    alice_group = events.user_group(world["users"]["alice"].id)
    bob_group = events.user_group(world["users"]["bob"].id)
    alice, bob = await layer.new_channel(), await layer.new_channel()
    await layer.group_add(alice_group, alice)
    await layer.group_add(bob_group, bob)
    # Interleaved, as a Celery task sends one window's valuations for many users.
    batch = [(group, numbered(n)) for n in range(50) for group in (alice_group, bob_group)]
    await events.apublish(batch)
    for channel in (alice, bob):
        got = [await asyncio.wait_for(layer.receive(channel), timeout=5) for _ in range(50)]
        assert [as_sent(m)["portfolio"]["total"] for m in got] == [f"{n}.00" for n in range(50)]
    await layer.group_discard(alice_group, alice)
    await layer.group_discard(bob_group, bob)


async def test_a_batch_arrives_on_the_socket_with_consecutive_seq_in_publish_order(
    world, redis_client, layer_kind
):
    cookie = await database_sync_to_async(session_cookie)(world["users"]["alice"])
    comm = communicator("/ws/portfolio/", cookie=cookie)
    connected, _ = await comm.connect()
    assert connected
    assert (await comm.receive_json_from())["seq"] == 1
    group = events.user_group(world["users"]["alice"].id)
    # One valuation per portfolio, so the consumer's per-portfolio conflation holds none back.
    await events.apublish([(group, numbered(n, portfolio=1000 + n)) for n in range(30)])
    frames = [await comm.receive_json_from(timeout=5) for _ in range(30)]
    assert [f["seq"] for f in frames] == list(range(2, 32))
    assert [f["portfolio"]["total"] for f in frames] == [f"{n}.00" for n in range(30)]
    await comm.disconnect()


@pytest.mark.stack
async def test_an_idle_socket_still_gets_updates_after_a_minute(world, daphne_server):
    # The idle-consumer pitfall (DESIGN.md): a read timeout on the layer's Redis connection
    # once killed consumers silently after 5 s of silence while their sockets stayed open.
    cookie = await database_sync_to_async(session_cookie)(world["users"]["alice"])
    url = daphne_server.replace("http://", "ws://") + "/ws/portfolio/"
    headers = {"Origin": daphne_server, "Cookie": cookie}
    async with websockets.connect(url, additional_headers=headers) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "snapshot"
        await asyncio.sleep(65)
        group = events.user_group(world["users"]["alice"].id)
        await events.apublish([(group, numbered(7))])
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert (message["type"], message["seq"]) == ("valuation", 2)
        assert message["portfolio"]["total"] == "7.00"


def test_publishing_from_sync_code_keeps_one_connection_and_survives_redis_dropping_it(
    layer_kind, redis_client
):
    """A Celery worker publishes from a thread without an event loop (streaming/events.py):
    one kept connection for every publish, and a fresh one when Redis dropped it."""
    db = redis_client.connection_pool.connection_kwargs.get("db", 0)

    def connections() -> set[int]:
        me = redis_client.client_id()
        return {
            int(c["id"])
            for c in redis_client.client_list()
            if int(c["db"]) == db and int(c["id"]) != me
        }

    async def run():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add("publish.test", channel)
        listening = connections()
        for n in (1, 2):
            await database_sync_to_async(events.publish)([("publish.test", numbered(n))])
        publishing = connections() - listening
        assert len(publishing) == 1
        for client_id in publishing:
            redis_client.client_kill_filter(_id=client_id)
        await database_sync_to_async(events.publish)([("publish.test", numbered(3))])
        got = [await asyncio.wait_for(layer.receive(channel), timeout=5) for _ in range(3)]
        return [as_sent(m)["portfolio"]["total"] for m in got]

    from asgiref.sync import async_to_sync

    assert async_to_sync(run)() == ["1.00", "2.00", "3.00"]


@pytest.mark.parametrize(
    "retries", [0, 3], ids=["reconnected-by-the-receive-loop", "reconnected-by-redis-py-retries"]
)
async def test_pubsub_a_lost_subscription_fails_every_local_channel_and_none_is_renewed(
    redis_client, retries
):
    # With retries, redis-py reconnects and re-subscribes inside the read, raising nothing: the
    # messages published while the connection was gone are lost all the same.
    name = connection_name()
    host = {"address": settings.REDIS_URL, "socket_timeout": None, "client_name": name}
    layer = PubSubChannelLayer(
        hosts=[host | {"retry": Retry(NoBackoff(), retries)}],
        prefix=namespace.redis_prefix(),
    )
    alone, grouped = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("everyone", grouped)
    await layer.send(alone, {"type": "hello"})
    await layer.group_send("everyone", {"type": "hello"})
    for channel in (alone, grouped):
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "hello"
    waiting = [asyncio.ensure_future(layer.receive(c)) for c in (alone, grouped)]
    await asyncio.sleep(0.2)

    cut_subscription(redis_client, name)

    for receive in waiting:
        with pytest.raises(SubscriptionLost):
            await asyncio.wait_for(receive, 5)
    # The lost channels' subscriptions are not renewed on the new connection (they would stay
    # forever: their consumers are gone).
    group_channel = f"{namespace.redis_prefix()}__group__everyone"
    for channel in (alone, group_channel):
        await wait_until(lambda c=channel: subscribers(redis_client, c) == 0, f"{channel} left")
    # A consumer that connects now is served.
    fresh = await layer.new_channel()
    await layer.group_add("everyone", fresh)
    await layer.group_send("everyone", {"type": "after"})
    assert (await asyncio.wait_for(layer.receive(fresh), 5))["type"] == "after"
    await layer.flush()


async def test_pubsub_a_socket_whose_subscription_is_lost_closes_with_4503(world, redis_client):
    name = connection_name()
    with configured_layer("pubsub", client_name=name):
        comm, _snapshot, _cookie = await open_portfolio_page(world["users"]["alice"])
        cut_subscription(redis_client, name)
        closed = await comm.receive_output(timeout=5)
        assert closed == {"type": "websocket.close", "code": protocol.CLOSE_TRY_AGAIN_LATER}
        await comm.wait()
        await get_channel_layer().flush()
    # The consumer ended on an error, so no handler closed its thread's database connection
    # (Channels does before each one): close it, or the test database cannot be dropped.
    await aclose_old_connections()


async def test_pubsub_a_channel_nobody_reads_keeps_only_the_newest_capacity_messages(
    redis_client,
):
    layer = PubSubChannelLayer(
        hosts=settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"],
        prefix=namespace.redis_prefix(),
        capacity=5,
    )
    idle, marker = await layer.new_channel(), await layer.new_channel()
    for n in range(20):
        await layer.send(idle, {"type": "n", "n": n})
    # One connection carries both channels in order: once the marker is in, so are all 20.
    await layer.send(marker, {"type": "marker"})
    await asyncio.wait_for(layer.receive(marker), 5)
    got = [(await asyncio.wait_for(layer.receive(idle), 5))["n"] for _ in range(5)]
    assert got == [15, 16, 17, 18, 19]
    await layer.flush()


async def test_pubsub_sockets_refused_while_redis_is_down_leave_no_channel_behind():
    # Nothing listens there: Redis is down. Each refused socket's channel would otherwise stay
    # in the layer for good (no receive ever comes to clean it up).
    layer = PubSubChannelLayer(hosts=[f"redis://127.0.0.1:{free_port()}/0"], prefix="down")
    for _ in range(3):
        with pytest.raises(redis.ConnectionError):
            await layer.new_channel()
    assert layer.channels == {}
    await layer.flush()


async def test_pubsub_messages_are_not_formatted_for_redis_pys_debug_log(caplog):
    # redis-py 8.1 reads a RESP3 subscription's messages through a push handler that formats
    # each whole message for a debug line, whatever the log level (redis/redis-py#4230): a cost
    # per message that grows with its size. The layer hands
    # its subscriptions a handler of its own; with debug on here, the default would log.
    layer = PubSubChannelLayer(
        hosts=settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"],
        prefix=namespace.redis_prefix(),
    )
    channel = await layer.new_channel()
    await layer.group_add("everyone", channel)
    with caplog.at_level(logging.DEBUG, logger="push_response"):
        await layer.send(channel, {"type": "alone"})
        await layer.group_send("everyone", {"type": "grouped", "body": "x" * 10_000})
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "alone"
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "grouped"
    assert [r.getMessage()[:40] for r in caplog.records if r.name == "push_response"] == []
    await layer.flush()


async def test_pubsub_a_publish_cut_off_before_its_replies_closes_its_connection(redis_client):
    # group_send_many writes a batch's PUBLISH commands and reads the replies itself
    # (streaming/patches/layers.py). Cut off in between (a timeout, a cancelled task), its
    # connection still has replies coming: back in the pool, the next batch would read those as
    # its own. It must be closed instead, and the next batch go through whole and in order.
    name = connection_name()
    layer = PubSubChannelLayer(
        hosts=[settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0] | {"client_name": name}],
        prefix=namespace.redis_prefix(),
    )
    channel = await layer.new_channel()
    await layer.group_add("cut", channel)

    def publishing() -> list[dict]:  # the layer's connections other than its subscription
        return [c for c in redis_client.client_list() if c["name"] == name and c["sub"] == "0"]

    batch = [("cut", {"type": "n", "n": n}) for n in range(3)]
    await layer.group_send_many(batch)
    assert [(await asyncio.wait_for(layer.receive(channel), 5))["n"] for _ in batch] == [0, 1, 2]
    assert len(publishing()) == 1  # kept for the next batch: it read every reply

    redis_client.client_pause(1000, all=False)  # PUBLISH waits: no reply comes for a second
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(layer.group_send_many(batch), 0.2)
    finally:
        redis_client.client_unpause()
    await wait_until(lambda: not publishing(), "the cut-off batch's connection closed")

    await layer.group_send_many([("cut", {"type": "n", "n": n}) for n in (10, 11, 12)])
    got = []
    while got[-3:] != [10, 11, 12]:
        got.append((await asyncio.wait_for(layer.receive(channel), 5))["n"])
    assert got[:-3] in ([], [0, 1, 2])  # the cut-off batch arrives whole or not at all
    await layer.flush()


async def test_pubsub_a_batch_redis_refuses_part_of_closes_its_connection(redis_client):
    # An ACL may refuse a channel: PUBLISH answers NOPERM and the batch's later replies are still
    # on the connection. Kept, the next batch would read those as its own; it must be closed.
    name = connection_name()
    password = uuid.uuid4().hex
    host = settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]
    prefix = namespace.redis_prefix()
    redis_client.acl_setuser(
        name, enabled=True, passwords=[f"+{password}"], commands=["+@all"], keys=["*"],
        reset_channels=True, channels=[f"{prefix}__group__allowed*"],
    )  # fmt: skip
    try:
        sender = PubSubChannelLayer(
            hosts=[host | {"username": name, "password": password, "client_name": name}],
            prefix=prefix,
        )
        receiver = PubSubChannelLayer(hosts=[host], prefix=prefix)
        channel = await receiver.new_channel()
        await receiver.group_add("allowed", channel)

        def publishing() -> list[dict]:
            return [c for c in redis_client.client_list() if c["name"] == name]

        await sender.group_send_many([("allowed", {"type": "n", "n": 0})])
        assert len(publishing()) == 1
        batch = [("refused", {"type": "n", "n": 1}), ("allowed", {"type": "n", "n": 2})]
        with pytest.raises(redis.exceptions.NoPermissionError):
            await sender.group_send_many(batch)
        await wait_until(lambda: not publishing(), "the refused batch's connection closed")
        await sender.group_send_many([("allowed", {"type": "n", "n": 3})])
        got = [(await asyncio.wait_for(receiver.receive(channel), 5))["n"] for _ in range(3)]
        assert got == [0, 2, 3]
        await sender.flush()
        await receiver.flush()
    finally:
        redis_client.acl_deluser(name)


async def test_pubsub_a_group_message_is_decoded_once_and_handed_to_each_members_listener(
    redis_client,
):
    """listen(): each member's listener gets the message as it arrives, decoded once for the
    whole group (the same object); one that declines gets it queued for receive, and a member
    with a message queued gets the next one queued behind it, in order."""
    layer = PubSubChannelLayer(
        hosts=settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"],
        prefix=namespace.redis_prefix(),
    )
    decoded = []
    deserialize = layer.deserialize
    layer.deserialize = lambda data: decoded.append(deserialize(data)) or decoded[-1]
    took, declined, queued_first = [await layer.new_channel() for _ in range(3)]
    handed = {took: [], declined: [], queued_first: []}

    def listener(channel, answer):
        def hand(message):
            handed[channel].append(message)
            return answer

        return hand

    for channel in (took, declined, queued_first):
        await layer.group_add("g", channel)
    await layer.send(queued_first, {"type": "own", "n": 0})  # before listening: queued
    await wait_until(lambda: not layer.channels[queued_first].empty(), "the own message queued")
    reading = asyncio.ensure_future(layer.receive(took))  # a reader, as a consumer's loop has
    await asyncio.sleep(0.05)
    layer.listen(took, listener(took, True))
    layer.listen(declined, listener(declined, False))
    layer.listen(queued_first, listener(queued_first, True))
    await layer.group_send("g", {"type": "g", "n": 1})
    await layer.group_send("g", {"type": "g", "n": 2})
    await asyncio.sleep(0.1)  # both group messages are in
    got = [await asyncio.wait_for(layer.receive(declined), 5) for _ in range(2)]
    assert [m["n"] for m in got] == [1, 2]
    assert [m["n"] for m in handed[took]] == [1, 2] and not reading.done()
    # Offered, declined, queued; the next one then queues behind it without an offer.
    assert [m["n"] for m in handed[declined]] == [1]
    first_group_message = decoded[-2]
    assert handed[took][0] is first_group_message and got[0] is first_group_message
    assert len(decoded) == 3  # the own message and the two group messages, once each
    # Something of its own was queued: not offered, queued behind it in order.
    assert handed[queued_first] == []
    got = [await asyncio.wait_for(layer.receive(queued_first), 5) for _ in range(3)]
    assert [m["n"] for m in got] == [0, 1, 2]
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert took not in layer.listeners  # a cancelled receive is a channel that ended
    forget_channel(layer, declined)
    assert declined not in layer.listeners
    await layer.flush()
