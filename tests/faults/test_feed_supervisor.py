"""The feed process killed: its supervisor starts it again; prices show as stale meanwhile."""

import asyncio
import json
import os
import re
import signal
import sys
import time
from datetime import UTC, datetime

from tests.faults.conftest import wait_until
from tests.faults.live import log_in, open_socket


def child_pids(supervisor) -> list[int]:
    return [
        int(p) for p in re.findall(r"feed simulated started \(pid (\d+)\)", supervisor.output())
    ]


def newest_quote(stack):
    return stack.sql("SELECT max(exchange_ts) FROM portfolio_quote")[0][0]


async def snapshot(socket) -> dict:
    await socket.send(json.dumps({"type": "resync"}))
    while True:
        message = json.loads(await asyncio.wait_for(socket.recv(), timeout=20))
        if message["type"] == "snapshot":
            return message


async def test_killed_feed_is_restarted_by_its_supervisor_and_prices_show_stale_meanwhile(stack):
    base = await asyncio.to_thread(stack.daphne, LIVEFOLIO_STALE_SECONDS="1")
    await asyncio.to_thread(stack.worker)
    supervisor = stack.spawn(
        "runfeed-supervisor",
        [sys.executable, "manage.py", "runfeed", "simulated", "--rate", "20", "--supervise"],
    )
    await asyncio.to_thread(
        wait_until, lambda: newest_quote(stack), timeout=40, what="first prices"
    )
    socket = await open_socket(base, await asyncio.to_thread(log_in, base, "alice"))
    first = json.loads(await socket.recv())
    assert first["type"] == "snapshot"
    # The first price stored may be another instrument's: the holding this test reads must have
    # its own before the feed is killed, or there is no price to go stale.
    deadline = time.monotonic() + 40
    while first["portfolios"][0]["holdings"][0]["price_as_of"] is None:
        assert time.monotonic() < deadline, "alice's first holding never got a price"
        await asyncio.sleep(0.2)
        first = await snapshot(socket)
    [first_child] = child_pids(supervisor)

    os.kill(first_child, signal.SIGKILL)
    killed_at = datetime.now(UTC)
    await asyncio.to_thread(supervisor.wait_for_output, "exited (-9); restarting in")
    # No feed runs (backoff, then a Django start-up): once the newest price is older than
    # LIVEFOLIO_STALE_SECONDS, the page is told it is stale.
    await asyncio.to_thread(
        wait_until,
        lambda: (datetime.now(UTC) - newest_quote(stack)).total_seconds() > 1.1,
        timeout=10,
        what="the last price to age past the stale limit",
    )
    stale = await snapshot(socket)
    holding = stale["portfolios"][0]["holdings"][0]
    assert datetime.fromisoformat(holding["price_as_of"]) < killed_at
    assert holding["stale"] is True

    pids = await asyncio.to_thread(
        wait_until, lambda: child_pids(supervisor)[1:], timeout=30, what="a restarted feed"
    )
    assert pids[0] != first_child
    await asyncio.to_thread(
        wait_until,
        lambda: newest_quote(stack) > killed_at,
        timeout=40,
        what="prices from the restarted feed",
    )
    # With a 1 s limit on a busy machine a snapshot can catch a price just past it: the page
    # must show the price fresh again soon after the feed is back, not necessarily at once.
    deadline = time.monotonic() + 20
    while True:
        fresh = await snapshot(socket)
        if fresh["portfolios"][0]["holdings"][0]["stale"] is False or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert fresh["portfolios"][0]["holdings"][0]["stale"] is False
    await socket.close()
    assert supervisor.stop() == 0
    assert "supervisor: feed simulated stopped" in supervisor.output()
