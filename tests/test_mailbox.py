"""The ingest mailbox (streaming/mailbox.py): a feed's ticks wait in Redis, newest per instrument,
for the one ingest task that is queued or running; the task takes them all, and hands the mailbox
on so that no tick is ever stranded. Real Redis and PostgreSQL; the task runs in this process as
the worker would run it (the end-to-end run with a worker process is tests/test_stack.py's
runfeed test and tests/test_valuation_order.py)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings

from portfolio.models import AssetClass, FeedKind, Instrument, Quote
from streaming import mailbox
from streaming.tasks import ingest_quotes
from tests.test_ingest import T0, tick

pytestmark = pytest.mark.django_db(transaction=True)


def post(*ticks) -> None:
    asyncio.run(mailbox.post(list(ticks)))


def tasks_sent(redis_client) -> int:
    """Ingest tasks waiting on the broker's queue (no worker runs in these tests)."""
    return redis_client.llen(settings.CELERY_TASK_DEFAULT_QUEUE)


def waiting(redis_client) -> dict[int, Decimal]:
    """What the mailbox holds: instrument id -> price."""
    return {
        int(field): Decimal(mailbox.ticks_of({field: raw})[0]["price"])
        for field, raw in redis_client.hgetall(mailbox.keys()[0]).items()
    }


def armed(redis_client) -> bool:
    return bool(redis_client.exists(mailbox.keys()[1]))


def prices() -> dict[int, Decimal]:
    return {q.instrument_id: q.price for q in Quote.objects.all()}


@pytest.fixture
def instruments(world):
    """BTC, ETH and 30 more instruments of the simulated feed."""
    more = [
        Instrument.objects.create(
            symbol=f"X{n}-USD",
            name=f"X{n}",
            asset_class=AssetClass.CRYPTO,
            quote_currency="USD",
            feed=FeedKind.SIMULATED,
            feed_symbol=f"X{n}-USD",
        )
        for n in range(30)
    ]
    return [world["btc"], world["eth"], *more]


def test_the_task_name_the_mailbox_sends_is_the_ingest_task():
    assert ingest_quotes.name == mailbox.TASK


def test_one_task_at_a_time_and_a_busy_worker_takes_every_instrument_at_once(
    instruments, redis_client
):
    btc, *others = instruments
    post(tick(btc, "100", T0))
    assert tasks_sent(redis_client) == 1 and armed(redis_client)
    # While that task waits (a busy worker), every post only updates the mailbox.
    for second in range(1, 20):
        post(tick(btc, str(100 + second), T0 + timedelta(seconds=second)))
    for n, instrument in enumerate(others):
        post(tick(instrument, str(10 + n), T0))
    assert tasks_sent(redis_client) == 1
    assert len(waiting(redis_client)) == len(instruments)  # one tick per instrument, not 51

    assert ingest_quotes() == len(instruments)  # the task the worker takes, without a batch
    stored = prices()
    assert stored[btc.id] == Decimal("119")  # the newest
    assert all(stored[i.id] == Decimal(10 + n) for n, i in enumerate(others))
    assert waiting(redis_client) == {} and not armed(redis_client)
    assert tasks_sent(redis_client) == 1  # nothing came meanwhile: no next task

    post(tick(btc, "120", T0 + timedelta(seconds=30)))  # the flag is down: this post sends
    assert tasks_sent(redis_client) == 2 and armed(redis_client)


def test_a_tick_posted_while_the_task_works_gets_the_next_task(instruments, redis_client):
    btc, eth, *_ = instruments
    post(tick(btc, "100", T0), tick(eth, "10", T0))
    taken = mailbox.take()  # the task's first step
    # The feed posts while the worker stores: a newer BTC and an ETH it had not seen.
    post(tick(btc, "101", T0 + timedelta(seconds=1)))
    assert tasks_sent(redis_client) == 1  # the flag is still up: no second task now
    mailbox.done(taken)  # the task's last step
    # Its ETH is forgotten; the newer BTC is not (it replaced the one taken) and has a task.
    assert waiting(redis_client) == {btc.id: Decimal("101")}
    assert armed(redis_client) and tasks_sent(redis_client) == 2
    assert ingest_quotes() == 1
    assert prices()[btc.id] == Decimal("101")
    assert waiting(redis_client) == {} and not armed(redis_client)


def test_a_tick_posted_just_after_the_task_lowered_the_flag_sends_a_task_itself(
    instruments, redis_client
):
    btc, *_ = instruments
    post(tick(btc, "100", T0))
    mailbox.done(mailbox.take())
    assert not armed(redis_client) and tasks_sent(redis_client) == 1
    post(tick(btc, "101", T0 + timedelta(seconds=1)))
    assert armed(redis_client) and tasks_sent(redis_client) == 2


def test_a_flag_a_dead_worker_left_raised_expires_and_ingest_resumes(instruments, redis_client):
    btc, *_ = instruments
    # A worker died with the task taken: the flag stays up, and posts send nothing...
    redis_client.set(mailbox.keys()[1], 1, px=300)
    post(tick(btc, "100", T0))
    assert tasks_sent(redis_client) == 0 and waiting(redis_client) == {btc.id: Decimal("100")}
    # ...until it expires (its lifetime is the broker's visibility timeout, set short here).
    deadline = time.monotonic() + 10
    while armed(redis_client):
        assert time.monotonic() < deadline, "the flag never expired"
        time.sleep(0.05)
    post(tick(btc, "101", T0 + timedelta(seconds=1)))
    assert tasks_sent(redis_client) == 1
    assert ingest_quotes() == 1
    assert prices()[btc.id] == Decimal("101")


def test_the_flag_lasts_as_long_as_the_broker_keeps_a_dead_workers_task(instruments, redis_client):
    post(tick(instruments[0], "100", T0))
    ttl = redis_client.ttl(mailbox.keys()[1])
    assert 0 < ttl <= settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]


def test_a_task_that_fails_unexpectedly_lowers_the_flag_and_the_next_post_goes_on(
    instruments, redis_client, monkeypatch
):
    btc, *_ = instruments
    post(tick(btc, "100", T0))
    from streaming import tasks

    def broken(batch):
        raise RuntimeError("a bug")

    monkeypatch.setattr(tasks, "_ingest", broken)
    with pytest.raises(RuntimeError):
        ingest_quotes()
    monkeypatch.undo()
    assert not armed(redis_client) and waiting(redis_client) == {}
    post(tick(btc, "101", T0 + timedelta(seconds=1)))
    assert tasks_sent(redis_client) == 2
    assert ingest_quotes() == 1


def test_a_task_the_database_failed_keeps_the_flag_for_its_retry_however_long_it_lasts(
    instruments, redis_client, monkeypatch
):
    from django.db import OperationalError

    from streaming import tasks

    btc, *_ = instruments
    post(tick(btc, "100", T0))
    key = mailbox.keys()[1]
    redis_client.expire(key, 2)  # most of its lifetime gone while the database was down

    def database_down(batch):
        raise OperationalError("the database is down")

    monkeypatch.setattr(tasks, "_ingest", database_down)
    with pytest.raises(OperationalError):
        ingest_quotes()
    monkeypatch.undo()
    # Raised for a whole lifetime again: the retry, not a post, sends the next task.
    assert redis_client.ttl(key) > 2
    post(tick(btc, "101", T0 + timedelta(seconds=1)))
    assert tasks_sent(redis_client) == 1
    assert ingest_quotes() == 1
    assert prices()[btc.id] == Decimal("101") and not armed(redis_client)
