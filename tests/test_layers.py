"""Both channel layers on the real Redis (channels-redis' core layer, the default, and Livefolio's
pub/sub layer, opt-in): batched sends keep order per group and per connection, and an idle
connection keeps receiving."""

import asyncio
import json

import pytest
import websockets
from channels.db import database_sync_to_async
from channels.layers import channel_layers, get_channel_layer
from django.conf import settings

from streaming import events, protocol
from tests.websocket import as_sent, communicator, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


def numbered(n: int, portfolio: int = 1) -> dict:
    """A valuation whose total carries its position in the batch."""
    return protocol.valuation(portfolio={"id": portfolio, "total": f"{n}.00"})


@pytest.fixture(params=["core", "pubsub"])
def layer_kind(request):
    """Run the test on each channel layer Livefolio can be configured with."""
    config = dict(settings.CHANNEL_LAYERS["default"]["CONFIG"])
    if request.param == "pubsub":
        config.pop("capacity", None)
        config.pop("expiry", None)
    layers = {
        "default": {"BACKEND": settings.CHANNEL_LAYER_BACKENDS[request.param], "CONFIG": config}
    }
    saved_settings, saved_backends = settings.CHANNEL_LAYERS, dict(channel_layers.backends)
    settings.CHANNEL_LAYERS = layers
    channel_layers.backends.clear()
    yield request.param
    settings.CHANNEL_LAYERS = saved_settings
    channel_layers.backends.clear()
    channel_layers.backends.update(saved_backends)


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
