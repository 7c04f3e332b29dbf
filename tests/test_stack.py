"""End to end through real processes: a Celery worker on Redis and PostgreSQL, the feed process."""

import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from channels.db import database_sync_to_async
from django.db import connection

from portfolio.models import Quote
from streaming.tasks import ingest_quotes
from tests.conftest import ROOT, Process, stack_env, start_worker
from tests.websocket import communicator, session_cookie

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]


async def connect(user):
    cookie = await database_sync_to_async(session_cookie)(user)
    comm = communicator("/ws/portfolio/", cookie=cookie)
    connected, _ = await comm.connect()
    assert connected
    assert (await comm.receive_json_from())["type"] == "snapshot"
    return comm


async def test_worker_ingest_reaches_each_owner_with_only_their_numbers(world, celery_worker):
    alice = await connect(world["users"]["alice"])
    bob = await connect(world["users"]["bob"])
    charlie = await connect(world["users"]["charlie"])

    # Through the broker to the worker process: nothing runs in this process.
    ingest_quotes.delay(
        [
            {
                "instrument": world["btc"].id,
                "price": "61234.5",
                "ts": datetime.now(UTC).isoformat(),
                "source": "simulated",
            }
        ]
    )

    got_alice = await alice.receive_json_from(timeout=20)
    got_charlie = await charlie.receive_json_from(timeout=20)
    assert got_alice["type"] == got_charlie["type"] == "valuation"
    assert got_alice["portfolio"]["id"] == world["portfolios"]["alice"].id
    assert got_alice["portfolio"]["total"] == "122469.00"  # 2 x 61234.5
    assert got_charlie["portfolio"]["id"] == world["portfolios"]["charlie"].id
    assert got_charlie["portfolio"]["total"] == "183703.50"  # 3 x 61234.5
    assert await bob.receive_nothing(timeout=2)
    assert await alice.receive_nothing(timeout=0.5)  # exactly one valuation, no leak of charlie's
    price = await database_sync_to_async(lambda: Quote.objects.get(instrument=world["btc"]).price)()
    assert str(price) == "61234.5000000000"
    for comm in (alice, bob, charlie):
        await comm.disconnect()


def test_runfeed_streams_simulated_prices_through_the_worker_and_exits_cleanly_on_sigterm(
    world, celery_worker, tmp_path
):
    feed = Process(
        "runfeed",
        [
            sys.executable,
            "manage.py",
            "runfeed",
            "simulated",
            "--seed",
            "7",
            "--rate",
            "50",
        ],
        stack_env(),
        tmp_path,
    )
    try:
        feed.wait_for_output("feed simulated: started")
        deadline = time.monotonic() + 30
        while Quote.objects.count() < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        first = {q.instrument_id: q.exchange_ts for q in Quote.objects.all()}
        assert set(first) == {world["btc"].id, world["eth"].id}
        while time.monotonic() < deadline:
            later = {q.instrument_id: q.exchange_ts for q in Quote.objects.all()}
            if all(later[i] > first[i] for i in first):
                break
            time.sleep(0.2)
        assert all(later[i] > first[i] for i in first), "prices stopped moving"
    finally:
        code = feed.stop()
    assert code == 0, feed.output()
    assert "feed simulated: exited cleanly" in feed.output()


def test_runfeed_with_an_unknown_feed_names_the_known_ones():
    result = subprocess.run(
        [sys.executable, "manage.py", "runfeed", "nasdaq"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert (
        "unknown feed 'nasdaq'; known feeds: simulated, replay, binance, coinbase, kraken, ccxt"
        in (result.stderr)
    )


def worker_sessions(app_name: str) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [app_name])
        return sorted(pid for (pid,) in cursor.fetchall())


def wait_until(condition, what: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def test_a_worker_keeps_its_database_session_between_tasks_and_replaces_a_broken_one(
    world, redis_client, tmp_path
):
    """Celery's Django fixup would open a new PostgreSQL session for every task (an ingest
    batch: several a second); the worker keeps one as Django keeps one between requests,
    replaces one the server ended, and drops it after a task that failed."""
    app = "livefolio-test-worker"
    worker = start_worker(tmp_path, PGAPPNAME=app)

    def ingest(price):
        ingest_quotes.delay(
            [
                {
                    "instrument": world["btc"].id,
                    "price": price,
                    "ts": datetime.now(UTC).isoformat(),
                    "source": "simulated",
                }
            ]
        )
        wait_until(
            lambda: Quote.objects.filter(instrument=world["btc"], price=price).exists(),
            f"{price} stored",
        )

    try:
        ingest("100")
        first = wait_until(lambda: worker_sessions(app), "the worker's session")
        assert len(first) == 1
        ingest("101")
        ingest("102")
        assert worker_sessions(app) == first  # the same session for every task
        # The server ends the session between two tasks (a restart, an idle timeout): the next
        # batch is stored on a new one (found gone by the check before reuse; without the
        # check, the attempt would fail, close it and succeed when retried).
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", first)
        wait_until(lambda: not worker_sessions(app), "the session to end")
        ingest("103")
        second = worker_sessions(app)
        assert len(second) == 1 and second != first
        ingest_quotes.delay(123)  # a task that fails (a batch that is not a list)
        wait_until(lambda: "raised unexpected" in worker.output(), "the task to fail")
        wait_until(lambda: not worker_sessions(app), "the failed task's session to close")
        ingest("104")
    finally:
        worker.stop()
