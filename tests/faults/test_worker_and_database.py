"""A Celery worker SIGKILLed in the middle of an ingest batch; PostgreSQL restarted under ingest."""

import asyncio
import json
import signal
from datetime import UTC, datetime

from tests.faults.conftest import wait_until
from tests.faults.live import LiveClient, eventually, log_in, open_socket


def tick(instrument_id: int, price: str) -> dict:
    return {
        "instrument": instrument_id,
        "price": price,
        "ts": datetime.now(UTC).isoformat(),
        "received": datetime.now(UTC).isoformat(),
        "source": "simulated",
    }


def stored_price(stack, instrument_id):
    rows = stack.sql("SELECT price FROM portfolio_quote WHERE instrument_id = %s", instrument_id)
    return format(rows[0][0].normalize(), "f") if rows else None


def ingest_runs(stack) -> int:
    return int(stack.redis.client().hget("lf-faults:ingest", "batches") or 0)


async def test_worker_killed_mid_batch_the_batch_runs_again_once_with_no_double_effect(stack):
    world = stack.world
    base = await asyncio.to_thread(stack.daphne)
    cookie = await asyncio.to_thread(log_in, base, "alice")
    socket = await open_socket(base, cookie)
    assert json.loads(await socket.recv())["type"] == "snapshot"
    # The configured visibility timeout (settings: short enough that a killed worker's batch
    # runs again within seconds, not minutes).
    first = await asyncio.to_thread(stack.worker, "first-worker")

    # Hold the quote table so the worker is stuck inside the task when we kill it.
    with stack.postgres.connect() as blocker:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE portfolio_quote IN EXCLUSIVE MODE")
        await asyncio.to_thread(stack.send_batch, [tick(world["btc"], "777")])
        await asyncio.to_thread(
            wait_until,
            lambda: stack.sql(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%%INSERT INTO%%portfolio_quote%%'"
            ),
            timeout=30,
            what="the worker to be inside the ingest task",
        )
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        blocker.execute("ROLLBACK")

    assert stored_price(stack, world["btc"]) is None  # the killed attempt committed nothing
    await asyncio.to_thread(stack.worker, "second-worker")
    await asyncio.to_thread(
        wait_until,
        lambda: stored_price(stack, world["btc"]) == "777",
        timeout=60,  # the visibility timeout and a restore sweep; a fifth of the old 300 s
        what="the redelivered batch to be stored",
    )
    valuation = json.loads(await asyncio.wait_for(socket.recv(), timeout=20))
    assert (valuation["type"], valuation["portfolio"]["total"]) == ("valuation", "1554.00")
    await asyncio.sleep(3)  # long enough for a second delivery to show up
    assert ingest_runs(stack) == 1  # completed exactly once
    try:
        extra = await asyncio.wait_for(socket.recv(), timeout=0.5)
    except TimeoutError:
        extra = None
    assert extra is None, f"a second effect reached the client: {extra}"
    await socket.close()


async def test_postgres_restart_ingest_retries_with_backoff_loses_no_batch_and_pages_recover(
    stack,
):
    world = stack.world
    base = await asyncio.to_thread(stack.daphne)
    worker = await asyncio.to_thread(stack.worker)
    alice = LiveClient(base, await asyncio.to_thread(log_in, base, "alice")).start()
    bob = LiveClient(base, await asyncio.to_thread(log_in, base, "bob")).start()
    await asyncio.to_thread(stack.send_batch, [tick(world["btc"], "100")])
    await eventually(
        lambda: alice.total(world["portfolios"]["alice"]) == "200.00",
        timeout=30,
        what="alice sees 200.00 before the restart",
    )

    await asyncio.to_thread(stack.postgres.stop)
    await asyncio.to_thread(stack.send_batch, [tick(world["btc"], "150")])
    await asyncio.to_thread(stack.send_batch, [tick(world["eth"], "40")])
    # Both batches fail against the stopped database and come back as retries (with backoff).
    await asyncio.to_thread(
        wait_until,
        lambda: worker.output().count("ingest_quotes[") >= 6,
        timeout=30,
        what="the worker to retry the batches",
    )
    await asyncio.to_thread(stack.postgres.start)

    await eventually(
        lambda: alice.total(world["portfolios"]["alice"]) == "300.00",
        timeout=60,
        what="alice sees the batch sent while PostgreSQL was down",
    )
    await eventually(
        lambda: bob.total(world["portfolios"]["bob"]) == "400.00",
        timeout=60,
        what="bob sees the other batch sent while PostgreSQL was down",
    )
    assert stored_price(stack, world["btc"]) == "150"
    assert stored_price(stack, world["eth"]) == "40"
    # A page opened after the restart gets a correct snapshot.
    charlie = LiveClient(base, await asyncio.to_thread(log_in, base, "charlie")).start()
    await eventually(
        lambda: charlie.total(world["portfolios"]["charlie"]) == "450.00",
        timeout=30,
        what="a new page shows charlie's value after the restart",
    )
    for client in (alice, bob, charlie):
        await client.stop()
    for process in stack.processes:
        assert process.proc.poll() is None, f"{process.name} died:\n{process.output()}"
