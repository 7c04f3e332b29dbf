"""Two deployments on one Redis server, each with its own PostgreSQL database and Redis database,
everything else default: no frame of one reaches the other (Redis pub/sub ignores the database
number, so the namespace must differ: streaming/namespace.py), while the daphne and worker
processes of one deployment still serve each other's clients.

Both databases are copies of one seeded world (users, portfolios and instruments have the same
ids in both, and so has each copy's Deployment row): deployment B's portfolios and symbols are
renamed, so anything of B's that reached A would show.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time

import psycopg
import pytest
from websockets.asyncio.client import connect

from streaming.namespace import ANNOUNCE_ROOT, Announcement
from tests.faults.conftest import Stack, wait_until
from tests.faults.live import eventually, log_in

B_MARKERS = ("B-Alice", "BBTC-USD", "BETH-USD")


def clone_database(postgres, name: str) -> str:
    """A copy of the seeded world's database; returns its URL."""
    deadline = time.monotonic() + 30
    with postgres.connect() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        while True:
            try:
                conn.execute(f"CREATE DATABASE {name} TEMPLATE livefolio")
                break
            except psycopg.errors.ObjectInUse:  # a stopped process's session not gone yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    return postgres.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def deployments(private_services, tmp_path):
    """Deployment A (PostgreSQL database deploy_a, Redis database 7) and B (deploy_b, 8), no
    LIVEFOLIO_REDIS_PREFIX; their processes are stopped after the test."""
    redis_server, postgres, world = private_services
    if redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.client().flushall()
    base = redis_server.url.rsplit("/", 1)[0]
    stacks = {}
    for name, db in (("a", 7), ("b", 8)):
        url = clone_database(postgres, f"deploy_{name}")
        stack = Stack(
            redis_server,
            postgres,
            world,
            "pubsub",
            database_url=url,
            redis_url=f"{base}/{db}",
            prefix=None,
        )
        stack.tmp = tmp_path / name
        stack.tmp.mkdir()
        stacks[name] = stack
    with psycopg.connect(stacks["b"].database_url, autocommit=True) as conn:
        conn.execute("UPDATE portfolio_portfolio SET name = 'B-' || name")
        conn.execute("UPDATE portfolio_instrument SET symbol = 'B' || symbol")
        conn.execute("DELETE FROM portfolio_quote")
    with psycopg.connect(stacks["a"].database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM portfolio_quote")
    yield stacks
    for stack in stacks.values():
        for process in reversed(stack.processes):
            process.stop()


def feed(stack: Stack, seed: int):
    return stack.spawn(
        "feed",
        [sys.executable, "manage.py", "runfeed", "simulated", "--rate", "10", "--seed", str(seed)],
    )


async def collect(url: str, frames: list[dict], *, cookie=None, origin=None, send=()) -> None:
    headers = {"Cookie": cookie} if cookie else {}
    if "/ws/v1/" in url and cookie is None:
        headers["Authorization"] = f"Bearer {origin}"
        origin = None
    async with connect(url, origin=origin, additional_headers=headers, open_timeout=10) as ws:
        for request in send:
            await ws.send(json.dumps(request))
        async for raw in ws:
            frames.append(json.loads(raw))


def valuations(frames: list[dict]) -> list[dict]:
    found = []
    for frame in frames:
        if frame.get("type") == "valuation":
            found.append(frame["portfolio"])
        elif frame.get("type") in ("snapshot", "update") and str(
            frame.get("stream", "")
        ).startswith("portfolio:"):
            found.append(frame["data"])
    return found


async def test_two_deployments_on_one_redis_never_see_each_others_frames(deployments):
    a, b = deployments["a"], deployments["b"]
    world = a.world
    alice = world["portfolios"]["alice"]
    # A scales out: two daphne and two workers; B runs one of each.
    a_web = [a.daphne(name="daphne-1"), a.daphne(name="daphne-2")]
    a.worker(name="worker-1")
    a.worker(name="worker-2")
    b_web = b.daphne()
    b.worker()
    feed(a, seed=1)
    feed(b, seed=2)

    a_cookie = log_in(a_web[0], "alice")  # one session, valid on both of A's servers
    b_cookie = log_in(b_web, "alice")
    ws = [url.replace("http://", "ws://") for url in (*a_web, b_web)]
    frames: dict[str, list[dict]] = {
        k: [] for k in ("a-page-1", "a-page-2", "a-instrument", "a-api", "b-page")
    }
    api_requests = [
        {"type": "subscribe", "id": 1, "stream": f"portfolio:{alice}"},
        {"type": "subscribe", "id": 2, "stream": "quotes:BTC-USD"},
        {"type": "subscribe", "id": 3, "stream": "trades:BTC-USD"},
    ]
    clients = [
        collect(f"{ws[0]}/ws/portfolio/", frames["a-page-1"], cookie=a_cookie, origin=a_web[0]),
        collect(f"{ws[1]}/ws/portfolio/", frames["a-page-2"], cookie=a_cookie, origin=a_web[1]),
        collect(
            f"{ws[1]}/ws/instrument/BTC-USD/",
            frames["a-instrument"],
            cookie=a_cookie,
            origin=a_web[1],
        ),
        collect(f"{ws[0]}/ws/v1/", frames["a-api"], origin=world["api_token"], send=api_requests),
        collect(f"{ws[2]}/ws/portfolio/", frames["b-page"], cookie=b_cookie, origin=b_web),
    ]
    tasks = [asyncio.create_task(client) for client in clients]

    def enough() -> bool:
        return all(len(valuations(frames[k])) >= 4 for k in ("a-page-1", "a-page-2", "b-page"))

    try:
        await eventually(enough, timeout=60, what="valuations on both deployments' pages")
        await asyncio.sleep(5)  # and a while more, for anything of B's to stray
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # Each deployment serves its own: both of A's servers, whichever worker valued.
    for key in ("a-page-1", "a-page-2"):
        names = {v["name"] for v in valuations(frames[key])}
        assert names == {"Alice's"}, (key, names)
        assert len(valuations(frames[key])) >= 4, (key, frames[key][-3:])
    assert {v["name"] for v in valuations(frames["b-page"])} == {"B-Alice's"}
    assert any(f.get("type") == "quote" for f in frames["a-instrument"]), frames["a-instrument"]
    api_streams = {f.get("stream") for f in frames["a-api"] if f.get("type") == "update"}
    assert {f"portfolio:{alice}", "quotes:BTC-USD"} <= api_streams, frames["a-api"][-5:]
    for worker in ("worker-1", "worker-2"):
        log = next(p for p in a.processes if p.name == worker).output()
        assert re.search(r"ingest_quotes\[[^\]]+\] received", log), f"{worker} took no batch"

    # ... and nothing of B's reached any of A's clients.
    for key in ("a-page-1", "a-page-2", "a-instrument", "a-api"):
        text = json.dumps(frames[key])
        leaked = [marker for marker in B_MARKERS if marker in text]
        assert not leaked, f"{key} received deployment B's {leaked}"

    # Two namespaces, each announced by its processes.
    announced = {
        Announcement.parse(c.decode())
        for c in a.redis.client().pubsub_channels(f"{ANNOUNCE_ROOT}:*")
    }
    assert {(x.redis_db, x.prefix.startswith("livefolio-")) for x in announced} == {
        (7, True),
        (8, True),
    }
    assert len({x.prefix for x in announced}) == 2


def test_an_ambiguous_configuration_is_refused_at_start_up_naming_the_variables(deployments):
    a, b = deployments["a"], deployments["b"]
    a.prefix = b.prefix = "shared"
    a.daphne()
    a.worker()

    # Another deployment with the same explicit prefix: pub/sub would mix them.
    refused = b.spawn(
        "daphne-same-prefix",
        [sys.executable, "-m", "streaming.serve", "-p", "0", "portfolio.asgi:application"],
    )
    assert refused.proc.wait(timeout=60) != 0
    assert "LIVEFOLIO_REDIS_PREFIX='shared' is in use" in refused.output()
    worker = b.spawn(
        "worker-same-prefix",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "portfolio",
            "worker",
            "--pool=solo",
            "--without-gossip",
            "--without-mingle",
        ],
    )
    assert worker.proc.wait(timeout=60) != 0
    assert "LIVEFOLIO_REDIS_PREFIX='shared' is in use" in worker.output()
    feed_b = b.spawn("feed-same-prefix", [sys.executable, "manage.py", "runfeed", "simulated"])
    assert feed_b.proc.wait(timeout=60) != 0
    assert "LIVEFOLIO_REDIS_PREFIX='shared' is in use" in feed_b.output()

    # Another deployment on the same Redis database: its Celery queue would be shared.
    b.prefix, b.redis_url = None, a.redis_url
    same_db = b.spawn(
        "daphne-same-redis-db",
        [sys.executable, "-m", "streaming.serve", "-p", "0", "portfolio.asgi:application"],
    )
    assert same_db.proc.wait(timeout=60) != 0
    assert "REDIS_URL database 7 is in use by another deployment" in same_db.output()

    # More processes of deployment A itself are welcome.
    a.daphne(name="daphne-2")
    wait_until(
        lambda: len(a.redis.client().pubsub_channels(f"{ANNOUNCE_ROOT}:*")) == 1,
        timeout=10,
        what="one announcement (A's) once B's refused processes are gone",
    )
