"""A worker behind its queue values once for several ingest batches (streaming/tasks.py
valuations_due): nothing is dropped, the last value always goes out. Real Redis."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.conf import settings as django_settings

from streaming import tasks
from streaming.tasks import ingest_quotes, snapshot_valuations
from tests.test_ingest import T0, deliveries, tick
from tests.websocket import as_sent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def queued(redis_client, monkeypatch, settings):
    """Tasks waiting on the Celery queue behind the one running, and a valuation pass just
    made (with a max delay no test reaches, unless it says otherwise)."""
    settings.LIVEFOLIO_VALUATION_MAX_DELAY_MS = 600_000
    monkeypatch.setattr(tasks, "_last_pass", time.monotonic())
    queue = django_settings.CELERY_TASK_DEFAULT_QUEUE

    def set_waiting(n: int) -> None:
        redis_client.delete(queue)
        for i in range(n):
            redis_client.lpush(queue, f"a task {i}")

    yield set_waiting
    redis_client.delete(queue)


def totals(messages):
    return [as_sent(m)["portfolio"]["total"] for m in messages]


def test_a_batch_with_tasks_behind_it_leaves_its_valuation_to_the_next(world, queued):
    users = {name: world["users"][name] for name in ("alice", "bob", "charlie")}
    queued(2)
    skipped = deliveries(users, lambda: ingest_quotes([tick(world["btc"], "50000.10", T0)]))
    assert skipped == {"alice": [], "bob": [], "charlie": []}
    queued(0)  # the last batch of the burst: it values what the first left, and its own
    later = T0 + timedelta(seconds=1)
    got = deliveries(users, lambda: ingest_quotes([tick(world["eth"], "3000", later)]))
    assert totals(got["alice"]) == ["100000.20"]  # BTC from the skipped batch
    assert totals(got["charlie"]) == ["150000.30"]
    assert totals(got["bob"]) == ["30000.00"]  # 10 ETH from this one
    again = deliveries(users, lambda: ingest_quotes([tick(world["eth"], "3001", later)]))
    assert again == {"alice": [], "bob": [], "charlie": []}  # same time: nothing changed


def test_several_skipped_batches_are_valued_once_at_their_newest_prices(world, queued):
    users = {"alice": world["users"]["alice"]}
    queued(3)
    for n, price in enumerate(["50000", "50001", "50002"]):
        ts = T0 + timedelta(seconds=n)
        batch = [tick(world["btc"], price, ts)]
        assert deliveries(users, lambda b=batch: ingest_quotes(b)) == {"alice": []}
    queued(0)
    got = deliveries(users, lambda: ingest_quotes([tick(world["eth"], "1", T0)]))
    assert totals(got["alice"]) == ["100004.00"]  # one valuation, at the newest BTC price


def test_a_valuation_is_never_postponed_past_the_max_delay(world, queued, monkeypatch, settings):
    users = {"alice": world["users"]["alice"]}
    queued(5)  # the queue never empties ...
    settings.LIVEFOLIO_VALUATION_MAX_DELAY_MS = 1000
    monkeypatch.setattr(tasks, "_last_pass", time.monotonic() - 1.0)  # ... but it is time
    got = deliveries(users, lambda: ingest_quotes([tick(world["btc"], "50000.10", T0)]))
    assert totals(got["alice"]) == ["100000.20"]


def test_any_task_that_runs_next_values_what_a_skipped_batch_left(world, queued):
    """The task behind a skipped batch may be the minute's snapshot, not an ingest."""
    users = {"alice": world["users"]["alice"]}
    queued(1)
    assert deliveries(users, lambda: ingest_quotes([tick(world["btc"], "600", T0)])) == {
        "alice": []
    }
    queued(0)
    got = deliveries(users, snapshot_valuations)
    assert totals(got["alice"]) == ["1200.00"]


def test_without_a_queue_every_batch_is_valued_at_once(world, redis_client):
    users = {"alice": world["users"]["alice"]}
    for n, price in enumerate(["600", "601"]):
        ts = T0 + timedelta(seconds=n)
        batch = [tick(world["btc"], price, ts)]
        got = deliveries(users, lambda b=batch: ingest_quotes(b))
        assert totals(got["alice"]) == [f"{2 * int(price)}.00"]


def test_the_feed_runner_holds_its_window_while_an_ingest_task_waits(queued, redis_client):
    """Backpressure (streaming/runner.py): with a task waiting on the queue, the runner sends
    nothing and keeps coalescing; once the queue is empty, one batch of the newest ticks."""
    import asyncio
    from datetime import UTC, datetime
    from decimal import Decimal

    from streaming.feeds.base import Tick
    from streaming.runner import FeedRunner, Target

    sent: list[list[dict]] = []
    runner = FeedRunner(kind="simulated", window=0.02)
    runner.symbols = {"BTC-USD": Target(1, "BTC-USD"), "ETH-USD": Target(2, "ETH-USD")}

    async def sink(batch):  # what ingest_quotes.delay would get; the check is the real one
        sent.append(batch)

    runner.sink = sink
    queue = django_settings.CELERY_TASK_DEFAULT_QUEUE

    async def run():
        feeding = asyncio.create_task(runner.coalescer.run())
        now = datetime.now(UTC)
        queued(1)
        runner.on_event(Tick(feed_symbol="BTC-USD", price=Decimal("1"), ts=now))
        await asyncio.sleep(0.2)  # ten windows
        held = list(sent)
        runner.on_event(Tick(feed_symbol="BTC-USD", price=Decimal("2"), ts=now + timedelta(1)))
        runner.on_event(Tick(feed_symbol="ETH-USD", price=Decimal("3"), ts=now))
        redis_client.delete(queue)  # the worker took it
        for _ in range(500):
            if sent:
                break
            await asyncio.sleep(0.01)
        feeding.cancel()
        await runner.backpressure.close()
        return held

    held = asyncio.run(run())
    assert held == []
    assert [sorted((i["instrument"], i["price"]) for i in batch) for batch in sent] == [
        [(1, "2"), (2, "3")]
    ]


def test_backpressure_holds_while_every_live_worker_runs_a_task(redis_client):
    """A batch is held while as many tasks run as workers are alive (their heartbeats), or one
    waits; a free worker releases it. A task taken longer ago than the soft time limit is one
    a dead worker left behind: it does not hold the feed until the broker restores it."""
    import asyncio

    from streaming import health
    from streaming.patches.broker import UNACKED_INDEX_KEY
    from streaming.runner import IngestBackpressure

    def busy(running: int, workers: int, abandoned: int = 0) -> bool:
        redis_client.flushdb()
        for n in range(workers):
            health.worker_heartbeat_write(f"worker-{n}")
        for n in range(running):
            redis_client.zadd(UNACKED_INDEX_KEY, {f"tag-{n}": time.time() - 1})
        for n in range(abandoned):
            taken = time.time() - django_settings.CELERY_TASK_SOFT_TIME_LIMIT - 5
            redis_client.zadd(UNACKED_INDEX_KEY, {f"old-{n}": taken})
        return asyncio.run(IngestBackpressure()())

    assert busy(running=0, workers=1) is False
    assert busy(running=1, workers=1) is True
    assert busy(running=1, workers=2) is False  # the other worker would take a batch at once
    assert busy(running=2, workers=2) is True
    assert busy(running=1, workers=0) is True  # no heartbeat yet: count one
    assert busy(running=0, workers=1, abandoned=1) is False
    assert busy(running=1, workers=2, abandoned=3) is False


def test_the_feed_sends_its_batch_as_the_task_argument_with_a_one_line_repr(redis_client):
    """The task message (real Redis broker) carries the whole batch, and the repr Celery shows
    in logs and monitoring is one short line, not a repr of every tick built per message."""
    import asyncio
    import base64
    import json

    from streaming.runner import _default_sink

    batch = [
        {"instrument": i, "price": f"{100 + i}.5", "ts": "2026-01-05T15:00:00+00:00"}
        for i in range(150)
    ]
    asyncio.run(_default_sink(batch))
    queue = django_settings.CELERY_TASK_DEFAULT_QUEUE
    assert redis_client.llen(queue) == 1
    message = json.loads(redis_client.rpop(queue))
    assert message["headers"]["task"] == "streaming.tasks.ingest_quotes"
    assert message["headers"]["argsrepr"] == "[<150 ticks>]"
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [batch] and kwargs == {}


def subscribed(redis_client, count: int = 1) -> None:
    """Wait until ``count`` clients listen for the workers' notices (no notice is then lost)."""
    from streaming import flow

    for _ in range(500):
        [(_, listening)] = redis_client.pubsub_numsub(flow.ingest_free_channel())
        if listening >= count:
            return
        time.sleep(0.01)
    raise AssertionError("no runner subscribed to the workers' notices")


def held_coalescer(sent: list, *, window: float = 0.02):
    """A Coalescer with the real backpressure and wake-up, whose poll is 30 s away: within a
    test only a worker's notice can end its hold."""
    from streaming.feeds.base import Coalescer
    from streaming.runner import IngestBackpressure

    async def flush(batch):
        sent.append(batch)

    backpressure = IngestBackpressure()
    coalescer = Coalescer(
        window=window, flush=flush, hold=backpressure, wake=backpressure.free, max_hold=60
    )
    coalescer.hold_poll = 30
    return coalescer, backpressure


def test_a_held_window_goes_out_when_a_worker_says_it_is_free(redis_client):
    """A worker that ends a task says so (``_say_free``): the window held for it goes out
    then, while the worker's acknowledgement (which the poll waits for) is still to come."""
    import asyncio
    from datetime import UTC, datetime
    from decimal import Decimal

    from streaming.feeds.base import Tick
    from streaming.patches.broker import UNACKED_INDEX_KEY
    from streaming.tasks import _say_free

    sent: list = []
    coalescer, backpressure = held_coalescer(sent)

    async def run():
        redis_client.zadd(UNACKED_INDEX_KEY, {"the running task": time.time()})
        feeding = asyncio.create_task(coalescer.run())
        coalescer.add(Tick(feed_symbol="BTC-USD", price=Decimal("1"), ts=datetime.now(UTC)))
        await asyncio.to_thread(subscribed, redis_client)
        await asyncio.sleep(0.2)
        held = list(sent)
        await asyncio.to_thread(_say_free)  # the task ends; no ack yet, nothing queued
        for _ in range(500):
            if sent:
                break
            await asyncio.sleep(0.01)
        feeding.cancel()
        await backpressure.close()
        return held

    assert asyncio.run(run()) == []
    assert [[t.price for t in batch] for batch in sent] == [[Decimal("1")]]


def test_a_notice_that_came_while_nothing_was_held_does_not_end_a_later_hold(redis_client):
    import asyncio
    from datetime import UTC, datetime
    from decimal import Decimal

    from streaming.feeds.base import Tick
    from streaming.patches.broker import UNACKED_INDEX_KEY
    from streaming.tasks import _say_free

    sent: list = []
    coalescer, backpressure = held_coalescer(sent, window=0.5)

    async def run():
        redis_client.zadd(UNACKED_INDEX_KEY, {"the running task": time.time()})
        feeding = asyncio.create_task(coalescer.run())
        await asyncio.to_thread(subscribed, redis_client)  # held: the first window
        redis_client.zrem(UNACKED_INDEX_KEY, "the running task")
        await asyncio.to_thread(_say_free)
        for _ in range(500):  # the first window goes out
            if sent:
                break
            await asyncio.sleep(0.01)
        # During the next window's wait (nothing held): a task starts and ends, and its notice
        # comes with no hold waiting for it; another task starts.
        redis_client.zadd(UNACKED_INDEX_KEY, {"the next task": time.time()})
        await asyncio.to_thread(_say_free)
        coalescer.add(Tick(feed_symbol="BTC-USD", price=Decimal("2"), ts=datetime.now(UTC)))
        await asyncio.sleep(1.5)  # the window ends, and its hold must not take that notice
        held = len(sent)
        await asyncio.to_thread(_say_free)  # the running task ends
        for _ in range(500):
            if len(sent) == 2:
                break
            await asyncio.sleep(0.01)
        feeding.cancel()
        await backpressure.close()
        return held

    assert asyncio.run(run()) == 1
    assert [[t.price for t in batch] for batch in sent] == [[], [Decimal("2")]]


def test_of_two_runners_one_sends_on_a_notice(redis_client):
    """Every runner hears a notice; one free worker takes one batch: one of them claims it."""
    import asyncio

    from streaming.runner import IngestBackpressure
    from streaming.tasks import _say_free

    async def run():
        runners = [IngestBackpressure(), IngestBackpressure()]
        waits = [asyncio.create_task(r.free(5.0)) for r in runners]
        await asyncio.to_thread(subscribed, redis_client, 2)
        await asyncio.to_thread(_say_free)
        results = await asyncio.gather(*waits)
        for r in runners:
            await r.close()
        return results

    assert sorted(asyncio.run(run())) == [False, True]


def test_every_ingest_task_says_the_worker_is_free_when_it_ends(
    world, redis_client, monkeypatch, queued
):
    """Also a task that fails (it is retried later; the worker is free meanwhile); not while a
    task waits on the queue (the worker takes that one next)."""
    from streaming import flow

    notices = redis_client.pubsub(ignore_subscribe_messages=True)
    notices.subscribe(flow.ingest_free_channel())

    def next_notice(seconds: float = 5.0):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = notices.get_message(timeout=0.05)
            if message is not None:
                return message
        return None

    assert ingest_quotes([tick(world["btc"], "50000.10", T0)]) == 1
    assert next_notice()["channel"].decode() == flow.ingest_free_channel()
    assert next_notice(0.3) is None  # one task, one notice

    queued(1)
    ingest_quotes([tick(world["btc"], "50000.20", T0)])
    assert next_notice(0.3) is None
    queued(0)

    def broken(batch):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(tasks, "_ingest", broken)
    with pytest.raises(RuntimeError):
        ingest_quotes([tick(world["btc"], "50000.30", T0)])
    assert next_notice() is not None
    notices.close()
