"""Fault fixtures: a PRIVATE Redis and PostgreSQL on free loopback ports in temp dirs, which the
tests may kill and restart, and the app's processes (daphne, Celery worker, feed) pointed at them.

The machine's shared PostgreSQL (5432) and Redis (6379) are never touched here: other test runs
use them. One private pair serves the whole session (initdb and migrate cost seconds); every test
gets its own app processes and a fresh Redis database.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from django.conf import settings

from tests.conftest import ROOT, Process, free_port


def postgres_bin() -> Path:
    """The newest installed PostgreSQL server binaries (Debian layout), or fail saying so."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        pytest.fail("PostgreSQL server binaries missing: apt-get install -y postgresql")
    return found[-1].parent


# The faults whose handling lives in the channel layer (Redis lost, a client that never reads,
# connection churn) run on both layers Livefolio offers; the others on the configured one.
on_each_channel_layer = pytest.mark.parametrize("stack", ["pubsub", "core"], indirect=True)

SECRET = "fault-tests-secret-key-0123456789abcdefghijklmnopqrstuvwxyz-ABCDEFG"
METRICS_TOKEN = "fault-tests-metrics-token"


def pytest_collection_modifyitems(items) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.faults)


def wait_until(predicate, *, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


class PrivateRedis:
    """redis-server on its own port, no persistence: a restart comes back empty."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=(self.dir / "redis.log").open("a"),
            stderr=subprocess.STDOUT,
        )
        wait_until(self.ping, timeout=10, what="private Redis to answer")

    def ping(self) -> bool:
        try:
            return redis.Redis(port=self.port, socket_timeout=1).ping()
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, every connection drops, all data is gone."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


class PrivatePostgres:
    """A throwaway PostgreSQL 15 cluster (initdb refuses root, so it runs as ``postgres``)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="livefolio-faults-pg-"))
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/livefolio"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")

    def run(self, *args: str) -> None:
        subprocess.run([*self.as_postgres, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        data = str(self.dir / "data")
        self.run(
            str(postgres_bin() / "initdb"),
            "-D",
            data,
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        )
        self.start()
        self.run(
            str(postgres_bin() / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "livefolio"
        )

    def pg_ctl(self, *args: str) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self.run(
            str(postgres_bin() / "pg_ctl"),
            "-D",
            str(self.dir / "data"),
            "-o",
            options,
            "-l",
            str(self.dir / "server.log"),
            "-w",
            *args,
        )

    def start(self) -> None:
        self.pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "stop")

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True, connect_timeout=5)

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class Stack:
    """The private services, the seeded world's ids, the channel layer (LIVEFOLIO_CHANNEL_LAYER)
    and the app processes a test starts."""

    def __init__(
        self,
        redis_server: PrivateRedis,
        postgres: PrivatePostgres,
        world: dict,
        layer: str,
        *,
        database_url: str | None = None,
        redis_url: str | None = None,
        prefix: str | None = "lf-faults",
    ):
        """``database_url``/``redis_url`` pick another database on the private servers;
        ``prefix=None`` leaves LIVEFOLIO_REDIS_PREFIX unset (the derived namespace)."""
        self.redis = redis_server
        self.postgres = postgres
        self.world = world
        self.layer = layer
        self.database_url = database_url or postgres.url
        self.redis_url = redis_url or redis_server.url
        self.prefix = prefix
        self.tmp: Path | None = None
        self.processes: list[Process] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
        env.update(
            DJANGO_SETTINGS_MODULE="portfolio.settings",
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            DJANGO_SECRET_KEY=SECRET,
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            LIVEFOLIO_CHANNEL_LAYER=self.layer,
            LIVEFOLIO_METRICS_TOKEN=METRICS_TOKEN,
            LIVEFOLIO_HEARTBEAT_SECONDS="1",
            PYTHONUNBUFFERED="1",
        )
        env.pop("LIVEFOLIO_REDIS_PREFIX", None)
        if self.prefix is not None:
            env["LIVEFOLIO_REDIS_PREFIX"] = self.prefix
        env.update(extra)
        return env

    def spawn(self, name: str, args: list[str], **env: str) -> Process:
        process = Process(name, args, self.env(**env), self.tmp)
        self.processes.append(process)
        return process

    def daphne(self, *, port: int | None = None, name: str = "daphne", **env: str) -> str:
        """Start daphne; returns its base URL."""
        port = port or free_port()
        server = self.spawn(
            name,
            [
                sys.executable,
                "-m",
                "streaming.serve",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "--ping-interval",
                env.pop("PING_INTERVAL", "20"),
                "--ping-timeout",
                env.pop("PING_TIMEOUT", "30"),
                "portfolio.asgi:application",
            ],
            **env,
        )
        server.wait_for_output("Listening on TCP address")
        return f"http://127.0.0.1:{port}"

    def worker(self, name: str = "celery-worker", **env: str) -> Process:
        worker = self.spawn(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "portfolio",
                "worker",
                "--pool=solo",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"{name}@%h",
            ],
            **env,
        )
        worker.wait_for_output("ready.")
        return worker

    def channel_layer(self, **config):
        """The channel layer the app processes use, on the private Redis: a group message sent
        with it reaches their consumers."""
        from django.utils.module_loading import import_string

        backend = import_string(settings.CHANNEL_LAYER_BACKENDS[self.layer])
        return backend(hosts=[self.redis_url], prefix=self.prefix, **config)

    def send_batch(self, batch: list[dict]) -> None:
        """Queue an ingest batch on the private broker, as the feed process does."""
        from celery import Celery

        app = Celery("livefolio-faults", broker=self.redis_url)
        app.conf.broker_connection_retry_on_startup = True
        with app.connection_for_write() as connection:
            app.send_task("streaming.tasks.ingest_quotes", args=[batch], connection=connection)

    def sql(self, query: str, *params) -> list[tuple]:
        with self.postgres.connect() as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []


@pytest.fixture(scope="session")
def private_services() -> Iterator[tuple[PrivateRedis, PrivatePostgres, dict]]:
    redis_dir = Path(tempfile.mkdtemp(prefix="livefolio-faults-redis-"))
    redis_server = PrivateRedis(redis_dir)
    postgres = PrivatePostgres()
    try:
        redis_server.start()
        postgres.init()
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
        env.update(
            DJANGO_SETTINGS_MODULE="portfolio.settings",
            DATABASE_URL=postgres.url,
            REDIS_URL=redis_server.url,
            DJANGO_SECRET_KEY=SECRET,
        )
        seeded = subprocess.run(
            [sys.executable, "-m", "tests.faults.seed"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert seeded.returncode == 0, seeded.stderr
        world = json.loads(seeded.stdout.strip().splitlines()[-1])
        yield redis_server, postgres, world
    finally:
        if redis_server.proc and redis_server.proc.poll() is None:
            redis_server.kill()
        postgres.remove()
        shutil.rmtree(redis_dir, ignore_errors=True)


@pytest.fixture
def stack(private_services, tmp_path, request) -> Iterator[Stack]:
    """The private services up and Redis empty; app processes stopped after the test. The
    channel layer is the configured one unless the test is ``on_each_channel_layer``."""
    redis_server, postgres, world = private_services
    if redis_server.proc.poll() is not None:
        redis_server.start()
    try:
        postgres.connect().close()
    except psycopg.OperationalError:
        postgres.start()
    redis_server.client().flushall()
    layer = getattr(request, "param", settings.LIVEFOLIO_CHANNEL_LAYER)
    stack = Stack(redis_server, postgres, world, layer)
    stack.tmp = tmp_path
    stack.sql("DELETE FROM portfolio_quote")
    yield stack
    for process in reversed(stack.processes):
        process.stop()
