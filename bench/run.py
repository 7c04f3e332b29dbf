"""One command that runs the real stack on this machine and puts it beside a raw floor.

    python bench/run.py [--scenario portfolio|broadcast|ingest|idle --clients C --users U
                         --instruments I --holdings H --rate R
                         --seconds T --daphne N --workers N]

Scenarios:
- ``portfolio`` (default): C clients on /ws/portfolio/, one user each, each user a portfolio of H
  holdings over I instruments; the feed ticks R/s over all I. Latency of valuations.
- ``broadcast``: C clients on ONE instrument's page /ws/instrument/<symbol>/ (the issue's
  "1,000 clients subscribed to one instrument's quotes at 5 updates/s"); only that instrument is
  active, so the feed's R ticks/s (default 5) all land on it, each a quote; the users hold
  nothing (no valuations). Latency of quotes; final state: each client's last quote price
  equals the database's.
- ``ingest``: "one Celery worker keeps up with 5,000 ticks/s while valuing 10,000 portfolios":
  U users (default 10,000) with H-holding portfolios over I instruments, the feed at R (default
  5,000 ticks/s), C clients (default 1,000) on /ws/portfolio/. Reports the
  Celery backlog over the run, batches and quotes stored per second, the ingest lag and whether
  the worker keeps up (the backlog does not grow and drains within 5 s of the feed stopping).
- ``idle``: C clients connected, no feed; every socket must still answer a ping after T s.

Needs DATABASE_URL (a PostgreSQL database of its own: it is created, migrated and WIPED),
REDIS_URL (a Redis db of its own: it is FLUSHDB'd) and LIVEFOLIO_REDIS_PREFIX. Both names must
contain "bench" unless --i-mean-it is given, so a test or dev database is never wiped by mistake.

What one run does (README "Benchmarks" and docs/performance.md explain how to read it):
1. seeds U users, each with one portfolio of ~H holdings out of I simulated instruments, all
   with a starting quote; a few users log in through the real login form, the others get their
   session through Django's session engine (an Argon2 login costs ~100 ms of CPU each);
2. starts N daphne, N Celery workers (solo pool: one process each) and ``manage.py runfeed
   simulated --rate R``; connects C WebSocket clients from separate client processes;
3. measures T seconds: tick -> client latency, delivered messages/s, per-process CPU and RSS,
   Redis commands/s; stops the feed, lets the workers drain, then checks final-state loss: each
   client's last valuation must equal ``selectors.portfolio_states`` from the database;
4. runs the floor (bench/floor.py) with the same clients, payloads and rates, and prints
   Livefolio's figures as ratios to the floor's. JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import redis

from portfolio import wire
from streaming import namespace

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
PASSWORD = "bench-password-not-secret"


# Per scenario: what a flag left out means (README and docs/performance.md show the commands).
SCENARIO_DEFAULTS: dict[str, dict[str, Any]] = {
    "portfolio": {"clients": 200, "users": None, "rate": 200.0, "drain": 90.0},
    "broadcast": {"clients": 200, "users": None, "rate": 5.0, "drain": 90.0},
    "ingest": {"clients": 1000, "users": 10_000, "rate": 5000.0, "drain": 30.0},
    "idle": {"clients": 200, "users": None, "rate": 200.0, "drain": 90.0},
}
# "Keeps up": the Celery backlog grows by at most this many tasks over the measured window
# (a worker that keeps up holds one task and maybe one queued) and empties within DRAIN_OK_S
# of the feed stopping.
BACKLOG_GROWTH_OK = 2
DRAIN_OK_S = 5.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenario", choices=list(SCENARIO_DEFAULTS), default="portfolio")
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
        help="start plain `daphne` instead of `python -m streaming.serve` (to compare memory)",
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
    for name, value in SCENARIO_DEFAULTS[args.scenario].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.users = args.users or args.clients
    if args.clients > args.users:
        p.error("--clients: at most one client per user (raise --users)")
    if args.scenario == "broadcast":
        args.instruments = max(args.instruments, 1)
        args.holdings = 0  # the instrument page's users hold nothing: only quotes flow
    if args.holdings > args.instruments:
        p.error("--holdings: cannot exceed --instruments")
    return args


# ---------------------------------------------------------------- environment and database


def bench_env(args: argparse.Namespace) -> dict[str, str]:
    missing = [
        n for n in ("DATABASE_URL", "REDIS_URL", "LIVEFOLIO_REDIS_PREFIX") if not os.environ.get(n)
    ]
    if missing:
        sys.exit(f"bench: set {', '.join(missing)} (a database and Redis db of the bench's own)")
    db_name = urlsplit(os.environ["DATABASE_URL"]).path.lstrip("/")
    if not args.i_mean_it and "bench" not in db_name:
        sys.exit(
            f"bench: DATABASE_URL names {db_name!r}; it will be wiped. Use a *bench* database."
        )
    if not args.i_mean_it and "bench" not in os.environ["LIVEFOLIO_REDIS_PREFIX"]:
        sys.exit("bench: LIVEFOLIO_REDIS_PREFIX must contain 'bench' (its Redis db is flushed)")
    env = dict(os.environ)
    env.setdefault("DJANGO_SECRET_KEY", "bench-only-secret-key-0123456789abcdefghijklmnopqrstuv")
    env.update(
        DJANGO_SETTINGS_MODULE="portfolio.settings",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    os.environ.update(env)
    return env


def create_database() -> None:
    import psycopg

    url = urlsplit(os.environ["DATABASE_URL"])
    name = url.path.lstrip("/")
    admin = url._replace(path="/postgres").geturl().replace("postgres://", "postgresql://", 1)
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def setup_django(env: dict[str, str]) -> None:
    subprocess.run([PYTHON, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def seed(args: argparse.Namespace) -> dict[str, Any]:
    """Wipe the bench database and create users, instruments, quotes, portfolios, holdings."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.db import connection, transaction

    from portfolio.models import AssetClass, FeedKind, Holding, Instrument, Portfolio, Quote

    user_model = get_user_model()
    rng = random.Random(args.seed)
    started = time.monotonic()
    with transaction.atomic():
        with connection.cursor() as cursor:
            tables = [Holding, Portfolio, Quote, Instrument, user_model]
            names = ", ".join(connection.ops.quote_name(m._meta.db_table) for m in tables)
            cursor.execute(f"TRUNCATE {names}, django_session CASCADE")
        instruments = Instrument.objects.bulk_create(
            Instrument(
                symbol=f"BENCH{i:05d}-USD",
                name=f"Bench instrument {i}",
                asset_class=AssetClass.CRYPTO,
                quote_currency="USD",
                feed=FeedKind.SIMULATED,
                feed_symbol=f"BENCH{i:05d}",
                # Broadcast: the first instrument is the only one the feed streams.
                active=args.scenario != "broadcast" or i == 0,
            )
            for i in range(args.instruments)
        )
        # Starting quotes an hour old, so the first valuations already carry prices.
        old = datetime.now(UTC) - timedelta(hours=1)
        Quote.objects.bulk_create(
            Quote(
                instrument=inst,
                price=Decimal(rng.randint(10, 5000)),
                exchange_ts=old,
                received_at=old,
                source=FeedKind.SIMULATED,
            )
            for inst in instruments
        )
        hashed = make_password(PASSWORD)
        users = user_model.objects.bulk_create(
            user_model(username=f"bench{n:06d}", password=hashed) for n in range(args.users)
        )
        # Broadcast: users without portfolios. The instrument page also joins its user's group,
        # but with nothing held no valuation reaches it: only the one instrument's quotes flow.
        portfolios = []
        if args.scenario != "broadcast":
            portfolios = Portfolio.objects.bulk_create(
                (Portfolio(owner=u, name="Bench", base_currency="USD") for u in users),
                batch_size=5000,
            )
        holdings = []
        held: dict[int, list[int]] = {}
        for portfolio in portfolios:
            chosen = rng.sample(instruments, args.holdings)
            held[portfolio.owner_id] = [i.id for i in chosen]
            holdings += [
                Holding(
                    portfolio=portfolio,
                    instrument=inst,
                    quantity=Decimal(rng.randint(1, 10_000)) / 100,
                    cost_basis=Decimal("1000"),
                )
                for inst in chosen
            ]
        Holding.objects.bulk_create(holdings, batch_size=5000)
    with connection.cursor() as cursor:
        # Planner statistics, as autovacuum keeps them in production: without them (autovacuum
        # is off on some machines, and a fresh seed has none) PostgreSQL plans on guesses, and
        # the bench would time plans production does not run.
        cursor.execute("ANALYZE")
    print(
        f"seeded {len(users)} users, {len(instruments)} instruments, {len(portfolios)} "
        f"portfolios, {len(holdings)} holdings in {time.monotonic() - started:.1f}s",
        flush=True,
    )
    active = [i.id for i in instruments if i.active]
    return {
        "users": users,
        "portfolio_of": {p.owner_id: p.id for p in portfolios},
        "held": held,
        "active": active,
        # Broadcast: the one streamed instrument, whose page every client opens.
        "instrument": {"id": instruments[0].id, "symbol": instruments[0].symbol},
    }


def session_cookies(users: list, base_url: str, real_logins: int) -> dict[int, str]:
    """Session cookie per user: the first ``real_logins`` through the real login form (proves
    the path works), the rest written through Django's session engine in bulk."""
    import http.cookiejar
    import re
    import urllib.parse
    import urllib.request

    from django.conf import settings
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        load_backend,
    )
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils.crypto import get_random_string

    name = settings.SESSION_COOKIE_NAME
    cookies: dict[int, str] = {}
    for user in users[:real_logins]:
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        page = opener.open(f"{base_url}/login/", timeout=30).read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        form = urllib.parse.urlencode(
            {"username": user.username, "password": PASSWORD, "csrfmiddlewaretoken": token}
        ).encode()
        request = urllib.request.Request(
            f"{base_url}/login/", data=form, headers={"Referer": f"{base_url}/login/"}
        )
        opener.open(request, timeout=30).read()
        value = next((c.value for c in jar if c.name == name), None)
        if value is None:
            sys.exit(f"bench: the login form did not log {user.username} in")
        cookies[user.id] = value
    rest = users[real_logins:]
    store = SessionStore()
    expire = datetime.now(UTC) + timedelta(days=1)
    # The backend a login records is the one that authenticated: the first that can also load
    # the user again (axes' backend, listed first, only guards logins and has no get_user).
    backend = next(
        path for path in settings.AUTHENTICATION_BACKENDS if hasattr(load_backend(path), "get_user")
    )
    sessions = []
    for user in rest:
        key = get_random_string(32, "abcdefghijklmnopqrstuvwxyz0123456789")
        data = {
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: backend,
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
        sessions.append(
            Session(session_key=key, session_data=store.encode(data), expire_date=expire)
        )
        cookies[user.id] = key
    Session.objects.bulk_create(sessions, batch_size=2000)
    return cookies


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process with its output in a log file under the run's directory."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path, **kw: Any):
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.log = self.log_path.open("w")
        self.popen = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=kw.pop("stdout", self.log), stderr=self.log, **kw
        )
        self.ps = psutil.Process(self.popen.pid)
        self.cpu0 = 0.0
        self.rss_max = 0

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.log.flush()
            if text in self.log_path.read_text():
                return
            if self.popen.poll() is not None:
                sys.exit(f"bench: {self.name} exited:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        sys.exit(f"bench: {self.name} did not say {text!r}:\n{self.log_path.read_text()[-3000:]}")

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu(self) -> float:
        total = 0.0
        for p in self.tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def rss(self) -> int:
        total = 0
        for p in self.tree():
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        self.rss_max = max(self.rss_max, total)
        return total

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()


class ClientProc(Proc):
    """bench/clients.py, driven over stdin/stdout."""

    def __init__(self, name: str, job: Path, result: Path, env: dict[str, str], logs: Path):
        super().__init__(
            name,
            [PYTHON, str(ROOT / "bench" / "clients.py"), str(job), str(result)],
            env,
            logs,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.result = result

    def send(self, line: str) -> None:
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def expect(self, word: str) -> list[str]:
        line = self.popen.stdout.readline().split()
        if not line or line[0] != word:
            sys.exit(
                f"bench: {self.name} said {line!r}, expected {word!r}:\n"
                + self.log_path.read_text()[-3000:]
            )
        return line[1:]

    def finish(self) -> dict[str, Any]:
        self.send("stop")
        self.expect("done")
        self.popen.wait(60)
        self.log.close()
        return json.loads(self.result.read_text())


def start_clients(
    specs: list[dict[str, Any]], procs: int, env: dict[str, str], logs: Path, tag: str
) -> list[ClientProc]:
    clients = []
    for n in range(procs):
        job = logs / f"{tag}-clients-{n}.json"
        job.write_text(json.dumps(specs[n::procs]))
        clients.append(
            ClientProc(f"{tag}-clients-{n}", job, logs / f"{tag}-result-{n}.json", env, logs)
        )
    for c in clients:
        connected, failed = c.expect("connected")
        print(f"{c.name}: {connected} connected, {failed} failed", flush=True)
    return clients


class PostgresBackends:
    """CPU of the PostgreSQL backends serving the bench database (the machine's server is shared,
    so only backends whose title names this database count; one that exits between samples
    loses its last interval)."""

    name = "postgres-backends"

    def __init__(self, dbname: str) -> None:
        self.needle = f" {dbname} "
        self.cpu0: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.rss_max = 0

    def _scan(self) -> dict[int, float]:
        seen = {}
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if cmd.startswith("postgres:") and self.needle in cmd:
                try:
                    t = p.cpu_times()
                    seen[p.pid] = t.user + t.system
                except psutil.NoSuchProcess:
                    pass
        return seen

    def start(self) -> None:
        self.cpu0 = self._scan()
        self.last = dict(self.cpu0)

    def sample(self) -> None:
        self.last.update(self._scan())

    def cpu(self) -> float:
        return sum(v - self.cpu0.get(pid, 0.0) for pid, v in self.last.items())


class Sampler:
    """CPU seconds and RSS of each process between ``start`` and ``stop``; Redis commands/s."""

    def __init__(
        self, procs: list[Proc], redis_client: redis.Redis, hooks: list[Any] | None = None
    ) -> None:
        self.procs = procs
        self.redis = redis_client
        self.postgres = PostgresBackends(urlsplit(os.environ["DATABASE_URL"]).path.lstrip("/"))
        self.hooks = hooks or []  # objects with window_start() / window_end(): edges of the window
        self.speed: list[float] = []  # speed_probe() once a second through the window

    def start(self) -> None:
        for hook in self.hooks:
            hook.window_start()
        self.t0 = time.monotonic()
        self.cmd0 = self.redis.info("stats")["total_commands_processed"]
        self.postgres.start()
        for p in self.procs:
            p.cpu0 = p.cpu()
            p.rss()

    def sample(self) -> None:
        self.speed.append(speed_probe())
        self.postgres.sample()
        for p in self.procs:
            p.rss()

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        for hook in self.hooks:
            hook.window_end()
        cmds = self.redis.info("stats")["total_commands_processed"] - self.cmd0
        self.postgres.sample()
        procs = {}
        for p in self.procs:
            cpu = p.cpu() - p.cpu0
            procs[p.name] = {
                "cpu_s": round(cpu, 2),
                "cpu_pct": round(100 * cpu / wall, 1),
                "rss_mib": round(p.rss() / 2**20, 1),
                "rss_max_mib": round(p.rss_max / 2**20, 1),
            }
        pg = self.postgres.cpu()
        procs[self.postgres.name] = {
            "cpu_s": round(pg, 2),
            "cpu_pct": round(100 * pg / wall, 1),
            "rss_mib": None,
            "rss_max_mib": None,
        }
        return {
            "wall_s": round(wall, 2),
            "redis_cmds_per_s": round(cmds / wall),
            "procs": procs,
            "machine_speed": speed_summary(self.speed) if self.speed else None,
        }


def measure_window(clients: list[ClientProc], sampler: Sampler, seconds: float) -> None:
    for c in clients:
        c.send("measure")
    for c in clients:
        c.expect("measuring")
    sampler.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        sampler.sample()
    for c in clients:
        c.send("pause")
    for c in clients:
        c.expect("paused")


# ---------------------------------------------------------------- results


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    values = sorted(values)

    def at(q: float) -> float:
        return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 1)

    return {
        "n": len(values),
        "p50_ms": at(0.5),
        "p90_ms": at(0.9),
        "p99_ms": at(0.99),
        "max_ms": round(1000 * values[-1], 1),
    }


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [x for r in results for x in r["latencies"]]
    seconds = max((r["seconds"] for r in results), default=0) or 1
    messages = sum(r["messages"] for r in results)
    return {
        "clients": sum(r["clients"] for r in results),
        "connected": sum(r["connected"] for r in results),
        "connect_errors": sum(r["connect_error_count"] for r in results),
        "connect_error_samples": [e for r in results for e in r["connect_errors"]][:5],
        "closed_early": sum(r["closed_early"] for r in results),
        "seq_errors": sum(r["seq_errors"] for r in results),
        "messages": messages,
        "msgs_per_s": round(messages / seconds, 1),
        "bytes_per_msg": round(sum(r["bytes"] for r in results) / messages) if messages else None,
        "latency": percentiles(latencies),
        # Quotes only: the feed runner's flush (``received``) -> client, without the window's wait.
        "flush_latency": percentiles([x for r in results for x in r.get("flush_latencies", ())]),
        # Valuations only: the worker's ``valued_at`` (its pass began; floor: published) -> client.
        "valued_latency": percentiles([x for r in results for x in r.get("valued_latencies", ())]),
        "last": {k: v for r in results for k, v in r["last"].items()},
    }


def per_server_cpu(run: dict[str, Any], server_prefixes: tuple[str, ...]) -> float | None:
    cpu = sum(v["cpu_s"] for k, v in run["procs"].items() if k.startswith(server_prefixes))
    return round(run["delivered"]["messages"] / cpu, 1) if cpu else None


def final_state_loss(
    last: dict[str, dict[str, Any]], portfolio_of: dict[int, int]
) -> dict[str, Any]:
    """Clients whose last portfolio state differs from the database's, after the feed stopped."""
    from portfolio import selectors

    ids = {int(user): portfolio_of[int(user)] for user in last}
    truth = {s["id"]: s for s in selectors.portfolio_states(portfolio_ids=ids.values())}
    stale = []
    for user, pid in ids.items():
        seen = last[str(user)].get(str(pid))
        if seen is None or valued(seen) != valued(json.loads(json.dumps(truth[pid]))):
            stale.append(user)
    return {"checked": len(ids), "stale": len(stale), "stale_users": stale[:10]}


# What moves with the clock, not with the data: when it was valued, how old each price is.
_CLOCK_FIELDS = ("valued_at",)
_CLOCK_HOLDING_FIELDS = ("price_age_seconds", "stale")


def valued(state: dict[str, Any]) -> dict[str, Any]:
    """A portfolio state without the fields that change with the clock alone."""
    holdings = [
        {k: v for k, v in h.items() if k not in _CLOCK_HOLDING_FIELDS} for h in state["holdings"]
    ]
    return {k: v for k, v in state.items() if k not in _CLOCK_FIELDS} | {"holdings": holdings}


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


def final_quote_loss(last: dict[str, dict[str, Any]], instrument_id: int) -> dict[str, Any]:
    """Broadcast: clients whose last quote of the instrument is not the database's price."""
    from portfolio.models import Quote

    truth = wire.dec(Quote.objects.get(instrument_id=instrument_id).price)
    key = f"quote:{instrument_id}"
    stale = [user for user, seen in last.items() if (seen.get(key) or {}).get("price") != truth]
    return {"checked": len(last), "stale": len(stale), "stale_users": stale[:10], "price": truth}


class TickRate:
    """A tick count's rate over the measured window: ``read()`` gives (count, time) or None."""

    first: tuple[int, Any] | None = None
    last: tuple[int, Any] | None = None

    def read(self) -> tuple[int, Any] | None:
        raise NotImplementedError

    def window_start(self) -> None:
        self.first = self.read()

    def window_end(self) -> None:
        self.last = self.read()

    def ticks_per_s(self) -> float | None:
        if not (self.first and self.last) or self.last[1] <= self.first[1]:
            return None
        elapsed = self.last[1] - self.first[1]
        seconds = elapsed.total_seconds() if isinstance(elapsed, timedelta) else elapsed
        return round((self.last[0] - self.first[0]) / seconds, 1)


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


class IngestMonitor:
    """The Celery backlog (``LLEN celery`` + ``HLEN unacked``: queued + taken, not yet acked)
    every 0.2 s from a thread, from the feed's start until the drain ends; the window's edges;
    and at the end the per-batch records bench/worker.py pushed (batches, quotes stored, lag)
    plus the stack's own running totals (streaming/health.py ``record_ingest``)."""

    PERIOD = 0.2

    def __init__(self, redis_url: str) -> None:

        self.redis = redis.Redis.from_url(redis_url, socket_timeout=5)
        self.stack_key = f"{namespace.redis_prefix()}:ingest"
        self.samples: list[tuple[float, int, int]] = []  # (wall time, queued, unacked)
        self.edges: dict[str, float] = {}
        self.stack: dict[str, dict[str, float]] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ingest-monitor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.llen("celery")
                pipe.hlen("unacked")
                queued, unacked = pipe.execute()
                self.samples.append((time.time(), queued, unacked))
            except redis.RedisError:
                pass
            self.stopping.wait(self.PERIOD)

    def _stack_totals(self) -> dict[str, float]:
        raw = self.redis.hgetall(self.stack_key)
        return {k.decode(): float(v) for k, v in raw.items()}

    def window_start(self) -> None:
        self.edges["start"] = time.time()
        self.stack["start"] = self._stack_totals()

    def window_end(self) -> None:
        self.edges["end"] = time.time()
        self.stack["end"] = self._stack_totals()

    def feed_stopped(self) -> None:
        self.edges["feed_stopped"] = time.time()

    def stop(self) -> None:
        self.edges["drain_end"] = time.time()
        self.stopping.set()
        self.thread.join(5)

    def summary(self, drain_s: float | None, drain_limit: float) -> dict[str, Any]:
        from bench.worker import BATCHES_KEY

        t0, t1 = self.edges["start"], self.edges["end"]
        seconds = t1 - t0
        window = [(t, q + u) for t, q, u in self.samples if t0 <= t <= t1]
        backlog = [b for _, b in window]
        slope = None
        if len(window) >= 2:  # least squares: tasks per second the backlog grew
            mt = sum(t for t, _ in window) / len(window)
            mb = sum(backlog) / len(backlog)
            var = sum((t - mt) ** 2 for t, _ in window)
            slope = sum((t - mt) * (b - mb) for t, b in window) / var if var else 0.0
        records = [json.loads(x) for x in self.redis.lrange(BATCHES_KEY, 0, -1)]
        inside = [x for x in records if t0 <= x["t"] <= t1]
        stopped = self.edges.get("feed_stopped", t1)
        after = [x for x in records if x["t"] > stopped]
        after_s = self.edges.get("drain_end", stopped) - stopped
        backlog_after = self.samples[-1][1] + self.samples[-1][2] if self.samples else None
        start, end = self.stack.get("start", {}), self.stack.get("end", {})
        stack_batches = end.get("batches", 0) - start.get("batches", 0)
        stack_seconds = end.get("seconds", 0) - start.get("seconds", 0)
        drained = backlog_after == 0 and drain_s is not None and drain_s < drain_limit
        growth = backlog[-1] - backlog[0] if backlog else None
        keeps_up = (
            growth is not None
            and growth <= BACKLOG_GROWTH_OK
            and drained
            and drain_s is not None
            and drain_s <= DRAIN_OK_S
        )
        drain_rate = len(after) / after_s if after_s > 0 else 0
        return {
            "backlog": {
                "start": backlog[0] if backlog else None,
                "max": max(backlog) if backlog else None,
                "end": backlog[-1] if backlog else None,
                "growth_per_s": None if slope is None else round(slope, 2),
                "samples": len(backlog),
            },
            "drain_s": drain_s,
            "drained": drained,
            "backlog_after_drain": backlog_after,
            # Not drained: at the rate the worker emptied it after the feed stopped.
            "drain_left_estimate_s": (
                round(backlog_after / drain_rate, 1)
                if backlog_after and drain_rate
                else (None if backlog_after else 0)
            ),
            "keeps_up": keeps_up,
            "batches_per_s": round(len(inside) / seconds, 2),
            "items_per_s": round(sum(x["items"] for x in inside) / seconds, 1),
            "quotes_stored_per_s": round(sum(x["changed"] or 0 for x in inside) / seconds, 1),
            "items_per_batch": (
                round(sum(x["items"] for x in inside) / len(inside), 1) if inside else None
            ),
            "task": percentiles([x["run_s"] for x in inside if x["run_s"] is not None]),
            "lag": percentiles([x["lag_s"] for x in inside if x["lag_s"] is not None]),
            # A slow worker may finish few batches inside the window: every batch finished from
            # the window's start to the end of the drain.
            "lag_through_drain": percentiles(
                [x["lag_s"] for x in records if x["t"] >= t0 and x["lag_s"] is not None]
            ),
            "failed_tasks": sum(1 for x in inside if x["state"] != "SUCCESS"),
            "worker_time": worker_time(inside, t0, seconds),
            "stack_metrics": {
                "batches_per_s": round(stack_batches / seconds, 2),
                "mean_task_s": round(stack_seconds / stack_batches, 4) if stack_batches else None,
                "last_lag_s": end.get("lag"),
            },
        }


def worker_time(records: list[dict[str, Any]], t0: float, seconds: float) -> dict[str, Any]:
    """Where each worker's wall time went between its ingest tasks (those finished after ``t0``):
    its busy share of the window and, per gap between two of its tasks, the part before the feed
    sent the next batch (the task's end, the acknowledgement, the feed noticing) and the part
    after (Celery bringing the batch to the worker). ``flush -> start`` is the batch's lag minus
    its run time; the flush stamp (``received``) is to the millisecond, so the split is too.
    All three are over the same gaps: those before a batch with ticks (a settling batch has no
    flush stamp)."""
    by_worker: dict[Any, list[dict[str, Any]]] = {}
    for x in records:
        by_worker.setdefault(x.get("worker"), []).append(x)
    busy, gaps, before, after = [], [], [], []
    for worker in sorted(by_worker, key=str):
        tasks = sorted(by_worker[worker], key=lambda x: x["t"])
        ran = [min(x["run_s"], x["t"] - t0) for x in tasks if x["run_s"] is not None]
        busy.append(round(100 * sum(ran) / seconds, 1))
        for previous, x in itertools.pairwise(tasks):
            if x["run_s"] is None or x["lag_s"] is None or not x["items"]:
                continue
            gap = x["t"] - x["run_s"] - previous["t"]
            gaps.append(gap)
            after.append(x["lag_s"] - x["run_s"])
            before.append(gap - after[-1])
    return {
        "busy_pct": busy,
        "gap": percentiles(gaps),
        "end_to_flush": percentiles(before),
        "flush_to_start": percentiles(after),
    }


# ---------------------------------------------------------------- the two runs


def presence_established(r: redis.Redis) -> None:
    """Every client has connected, so every one has marked its user present: let the workers
    trust presence now rather than one ttl after this fresh Redis saw its first mark (the wait
    that covers a Redis restart, when open sockets have not marked themselves again yet;
    streaming/flow.py present()). A server up for a minute is in this state."""
    from streaming import flow

    now, _ = r.time()
    r.set(flow.presence_keys()[1], now - flow.presence_ttl())


def run_livefolio(args, env, logs, world, r) -> dict[str, Any]:
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

        page = "/ws/portfolio/"
        if args.scenario == "broadcast":
            page = f"/ws/instrument/{world['instrument']['symbol']}/"
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
        if args.scenario != "idle":
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
        sampler = Sampler(procs, r, hooks)
        measure_window(clients, sampler, args.seconds)
        pinged = None
        if args.scenario == "idle":
            for c in clients:
                c.send("ping")
            pinged = sum(int(c.expect("pinged")[0]) for c in clients)
        run = sampler.stop()
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

            def check(states: dict[str, Any]) -> dict[str, Any]:
                if args.scenario == "broadcast":
                    return final_quote_loss(states, world["instrument"]["id"])
                return final_state_loss(states, world["portfolio_of"])

            # The criterion: 1 s after the feed stopped and Celery drained. Then, when
            # some client is stale, wait until deliveries stop and look again: what is still
            # stale then was lost, the rest was late (queued in daphne or the channel layer).
            loss = check(client_states(clients, logs, "drained"))
            settled = loss
            if loss["stale"] and r.llen("celery") + r.hlen("unacked") == 0:
                settle_s = wait_quiet(clients, 2.0, args.drain)
                settled = check(client_states(clients, logs, "settled"))
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


def floor_frames(world, users) -> dict[str, Any]:
    """Each user's real valuation frame (the same bytes Livefolio sends), as_of and valued_at
    left open (the floor's publisher stamps them)."""
    from portfolio import selectors
    from streaming import protocol

    pids = [world["portfolio_of"][u.id] for u in users]
    owner = {v: k for k, v in world["portfolio_of"].items()}
    frames = {}
    for state in selectors.portfolio_states(portfolio_ids=pids):
        state["as_of"], state["valued_at"] = "__AS_OF__", "__VALUED_AT__"
        frames[str(owner[state["id"]])] = protocol.envelope(
            protocol.valuation(portfolio=state), seq=1
        )
    return frames


def floor_quote_frame(world) -> dict[str, Any]:
    """Broadcast: the instrument's real quote frame (same bytes as Livefolio's: the database's
    quote after the Livefolio run, with bid and ask), ``as_of`` and ``received`` left open."""
    from portfolio.models import Quote
    from streaming import protocol

    q = Quote.objects.select_related("instrument").get(instrument_id=world["instrument"]["id"])
    frame = protocol.envelope(
        protocol.quote(
            instrument_id=q.instrument_id,
            symbol=q.instrument.symbol,
            price=q.price,
            bid=q.bid,
            ask=q.ask,
            exchange_ts=q.exchange_ts,
            received=q.exchange_ts,
        ),
        seq=1,
    )
    frame["as_of"], frame["received"] = "__AS_OF__", "__RECEIVED__"
    return frame


class PublisherTicks(TickRate):
    """The floor publisher's achieved tick rate over the window, from its per-second lines."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc

    def read(self) -> tuple[int, float] | None:
        self.proc.log.flush()
        lines = [x.split() for x in self.proc.log_path.read_text().splitlines()]
        found = [(int(x[1]), float(x[2])) for x in lines if len(x) == 3 and x[0] == "ticks"]
        return found[-1] if found else None


def run_floor(args, env, logs, world, r) -> dict[str, Any]:
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
        group = f"instrument.{world['instrument']['id']}"
        query = f"&group={group}" if args.scenario == "broadcast" else ""
        specs = [
            {"name": str(u.id), "url": f"ws://127.0.0.1:{port}/?user={u.id}{query}"} for u in users
        ]
        clients = start_clients(specs, args.client_procs, env, logs, "floor")
        procs += clients
        publisher = None
        hooks: list[Any] = []
        if args.scenario != "idle":
            from django.conf import settings

            window = args.window_ms / 1000
            job_spec: dict[str, Any] = {
                "rate": args.rate,
                "window": window,
                "seconds": args.warmup + args.seconds + 5,
                "instruments": world["active"],
                "seed": args.seed,
            }
            if args.scenario == "broadcast":
                # One quote per window to the group, at most the instrument page's 5 a second.
                job_spec.update(
                    mode="broadcast",
                    group=group,
                    frame=floor_quote_frame(world),
                    interval=max(window, 1 / settings.LIVEFOLIO_WS_MAX_UPDATES),
                )
            else:
                job_spec.update(
                    mode="portfolio",
                    holdings={str(u.id): world["held"][u.id] for u in users},
                    frames=floor_frames(world, users),
                )
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
        sampler = Sampler(procs, r, hooks)
        measure_window(clients, sampler, args.seconds)
        pinged = None
        if args.scenario == "idle":
            for c in clients:
                c.send("ping")
            pinged = sum(int(c.expect("pinged")[0]) for c in clients)
        run = sampler.stop()
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


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def table(result: dict[str, Any]) -> str:
    lf, fl = result["livefolio"], result.get("floor")
    rows = [("", "livefolio", "floor", "ratio")]

    def row(label: str, get) -> None:
        a = get(lf)
        b = get(fl) if fl else None
        rows.append(
            (
                label,
                "-" if a is None else str(a),
                "-" if b is None else str(b),
                "-" if not fl else str(ratio(a, b)),
            )
        )

    scenario = result["args"]["scenario"]
    row("clients connected", lambda x: x["delivered"]["connected"])
    if scenario != "idle":
        row("feed ticks/s achieved", lambda x: x.get("feed_ticks_per_s"))
    row("delivered msgs/s", lambda x: x["delivered"]["msgs_per_s"])
    row(
        "msgs/s per client",
        lambda x: (
            round(x["delivered"]["msgs_per_s"] / x["delivered"]["connected"], 2)
            if x["delivered"]["connected"]
            else None
        ),
    )
    for q in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
        row(f"latency {q}", lambda x, q=q: x["delivered"]["latency"][q])
    if scenario == "broadcast":  # quotes carry the flush time: the stack's share alone
        for q in ("p50_ms", "p99_ms"):
            row(f"flush->client {q}", lambda x, q=q: x["delivered"]["flush_latency"][q])
    else:  # valuations carry valued_at: the pass, the channel layer, daphne and the client
        for q in ("p50_ms", "p99_ms"):
            row(
                f"valued->client {q}",
                lambda x, q=q: x["delivered"].get("valued_latency", {}).get(q),
            )
    row("msgs per server CPU-s", lambda x: x["msgs_per_server_cpu_s"])
    row("msgs per daphne CPU-s", lambda x: x["msgs_per_daphne_cpu_s"])
    row("redis cmds/s (shared)", lambda x: x["redis_cmds_per_s"])
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(width[i]) for i, c in enumerate(r)) for r in rows]
    lines.append("")
    lines.append("process               CPU%  RSS MiB (max)")
    for side in ("livefolio", "floor"):
        if not result.get(side):
            continue
        for name, p in result[side]["procs"].items():
            rss = "-" if p["rss_mib"] is None else f"{p['rss_mib']:>7} ({p['rss_max_mib']})"
            lines.append(f"{name:<20} {p['cpu_pct']:>5}  {rss}")
    ingest = lf.get("ingest")
    if ingest:
        lines.extend(ingest_lines(ingest, lf))
    loss = lf.get("loss")
    if loss:
        what = "last quote" if scenario == "broadcast" else "last valuation"
        lines.append(
            f"\nfinal-state loss: {loss['stale']} of {loss['checked']} clients' {what} differs "
            f"from the database 1 s after Celery drained (drain {lf['drain_s']} s, backlog "
            f"after drain {lf['backlog_after_drain']})"
        )
        settled = lf.get("loss_settled")
        if settled is not None and settled is not loss and "quiet_after_s" in settled:
            lines.append(
                f"  once deliveries stopped ({settled['quiet_after_s']} s later, bounded by "
                f"--drain): {settled['stale']} of {settled['checked']} still differ"
            )
        if lf["backlog_after_drain"]:
            lines.append("  not drained: undelivered work was still queued (lateness, not loss)")
    if fl and fl.get("subscription_lost"):
        lines.append(
            f"floor: Redis dropped its subscription {fl['subscription_lost']} times (it fell "
            "32 MiB behind): the floor could not carry this load either"
        )
    if lf.get("pinged") is not None:
        lines.append(
            f"idle: {lf['pinged']} of {lf['delivered']['connected']} sockets answered a ping"
            f" after {result['args']['seconds']} s"
        )
    server = "daphne" if result["args"].get("plain_daphne") else "streaming.serve"
    lines.append(
        f"{result['revision']}, {server}, {result['channel_layer']}, "
        f"floor window {result['args']['window_ms']} ms"
    )
    lines.append(
        f"load average at start: {result['loadavg_start']}, at end: {result['loadavg_end']}"
    )
    if result.get("machine_speed"):  # results written before it was measured have none
        during = [
            f"{name} {run['machine_speed']['median_us']} "
            f"({run['machine_speed']['min_us']}-{run['machine_speed']['max_us']})"
            for name, run in (("livefolio", lf), ("floor", result.get("floor")))
            if run and run.get("machine_speed")
        ]
        lines.append(
            f"machine speed, CPU µs per reference step (Decimal and dict work like a "
            f"valuation's; lower is faster): {result['machine_speed']['median_us']} before the "
            f"run; median (min-max) in the window: {', '.join(during) or '-'}"
        )
    return "\n".join(lines)


def ingest_lines(ingest: dict[str, Any], lf: dict[str, Any]) -> list[str]:
    """The Celery side of a run: does the worker keep up with the feed?"""
    backlog, lag, task = ingest["backlog"], ingest["lag"], ingest["task"]
    spent = ingest["worker_time"]
    late = ingest["lag_through_drain"]
    workers = [p["cpu_pct"] for name, p in lf["procs"].items() if name.startswith("worker")]
    feed_cpu = lf["procs"].get("feed", {}).get("cpu_pct")
    if ingest["drained"]:
        drain = f"drained {ingest['drain_s']} s after the feed stopped"
    else:
        drain = (
            f"NOT drained after {ingest['drain_s']} s: {ingest['backlog_after_drain']} tasks "
            f"left, ~{ingest['drain_left_estimate_s']} s more at the drain's pace"
        )
    verdict = "yes" if ingest["keeps_up"] else "NO"
    return [
        "",
        f"ingest: feed {ingest['feed_ticks_per_s']} ticks/s at {feed_cpu}% "
        f"CPU; worker CPU {' + '.join(f'{w}%' for w in workers)}",
        f"  worker: {ingest['batches_per_s']} batches/s of {ingest['items_per_batch']} quotes, "
        f"{ingest['quotes_stored_per_s']} quotes stored/s; task p50 {task['p50_ms']} ms, "
        f"p99 {task['p99_ms']} ms; {ingest['failed_tasks']} failed",
        f"  worker time: busy {' + '.join(f'{b}%' for b in spent['busy_pct'])} of the window; "
        f"between two tasks p50 {spent['gap']['p50_ms']} ms (task end -> next flush "
        f"{spent['end_to_flush']['p50_ms']}, flush -> task start "
        f"{spent['flush_to_start']['p50_ms']}), p90 {spent['gap']['p90_ms']} ms",
        f"  celery backlog (queued + unacked): start {backlog['start']}, max {backlog['max']}, "
        f"end {backlog['end']}, growth {backlog['growth_per_s']} tasks/s; {drain}",
        f"  ingest lag (feed flush -> task done): p50 {lag['p50_ms']} ms, p99 {lag['p99_ms']} ms,"
        f" max {lag['max_ms']} ms over {lag['n']} batches; counting the drain: p50 "
        f"{late['p50_ms']} ms, p99 {late['p99_ms']} ms over {late['n']}",
        f"  keeps up: {verdict} (backlog growth <= {BACKLOG_GROWTH_OK} tasks over the window "
        f"and drained within {DRAIN_OK_S:g} s)",
    ]


def settings_value(name: str) -> Any:
    from django.conf import settings

    return getattr(settings, name)


_CENT = Decimal("0.01")
_ROW = dict.fromkeys(range(27))
_QUANTITIES = [Decimal(i % 997 + 1) / 100 for i in range(2_000)]


def speed_probe() -> float:
    """CPU µs per step of the kind of Python a valuation is made of (Decimal products, rounding
    and formatting, dict copies): ~2,000 steps, a few ms. Measured in this thread's CPU time, so
    waiting for a core does not count, only how fast the core runs (lower is faster)."""
    price = Decimal("1234.5678")
    started = time.thread_time()
    for quantity in _QUANTITIES:
        copy = _ROW.copy()
        copy[0] = str((quantity * price).quantize(_CENT))
        copy[1] = str(((quantity * price - quantity) / price * 100).quantize(_CENT))
    return (time.thread_time() - started) / len(_QUANTITIES) * 1e6


def speed_summary(probes: list[float]) -> dict[str, Any]:
    ordered = sorted(probes)
    return {
        "median_us": round(ordered[len(ordered) // 2], 3),
        "min_us": round(ordered[0], 3),
        "max_us": round(ordered[-1], 3),
        "probes": len(ordered),
    }


def git_revision() -> str:
    rev = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    )
    return rev.stdout.strip()


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every child process.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args = parse_args()
    env = bench_env(args)
    create_database()
    setup_django(env)
    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    r.flushdb()  # this Redis db is the bench's own (checked above)
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    speed = speed_summary([speed_probe() for _ in range(25)])  # the machine alone
    world = seed(args)
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
    result["livefolio"] = run_livefolio(args, env, logs, world, r)
    if not args.no_floor:
        r.flushdb()
        result["floor"] = run_floor(args, env, logs, world, r)
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
