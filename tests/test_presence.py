"""Presence (streaming/flow.py, present()): a worker values only portfolios whose owners have a
socket open, and never skips one who does. Real Redis, the real ASGI app, the real ingest task."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async

from streaming import flow
from streaming.tasks import ingest_quotes
from tests import api
from tests.test_ingest import T0, deliveries, tick
from tests.websocket import as_sent, open_portfolio_page

pytestmark = pytest.mark.django_db(transaction=True)


def tracking_since(redis_client, seconds_ago: float) -> None:
    """Pretend presence has been collected for a while (as on any server up for a minute)."""
    now, _ = redis_client.time()
    redis_client.set(flow.presence_keys()[1], int(now - seconds_ago))


async def open_page(user):
    comm, snapshot, _ = await open_portfolio_page(user)
    return comm, snapshot


def ingest_committed(instrument, price, ts):
    """Ingest one tick as the worker does: valuations go out after the commit."""
    ingest_quotes([tick(instrument, price, ts)])


def test_an_open_portfolio_page_marks_its_user_and_only_them(world, redis_client):
    alice, bob = world["users"]["alice"], world["users"]["bob"]

    async def run():
        comm, _ = await open_page(alice)
        await sync_to_async(tracking_since)(redis_client, 3600)
        found = await sync_to_async(flow.present)([alice.id, bob.id])
        await comm.disconnect()
        return found

    assert async_to_sync(run)() == {alice.id}


def test_an_api_connection_marks_its_user(world, redis_client):
    bob = world["users"]["bob"]

    async def run():
        comm = await api.connect(bob)
        await sync_to_async(tracking_since)(redis_client, 3600)
        found = await sync_to_async(flow.present)([bob.id, world["users"]["alice"].id])
        await comm.disconnect()
        return found

    assert async_to_sync(run)() == {bob.id}


def test_a_mark_counts_for_one_ttl_and_closing_a_socket_does_not_remove_it(world, redis_client):
    alice, charlie = world["users"]["alice"], world["users"]["charlie"]

    async def run():
        comm, _ = await open_page(alice)
        await comm.disconnect()  # maybe not her last tab: the mark stays until it expires

    async_to_sync(run)()
    tracking_since(redis_client, 3600)
    assert flow.present([alice.id]) == {alice.id}
    now, _ = redis_client.time()
    key = flow.presence_keys()[0]
    redis_client.zadd(key, {str(alice.id): now - flow.presence_ttl() - 1})  # last seen too long ago
    redis_client.zadd(key, {str(charlie.id): now - flow.presence_ttl() + 5})
    assert flow.present([alice.id, charlie.id]) == {charlie.id}


def test_presence_is_unknown_while_tracking_is_younger_than_a_ttl(world, redis_client):
    """After a Redis restart the marks come back one renewal at a time: until every open socket
    has renewed, a missing mark proves nothing, so everyone is valued."""
    alice, bob = world["users"]["alice"], world["users"]["bob"]

    async def run():
        comm, _ = await open_page(alice)
        found = await sync_to_async(flow.present)([alice.id, bob.id])
        await comm.disconnect()
        return found

    assert async_to_sync(run)() is None  # tracking began with this connection
    tracking_since(redis_client, flow.presence_ttl() - 5)
    assert flow.present([alice.id, bob.id]) is None
    tracking_since(redis_client, flow.presence_ttl() + 1)
    assert flow.present([alice.id, bob.id]) == {alice.id}


def test_presence_is_unknown_without_redis(world, redis_client, settings):
    settings.REDIS_URL = ""  # the embedded default: one process, nobody to ask
    flow.redis_sync.cache_clear()
    try:
        assert flow.present([world["users"]["alice"].id]) is None
    finally:
        flow.redis_sync.cache_clear()


def test_ingest_values_only_watched_portfolios_and_a_newcomer_misses_nothing(world, redis_client):
    alice, charlie = world["users"]["alice"], world["users"]["charlie"]
    btc = world["btc"]

    async def run():
        page, _ = await open_page(alice)
        await sync_to_async(tracking_since)(redis_client, 3600)
        # Both hold BTC; only alice watches: only her portfolio is valued and published.
        first = await sync_to_async(deliveries)(
            {"alice": alice, "charlie": charlie},
            lambda: ingest_committed(btc, "50000.10", T0),
        )
        # charlie opens the page after that tick: his snapshot already has its price ...
        late, snapshot = await open_page(charlie)
        # ... and from now on he is valued like alice.
        second = await sync_to_async(deliveries)(
            {"alice": alice, "charlie": charlie},
            lambda: ingest_committed(btc, "50001.00", T0 + timedelta(seconds=1)),
        )
        for comm in (page, late):
            await comm.disconnect()
        return first, snapshot, second

    first, snapshot, second = async_to_sync(run)()
    assert [as_sent(m)["portfolio"]["total"] for m in first["alice"]] == ["100000.20"]
    assert first["charlie"] == []
    assert snapshot["portfolios"][0]["total"] == "150000.30"  # 3 x 50000.10
    assert [as_sent(m)["portfolio"]["total"] for m in second["alice"]] == ["100002.00"]
    assert [as_sent(m)["portfolio"]["total"] for m in second["charlie"]] == ["150003.00"]


def test_everyone_is_valued_when_redis_lost_the_marks(world, redis_client):
    users = {"alice": world["users"]["alice"], "charlie": world["users"]["charlie"]}
    btc = world["btc"]
    tracking_since(redis_client, 3600)
    skipped = deliveries(users, lambda: ingest_committed(btc, "50000.10", T0))
    assert skipped == {"alice": [], "charlie": []}  # nobody watching: nothing valued
    redis_client.flushdb()  # a Redis restart that kept nothing: presence unknown
    later = T0 + timedelta(seconds=1)
    got = deliveries(users, lambda: ingest_committed(btc, "50001.00", later))
    assert [as_sent(m)["portfolio"]["total"] for m in got["alice"]] == ["100002.00"]
    assert [as_sent(m)["portfolio"]["total"] for m in got["charlie"]] == ["150003.00"]
