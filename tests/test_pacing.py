"""Valuation pacing (streaming/pacing.py): each portfolio valued at most once per interval, on
a phase of its own; what moves in between is deferred to its next turn, never dropped.
Real Redis; a real Celery worker for the flush when the feed goes quiet."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings as django_settings

from streaming import events, pacing
from streaming.tasks import ingest_quotes, value_deferred
from tests.conftest import start_worker
from tests.test_ingest import T0, deliveries, tick
from tests.websocket import as_sent

pytestmark = pytest.mark.django_db(transaction=True)

INTERVAL = 500
START = 1_800_000_000_000  # epoch ms


@pytest.fixture
def clock(redis_client, monkeypatch, settings):
    """Pacing on at INTERVAL ms, on a clock the test moves."""
    settings.LIVEFOLIO_VALUATION_INTERVAL_MS = INTERVAL
    settings.LIVEFOLIO_COALESCE_MS = INTERVAL // 2  # a pass may value every portfolio
    now = [START]
    monkeypatch.setattr(pacing, "clock_ms", lambda: now[0])
    return now


def slot(portfolio_id: int, at: int) -> int:
    return (at - pacing.phase_ms(portfolio_id, INTERVAL)) // INTERVAL


def next_turn(portfolio_id: int, at: int) -> int:
    return pacing.phase_ms(portfolio_id, INTERVAL) + (slot(portfolio_id, at) + 1) * INTERVAL


def test_off_by_default_every_moving_portfolio_is_valued_at_once(redis_client, settings):
    assert settings.LIVEFOLIO_VALUATION_INTERVAL_MS == 0
    assert pacing.take_turns([1, 2, 3]) is None


def test_once_per_slot_then_deferred_to_the_portfolios_next_turn(clock):
    assert pacing.take_turns([42]).due == [42]
    clock[0] += 1
    again = pacing.take_turns([42])  # moved again inside the slot it was valued in
    assert again.due == []
    assert again.next_turn_ms == next_turn(42, START)
    clock[0] = next_turn(42, START) - 1
    assert pacing.take_turns([]).due == []  # not yet
    clock[0] += 1
    turn = pacing.take_turns([])  # its turn: valued without moving again
    assert turn.due == [42]
    assert turn.next_turn_ms is None
    assert pacing.take_turns([]).due == []  # once


def test_phases_spread_the_valuations_evenly_over_the_interval(clock):
    """500 portfolios moving at every 100 ms batch: after the first pass, each batch values the
    fifth whose slot began since the last, and each is valued exactly once per interval."""
    ids = list(range(1, 501))
    assert sorted(pacing.take_turns(ids).due) == ids
    valued: list[int] = []
    for step in range(1, 6):
        clock[0] = START + 100 * step
        due = pacing.take_turns(ids).due
        assert len(due) == 100
        assert set(due) == {p for p in ids if slot(p, clock[0]) > slot(p, clock[0] - 100)}
        valued += due
    assert sorted(valued) == ids


def test_a_pass_values_at_most_its_share_longest_unvalued_first(clock, settings):
    """A worker that fell behind finds every portfolio's turn come: a pass values at most twice
    a batch window's share of them (here 100 ms of 500: 40%), the ones valued longest ago
    first, and leaves the rest to the next pass, so no pass grows past the interval."""
    settings.LIVEFOLIO_COALESCE_MS = 100
    ids = list(range(1, 501))
    first = pacing.take_turns(ids)
    assert len(first.due) == 200
    assert first.next_turn_ms == START  # the rest are ready for the next pass
    clock[0] += 100
    second = pacing.take_turns(ids)
    assert len(second.due) == 200
    assert not set(second.due) & set(first.due)  # never valued before them
    clock[0] += 100
    third = pacing.take_turns(ids).due
    assert len(third) == 200
    assert set(first.due) | set(second.due) | set(third) == set(ids)  # nobody starved


def test_the_share_is_of_every_paced_portfolio_not_of_the_few_a_pass_considers(clock, settings):
    """A flush after the feed went quiet considers only the deferred, a quiet market only a few
    moving: their turns are not cut to a share of so few."""
    ids = list(range(1, 101))
    assert len(pacing.take_turns(ids).due) == 100
    settings.LIVEFOLIO_COALESCE_MS = 100  # a pass may value 40% of the 100 paced
    clock[0] += 10 * INTERVAL
    assert sorted(pacing.take_turns(ids[:10]).due) == ids[:10]


def queued_tasks(redis_client) -> list[dict]:
    queue = django_settings.CELERY_TIMER_QUEUE  # not the default: no backlog for ingest
    return [json.loads(raw)["headers"] for raw in redis_client.lrange(queue, 0, -1)]


def totals(messages):
    return [as_sent(m)["portfolio"]["total"] for m in messages]


def test_a_price_inside_the_slot_is_valued_at_the_next_turn_not_dropped(
    world, clock, redis_client, monkeypatch
):
    users = {"alice": world["users"]["alice"]}
    alice = world["portfolios"]["alice"].id
    countdowns = []
    send = value_deferred.apply_async

    def scheduled(*args, countdown, **kwargs):
        countdowns.append(countdown)
        return send(*args, countdown=countdown, **kwargs)

    monkeypatch.setattr(value_deferred, "apply_async", scheduled)
    first = deliveries(users, lambda: ingest_quotes([tick(world["btc"], "600", T0)]))
    assert totals(first["alice"]) == ["1200.00"]
    clock[0] += 1
    later = T0 + timedelta(seconds=1)
    held = deliveries(users, lambda: ingest_quotes([tick(world["btc"], "601", later)]))
    assert held == {"alice": []}
    # The fallback for a quiet feed: one flush, two batch windows after the earliest deferred
    # turn (alice's or charlie's: both hold BTC), on the queue.
    charlie = world["portfolios"]["charlie"].id
    earliest = min(next_turn(alice, START), next_turn(charlie, START))
    window = django_settings.LIVEFOLIO_COALESCE_MS
    assert countdowns == [(earliest + 2 * window - clock[0]) / 1000]
    assert [t["task"] for t in queued_tasks(redis_client)] == ["streaming.tasks.value_deferred"]
    deliveries(users, lambda: ingest_quotes([tick(world["btc"], "602", later)]))  # same time
    assert len(countdowns) == 1  # one flush outstanding, not one per pass
    clock[0] = max(next_turn(alice, START), next_turn(charlie, START))
    got = deliveries(users, value_deferred)
    assert totals(got["alice"]) == ["1202.00"]  # the newest price, once


def test_a_batch_after_the_turn_values_the_deferred_portfolio_itself(world, clock):
    users = {"alice": world["users"]["alice"], "bob": world["users"]["bob"]}
    alice = world["portfolios"]["alice"].id
    deliveries(users, lambda: ingest_quotes([tick(world["btc"], "600", T0)]))
    clock[0] += 1
    later = T0 + timedelta(seconds=1)
    assert deliveries(users, lambda: ingest_quotes([tick(world["btc"], "601", later)])) == {
        "alice": [],
        "bob": [],
    }
    clock[0] = max(next_turn(alice, START), START + 1)
    got = deliveries(users, lambda: ingest_quotes([tick(world["eth"], "200", later)]))
    assert totals(got["alice"]) == ["1202.00"]  # deferred BTC, though this batch moved ETH only
    assert totals(got["bob"]) == ["2000.00"]


@pytest.mark.stack
def test_with_a_real_worker_the_last_price_of_a_burst_arrives_when_the_feed_goes_quiet(
    world, redis_client, tmp_path
):
    """Two ticks close together, then nothing: the second is deferred (inside the slot the
    first was valued in) and the worker's scheduled flush delivers it."""
    worker = start_worker(tmp_path, LIVEFOLIO_VALUATION_INTERVAL_MS="2000")
    alice = world["users"]["alice"]

    async def run():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(events.user_group(alice.id), channel)
        now = datetime.now(UTC)
        for n, price in enumerate(["700", "701"]):
            batch = [tick(world["btc"], price, now + timedelta(milliseconds=n))]
            await sync_to_async(ingest_quotes.delay)(batch)
        received = []
        while not received or totals(received)[-1] != "1402.00":
            received.append(await asyncio.wait_for(layer.receive(channel), timeout=15))
        return totals(received)

    try:
        got = asyncio.run(run())
    finally:
        worker.stop()
    assert got[-1] == "1402.00"
    assert got in (["1400.00", "1402.00"], ["1402.00"])  # never more than one per tick


def test_with_pacing_one_task_waiting_is_no_backlog_two_are(world, clock, redis_client):
    """A paced pass is bounded, so the next batch arriving while this one runs does not make
    it skip its valuations (streaming/tasks.py valuations_due); two waiting do."""
    users = {"alice": world["users"]["alice"]}
    queue = django_settings.CELERY_TASK_DEFAULT_QUEUE
    redis_client.lpush(queue, "the next batch")
    got = deliveries(users, lambda: ingest_quotes([tick(world["btc"], "600", T0)]))
    assert totals(got["alice"]) == ["1200.00"]
    redis_client.lpush(queue, "and one more")
    clock[0] += INTERVAL  # alice's turn again
    later = T0 + timedelta(seconds=1)
    got = deliveries(users, lambda: ingest_quotes([tick(world["btc"], "601", later)]))
    assert got == {"alice": []}  # left to the next task
