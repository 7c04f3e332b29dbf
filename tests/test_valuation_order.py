"""A portfolio's valuations reach a client in the order they were valued, however many workers
value it: the server drops one valued before the last it sent that socket (``valued_at``), on
the pages' socket and on the API's portfolio stream. Real Redis, PostgreSQL, Celery, daphne."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import websockets
from channels.db import database_sync_to_async

from portfolio import wire
from portfolio.selectors import live_states
from streaming import events, protocol
from streaming.tasks import ingest_quotes
from tests.api import connect, request
from tests.conftest import free_port, start_daphne, start_worker
from tests.websocket import open_portfolio_page, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


async def valuations_valued_at(world, *offsets: int) -> list[tuple[str, dict]]:
    """Alice's portfolio's valuation, as published, once per offset (seconds from now) of
    ``valued_at``."""
    portfolio = world["portfolios"]["alice"]
    [state] = await database_sync_to_async(live_states.portfolio_states)(
        portfolio_ids=[portfolio.id]
    )
    now = datetime.now(UTC)
    group = events.user_group(world["users"]["alice"].id)
    return [
        (
            group,
            protocol.valuation(
                portfolio=state | {"valued_at": wire.iso(now + timedelta(seconds=offset))}
            ),
        )
        for offset in offsets
    ]


async def test_the_page_drops_a_valuation_older_than_one_it_sent(world, redis_client):
    comm, _, _ = await open_portfolio_page(world["users"]["alice"])
    newer, older, newest = await valuations_valued_at(world, 2, 1, 3)
    # Published out of order, as two workers can: the one valued at +2 s first.
    await events.apublish([newer, older, newest])
    got = [await comm.receive_json_from(timeout=5) for _ in range(2)]
    assert [g["portfolio"]["valued_at"] for g in got] == [
        newer[1]["portfolio"]["valued_at"],
        newest[1]["portfolio"]["valued_at"],
    ]
    assert await comm.receive_nothing(timeout=0.5)
    # One valued before the snapshot is older than what the page shows: dropped too.
    [before] = await valuations_valued_at(world, -60)
    await comm.send_json_to({"type": "resync"})
    assert (await comm.receive_json_from(timeout=5))["type"] == "snapshot"
    await events.apublish([before])
    assert await comm.receive_nothing(timeout=0.5)
    await comm.disconnect()


async def test_the_api_portfolio_stream_drops_a_valuation_older_than_one_it_sent(
    world, redis_client
):
    comm = await connect(world["users"]["alice"])
    pid = world["portfolios"]["alice"].id
    await request(comm, type="subscribe", id=1, stream=f"portfolio:{pid}")
    assert (await comm.receive_json_from(timeout=5))["type"] == "snapshot"
    newer, older, newest = await valuations_valued_at(world, 2, 1, 3)
    await events.apublish([newer, older, newest])
    got = [await comm.receive_json_from(timeout=5) for _ in range(2)]
    assert [g["data"]["valued_at"] for g in got] == [
        newer[1]["portfolio"]["valued_at"],
        newest[1]["portfolio"]["valued_at"],
    ]
    assert [g["stream_seq"] for g in got] == [1, 2]
    assert await comm.receive_nothing(timeout=0.5)
    await comm.disconnect()


def more_portfolios_of_alice(world, count: int) -> None:
    """``count`` more portfolios of alice's, each holding 2 BTC: a task values them together,
    so two workers' valuations of one portfolio overlap longer."""
    from portfolio import services
    from portfolio.models import TxKind

    at = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
    for n in range(count):
        portfolio = services.portfolio_create(owner=world["users"]["alice"], name=f"More {n}")
        services.transaction_add(
            portfolio=portfolio, kind=TxKind.DEPOSIT, amount=Decimal("1000"), executed_at=at
        )
        services.transaction_add(
            portfolio=portfolio,
            kind=TxKind.BUY,
            instrument=world["btc"],
            quantity=Decimal("2"),
            price=Decimal("500"),
            fees=Decimal("0"),
            executed_at=at,
        )


@pytest.mark.stack
async def test_with_two_worker_processes_a_page_never_gets_an_older_valuation_after_a_newer(
    world, redis_client, tmp_path
):
    await database_sync_to_async(more_portfolios_of_alice)(world, 20)
    for n in range(2):
        (tmp_path / str(n)).mkdir()
    workers = [start_worker(tmp_path / str(n)) for n in range(2)]
    port = free_port()
    # Every valuation goes out (no per-portfolio rate limit to conflate one away).
    server = start_daphne(tmp_path, port, LIVEFOLIO_WS_MAX_UPDATES="1000")
    daphne_server = f"http://127.0.0.1:{port}"
    try:
        cookie = await database_sync_to_async(session_cookie)(world["users"]["alice"])
        url = daphne_server.replace("http://", "ws://") + "/ws/portfolio/"
        headers = {"Origin": daphne_server, "Cookie": cookie}
        async with websockets.connect(url, additional_headers=headers) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "snapshot"
            # A stream of ticks, one task each: both workers take them and value at once.
            start = datetime.now(UTC)
            last = 60_000 + 199
            for n in range(200):
                ingest_quotes.delay(
                    [
                        {
                            "instrument": world["btc"].id,
                            "price": str(60_000 + n),
                            "ts": (start + timedelta(milliseconds=n)).isoformat(),
                            "source": "simulated",
                        }
                    ]
                )
            valued: dict[int, list[tuple[str, str]]] = {}  # portfolio -> (valued_at, total)
            final = f"{2 * last}.00"  # each of alice's portfolios holds 2 BTC
            deadline = time.monotonic() + 120
            while len(valued) < 21 or any(v[-1][1] != final for v in valued.values()):
                assert time.monotonic() < deadline, "the newest price never reached every one"
                frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if frame["type"] == "valuation":
                    state = frame["portfolio"]
                    valued.setdefault(state["id"], []).append((state["valued_at"], state["total"]))
        for pid, seen in valued.items():
            moments = [at for at, _ in seen]
            assert moments == sorted(moments), f"portfolio {pid}: older after newer"
        outputs = [worker.output() for worker in workers]
        assert all("ingest_quotes[" in output for output in outputs), "a worker took no task"
    finally:
        server.stop()
        for worker in workers:
            worker.stop()
