"""Redis (channel layer and Celery broker) killed and restarted empty while prices stream."""

import asyncio
import sys
from datetime import UTC, datetime

from tests.faults.conftest import on_each_channel_layer
from tests.faults.live import ApiLiveClient, LiveClient, eventually, log_in


def quote_of(stack, instrument_id):
    rows = stack.sql(
        "SELECT price, exchange_ts FROM portfolio_quote WHERE instrument_id = %s", instrument_id
    )
    return rows[0] if rows else None


def shows_the_stored_price(client, stack, portfolio_id, instrument_id, since) -> bool:
    """The client's holding shows exactly the stored quote, and it is newer than ``since``."""
    state = client.portfolios.get(portfolio_id)
    stored = quote_of(stack, instrument_id)
    if not state or not stored or not state["holdings"][0]["price_as_of"]:
        return False
    holding = state["holdings"][0]
    shown_at = datetime.fromisoformat(holding["price_as_of"])
    return (
        shown_at > since
        and abs((shown_at - stored[1]).total_seconds()) < 0.001
        and holding["price"] == format(stored[0].normalize(), "f")
    )


@on_each_channel_layer
async def test_redis_killed_and_restarted_empty_every_client_is_correct_again_within_10s(stack):
    world = stack.world
    base = await asyncio.to_thread(stack.daphne)
    worker = await asyncio.to_thread(stack.worker)
    feed = stack.spawn(
        "runfeed",
        [sys.executable, "manage.py", "runfeed", "simulated", "--rate", "2"],
    )
    await asyncio.to_thread(feed.wait_for_output, "feed simulated: started")
    clients = {
        name: LiveClient(base, await asyncio.to_thread(log_in, base, name)).start()
        for name in ("alice", "bob", "charlie")
    }
    # A bot on API v1 follows alice's portfolio beside the three pages.
    clients["alice's bot"] = ApiLiveClient(
        base, world["api_token"], world["portfolios"]["alice"]
    ).start()
    holds = {"alice": world["btc"], "bob": world["eth"], "charlie": world["btc"]}
    holds["alice's bot"] = world["btc"]
    portfolio_of = {name: world["portfolios"][name] for name in ("alice", "bob", "charlie")}
    portfolio_of["alice's bot"] = world["portfolios"]["alice"]
    start = datetime.now(UTC)
    for name, client in clients.items():
        await eventually(
            lambda c=client, n=name: shows_the_stored_price(
                c, stack, portfolio_of[n], holds[n], start
            ),
            timeout=30,
            what=f"{name} sees live prices before the fault",
        )

    stack.redis.kill()
    # Told at once, while Redis is still down, to come back (4503, docs/protocol.md): no socket
    # is left open on a channel layer that can no longer reach it.
    await eventually(
        lambda: all(4503 in client.closes for client in clients.values()),
        timeout=5,
        what="every client closed with 4503 while Redis is down",
    )
    await asyncio.to_thread(stack.redis.start)
    restarted = datetime.now(UTC)

    for name, client in clients.items():
        await eventually(
            lambda c=client, n=name: shows_the_stored_price(
                c, stack, portfolio_of[n], holds[n], restarted
            ),
            timeout=10,
            what=f"{name} shows the stored, post-restart price",
        )
    for name, client in clients.items():
        assert [p for p in client.portfolios] == [portfolio_of[name]]
    for process in stack.processes:
        assert process.proc.poll() is None, f"{process.name} died:\n{process.output()}"
    for client in clients.values():
        await client.stop()
    assert worker.proc.poll() is None
    for name, client in clients.items():
        await client.stop()
        # Told to come back (4503, docs/protocol.md), not dropped without a word.
        assert 4503 in client.closes, f"{name}: {client.closes}"
    assert "Exception inside application" not in stack.processes[0].output()
