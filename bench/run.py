"""One command that runs the real stack on this machine and puts it beside a raw floor.

    python bench/run.py [--scenario portfolio|broadcast|ingest|idle --clients C --users U
                         --instruments I --holdings H --rate R
                         --seconds T --daphne N --workers N]

Scenarios, one module each in bench/scenarios/: ``portfolio`` (default), ``broadcast``,
``ingest``, ``idle`` (each module's docstring says what it runs and checks).

Needs DATABASE_URL (a PostgreSQL database of its own: it is created, migrated and WIPED),
REDIS_URL (a Redis db of its own: it is FLUSHDB'd) and LIVEFOLIO_REDIS_PREFIX. Both names must
contain "bench" unless --i-mean-it is given, so a test or dev database is never wiped by mistake.

What one run does (bench/README.md explains how to read it):
1. seeds U users, each with one portfolio of ~H holdings out of I simulated instruments, all
   with a starting quote; a few users log in through the real login form, the others get their
   session through Django's session engine (an Argon2 login costs ~100 ms of CPU each);
2. starts N daphne, N Celery workers (solo pool: one process each) and ``manage.py runfeed
   simulated --rate R``; connects C WebSocket clients from separate client processes;
3. measures T seconds: tick -> client latency, delivered messages/s, per-process CPU and RSS,
   Redis commands/s; stops the feed, lets the workers drain, then checks final-state loss: each
   client's last valuation must equal ``live_states.portfolio_states`` from the database;
4. runs the floor (bench/floor.py) with the same clients, payloads and rates, and prints
   Livefolio's figures as ratios to the floor's. JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.processes import ROOT, git_revision, speed_probe, speed_summary
from bench.report import ratio, table
from bench.scenarios import SCENARIOS
from bench.stack import run_floor, run_livefolio
from bench.world import bench_env, create_database, seed, setup_django

RESULTS = ROOT / "bench" / "results"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenario", choices=list(SCENARIOS), default="portfolio")
    p.add_argument(
        "--clients",
        type=int,
        default=None,
        help="WebSocket clients, one per user (default 200; ingest 1000)",
    )
    p.add_argument(
        "--users",
        type=int,
        default=None,
        help="users seeded (default: --clients; ingest 10000)",
    )
    p.add_argument("--instruments", type=int, default=200)
    p.add_argument("--holdings", type=int, default=20, help="holdings per portfolio")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="feed ticks per second (default 200; broadcast 5; ingest 5000)",
    )
    p.add_argument(
        "--window-ms",
        type=int,
        default=100,
        help="the floor's coalescing window (Livefolio's feed has none: streaming/mailbox.py)",
    )
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=3.0, help="feed seconds before measuring")
    p.add_argument("--daphne", type=int, default=1, help="daphne processes")
    p.add_argument(
        "--plain-daphne",
        action="store_true",
        help="start plain `daphne` instead of `python -m streaming.serve` (to compare)",
    )
    p.add_argument("--workers", type=int, default=1, help="Celery worker processes")
    p.add_argument("--client-procs", type=int, default=1, help="client processes")
    p.add_argument("--real-logins", type=int, default=3, help="users logged in by form POST")
    p.add_argument(
        "--drain",
        type=float,
        default=None,
        help="max seconds to drain after the feed stops (default 90; ingest 30)",
    )
    p.add_argument("--no-floor", action="store_true", help="skip the floor run")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--label", default="", help="free text stored in the result (e.g. a change)")
    p.add_argument("--i-mean-it", action="store_true", help="allow names without 'bench'")
    args = p.parse_args()
    scenario = SCENARIOS[args.scenario]
    for name, value in scenario.defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.users = args.users or args.clients
    if args.clients > args.users:
        p.error("--clients: at most one client per user (raise --users)")
    scenario.adjust(args)
    if args.holdings > args.instruments:
        p.error("--holdings: cannot exceed --instruments")
    return args


def settings_value(name: str) -> Any:
    from django.conf import settings

    return getattr(settings, name)


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every child process.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args = parse_args()
    scenario = SCENARIOS[args.scenario]
    env = bench_env(args)
    create_database()
    setup_django(env)
    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    r.flushdb()  # this Redis db is the bench's own (checked above)
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    speed = speed_summary([speed_probe() for _ in range(25)])  # the machine alone
    world = seed(args, scenario)
    logs = Path(tempfile.mkdtemp(prefix="livefolio-bench-"))
    result: dict[str, Any] = {
        "args": vars(args),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "revision": git_revision(),
        "channel_layer": settings_value("CHANNEL_LAYERS")["default"]["BACKEND"],
        "loadavg_start": loadavg_start,
        "machine_speed": speed,
        "logs": str(logs),
    }
    result["livefolio"] = run_livefolio(args, scenario, env, logs, world, r)
    if not args.no_floor:
        r.flushdb()
        result["floor"] = run_floor(args, scenario, env, logs, world, r)
        lf, fl = result["livefolio"], result["floor"]
        result["ratios"] = {
            "msgs_per_server_cpu_s": ratio(
                lf["msgs_per_server_cpu_s"], fl["msgs_per_server_cpu_s"]
            ),
            "p99": ratio(
                lf["delivered"]["latency"]["p99_ms"], fl["delivered"]["latency"]["p99_ms"]
            ),
            "delivered_msgs_per_s": ratio(
                lf["delivered"]["msgs_per_s"], fl["delivered"]["msgs_per_s"]
            ),
        }
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"{stamp}-{args.scenario}-c{args.clients}.json"
    out.write_text(json.dumps(result, indent=2))
    print()
    print(table(result))
    print(f"\nresult: {out}\nlogs: {logs}")


if __name__ == "__main__":
    main()
