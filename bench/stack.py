"""The two runs every scenario makes: Livefolio's real stack (daphne, Celery workers, the
simulated feed) and the floor (bench/floor.py), with the same clients, payloads and rates."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from bench.backlog import IngestMonitor
from bench.processes import (
    PYTHON,
    ROOT,
    ClientProc,
    Proc,
    Sampler,
    TickRate,
    free_port,
    measure_window,
    merge,
    per_server_cpu,
    start_clients,
)
from bench.scenarios.base import Scenario
from bench.world import presence_established, session_cookies


def wait_drained(r: redis.Redis, timeout: float) -> float:
    """Seconds until Celery has no queued and no running task (bounded by ``timeout``), plus
    the one second the final-state check allows for delivery. Tasks are acknowledged late, so
    a running task stays in kombu's ``unacked`` hash until it has published."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if r.llen("celery") == 0 and r.hlen("unacked") == 0:
            break
        time.sleep(0.2)
    drained = time.monotonic() - started
    time.sleep(1.0)
    return round(drained, 1)


def client_states(clients: list[ClientProc], logs: Path, tag: str) -> dict[str, Any]:
    """Every client's last states right now (client name -> its ``last``)."""
    states: dict[str, Any] = {}
    for c in clients:
        path = logs / f"{c.name}-states-{tag}.json"
        c.send(f"dump {path}")
        c.expect("dumped")
        states.update(json.loads(path.read_text()))
    return states


def wait_quiet(clients: list[ClientProc], quiet: float, timeout: float) -> float:
    """Seconds until no client has received a frame for ``quiet`` s (bounded by ``timeout``):
    whatever was still on its way (in daphne, the channel layer) has arrived by then."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        since = []
        for c in clients:
            c.send("quiet")
            since.append(float(c.expect("quiet")[0]))
        if min(since, default=quiet) >= quiet:
            break
        time.sleep(0.5)
    return round(time.monotonic() - started, 1)


class FeedCounter(TickRate):
    """The feed's achieved tick rate over the window, from the health row it writes every 2 s
    (FeedStatus.messages and heartbeat_at: the feed's own count, not what was asked of it)."""

    def __init__(self, kind: str = "simulated") -> None:
        self.kind = kind

    def read(self) -> tuple[int, datetime] | None:
        from portfolio.models import FeedStatus

        return (
            FeedStatus.objects.filter(feed=self.kind)
            .values_list("messages", "heartbeat_at")
            .first()
        )


def measure(clients, procs, r, hooks, seconds: float, *, pings: bool):
    """Sample ``seconds`` of the run; then, if the scenario pings, how many clients answered.
    Returns (the sampled run, the clients that answered or None)."""
    sampler = Sampler(procs, r, hooks)
    measure_window(clients, sampler, seconds)
    pinged = None
    if pings:
        for c in clients:
            c.send("ping")
        pinged = sum(int(c.expect("pinged")[0]) for c in clients)
    return sampler.stop(), pinged


def run_livefolio(args, scenario: Scenario, env, logs, world, r) -> dict[str, Any]:
    ports = [free_port() for _ in range(args.daphne)]
    servers = [
        Proc(
            f"daphne-{n}",
            [
                PYTHON,
                "-m",
                "daphne" if args.plain_daphne else "streaming.serve",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "portfolio.asgi:application",
            ],
            env,
            logs,
        )
        for n, port in enumerate(ports)
    ]
    workers = [
        Proc(
            f"worker-{n}",
            [
                PYTHON,
                str(ROOT / "bench" / "worker.py"),  # celery -A portfolio worker + batch records
                "worker",
                "--pool=solo",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"bench{n}@%h",
            ],
            env,
            logs,
        )
        for n in range(args.workers)
    ]
    procs: list[Proc] = [*servers, *workers]
    clients: list[ClientProc] = []
    try:
        for s in servers:
            s.wait_for("Listening on TCP address")
        for w in workers:
            w.wait_for("ready.")
        base = f"http://127.0.0.1:{ports[0]}"
        users = world["users"][: args.clients]
        started = time.monotonic()
        cookies = session_cookies(users, base, args.real_logins)
        print(
            f"sessions for {len(cookies)} users ({args.real_logins} by login form)"
            f" in {time.monotonic() - started:.1f}s",
            flush=True,
        )
        from django.conf import settings

        page = scenario.page(world)
        specs = [
            {
                "name": str(u.id),
                "url": f"ws://127.0.0.1:{ports[n % len(ports)]}{page}",
                "headers": {
                    "Origin": f"http://127.0.0.1:{ports[n % len(ports)]}",
                    "Cookie": f"{settings.SESSION_COOKIE_NAME}={cookies[u.id]}",
                },
            }
            for n, u in enumerate(users)
        ]
        started = time.monotonic()
        clients = start_clients(specs, args.client_procs, env, logs, "livefolio")
        connect_s = time.monotonic() - started
        procs += clients
        presence_established(r)
        feed = None
        hooks: list[Any] = []
        monitor = counter = None
        if scenario.feed:
            command = [PYTHON, "manage.py", "runfeed", "simulated"]
            monitor = IngestMonitor(os.environ["REDIS_URL"])
            counter = FeedCounter()
            hooks = [monitor, counter]
            feed = Proc(
                "feed",
                [*command, "--rate", str(args.rate), "--seed", str(args.seed)],
                env,
                logs,
            )
            procs.append(feed)
            monitor.start()
            time.sleep(args.warmup)
        run, pinged = measure(clients, procs, r, hooks, args.seconds, pings=scenario.pings)
        drain_s = None
        ingest = None
        if feed is not None:
            feed.stop()
            monitor.feed_stopped()
            drain_s = wait_drained(r, args.drain)
            monitor.stop()
            ingest = monitor.summary(drain_s, args.drain)
            ingest["feed_ticks_per_s"] = counter.ticks_per_s()
        loss = settled = None
        settle_s = None
        if feed is not None:
            # The criterion: 1 s after the feed stopped and Celery drained. Then, when
            # some client is stale, wait until deliveries stop and look again: what is still
            # stale then was lost, the rest was late (queued in daphne or the channel layer).
            loss = scenario.final_loss(client_states(clients, logs, "drained"), world)
            settled = loss
            if loss["stale"] and r.llen("celery") + r.hlen("unacked") == 0:
                settle_s = wait_quiet(clients, 2.0, args.drain)
                settled = scenario.final_loss(client_states(clients, logs, "settled"), world)
                settled["quiet_after_s"] = settle_s
        delivered = merge([c.finish() for c in clients])
        delivered.pop("last")
        run.update(
            connect_s=round(connect_s, 1),
            drain_s=drain_s,
            backlog_after_drain=r.llen("celery") + r.hlen("unacked"),
            delivered=delivered,
            pinged=pinged,
            loss=loss,
            loss_settled=settled,
            ingest=ingest,
            feed_ticks_per_s=ingest["feed_ticks_per_s"] if ingest else None,
        )
        run["msgs_per_server_cpu_s"] = per_server_cpu(run, ("daphne", "worker", "feed", "postgres"))
        run["msgs_per_daphne_cpu_s"] = per_server_cpu(run, ("daphne",))
        return run
    finally:
        for p in procs:
            if not isinstance(p, ClientProc) or p.popen.poll() is None:
                p.stop()


class PublisherTicks(TickRate):
    """The floor publisher's achieved tick rate over the window, from its per-second lines."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc

    def read(self) -> tuple[int, float] | None:
        self.proc.log.flush()
        lines = [x.split() for x in self.proc.log_path.read_text().splitlines()]
        found = [(int(x[1]), float(x[2])) for x in lines if len(x) == 3 and x[0] == "ticks"]
        return found[-1] if found else None


def run_floor(args, scenario: Scenario, env, logs, world, r) -> dict[str, Any]:
    port = free_port()
    redis_url = os.environ["REDIS_URL"]
    server = Proc(
        "floor-server",
        [
            PYTHON,
            str(ROOT / "bench" / "floor.py"),
            "server",
            "--port",
            str(port),
            "--redis",
            redis_url,
        ],
        env,
        logs,
    )
    procs: list[Proc] = [server]
    clients: list[ClientProc] = []
    try:
        server.wait_for("floor listening")
        users = world["users"][: args.clients]
        query = scenario.floor_query(world)
        specs = [
            {"name": str(u.id), "url": f"ws://127.0.0.1:{port}/?user={u.id}{query}"} for u in users
        ]
        clients = start_clients(specs, args.client_procs, env, logs, "floor")
        procs += clients
        publisher = None
        hooks: list[Any] = []
        if scenario.feed:
            window = args.window_ms / 1000
            job_spec: dict[str, Any] = {
                "rate": args.rate,
                "window": window,
                "seconds": args.warmup + args.seconds + 5,
                "instruments": world["active"],
                "seed": args.seed,
            }
            job_spec.update(scenario.floor_job(world, users, window))
            job = logs / "floor-publisher.json"
            job.write_text(json.dumps(job_spec))
            publisher = Proc(
                "floor-publisher",
                [
                    PYTHON,
                    str(ROOT / "bench" / "floor.py"),
                    "publish",
                    str(job),
                    "--redis",
                    redis_url,
                ],
                env,
                logs,
            )
            procs.append(publisher)
            hooks.append(PublisherTicks(publisher))
            time.sleep(args.warmup)
        run, pinged = measure(clients, procs, r, hooks, args.seconds, pings=scenario.pings)
        delivered = merge([c.finish() for c in clients])
        delivered.pop("last")
        server.log.flush()
        run.update(
            delivered=delivered,
            pinged=pinged,
            feed_ticks_per_s=hooks[0].ticks_per_s() if hooks else None,
            # Times Redis dropped the floor's subscription (it fell 32 MiB behind): the floor
            # itself could not carry the offered load.
            subscription_lost=server.log_path.read_text().count("subscription lost"),
        )
        run["msgs_per_server_cpu_s"] = per_server_cpu(run, ("floor-server", "floor-publisher"))
        run["msgs_per_daphne_cpu_s"] = per_server_cpu(run, ("floor-server",))
        return run
    finally:
        for p in procs:
            if not isinstance(p, ClientProc) or p.popen.poll() is None:
                p.stop()
