"""The story world (alice owns, bob holds something else, charlie holds the same thing) and
helpers to start the real processes: a Celery worker and daphne on the test database."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from channels.layers import channel_layers
from django.conf import settings

import portfolio.celery  # noqa: F401 -- tests send tasks (.delay); only senders load the app

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery"


@functools.cache
def password_hash() -> str:
    """PASSWORD hashed once with the production hasher (Argon2 is slow on purpose)."""
    from django.contrib.auth.hashers import make_password

    return make_password(PASSWORD)


@pytest.fixture(scope="session", autouse=True)
def _services_are_up(request) -> None:
    """Fail (never skip) when a service the suite needs is missing. A run of unit tests alone
    (``pytest -m unit``: no database, no Redis) needs none."""
    if all(item.get_closest_marker("unit") for item in request.session.items):
        return
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {settings.REDIS_URL} is not reachable: {exc}")


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def world(db):
    """alice holds 2 BTC; bob holds only ETH; charlie holds 3 BTC. All in USD, each bought with
    a 1000 USD deposit through the ledger (cost basis 1000, no cash left)."""
    from django.contrib.auth import get_user_model

    from portfolio import services
    from portfolio.ledger import TxKind
    from portfolio.models import AssetClass, FeedKind, Instrument

    user_model = get_user_model()
    users = {
        name: user_model.objects.create(username=name, password=password_hash())
        for name in ("alice", "bob", "charlie")
    }
    btc = Instrument.objects.create(
        symbol="BTC-USD",
        name="Bitcoin",
        asset_class=AssetClass.CRYPTO,
        quote_currency="USD",
        feed=FeedKind.SIMULATED,
        feed_symbol="BTC-USD",
    )
    eth = Instrument.objects.create(
        symbol="ETH-USD",
        name="Ether",
        asset_class=AssetClass.CRYPTO,
        quote_currency="USD",
        feed=FeedKind.SIMULATED,
        feed_symbol="ETH-USD",
    )
    portfolios = {}
    bought_at = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
    # Each deposits 1000 and spends all of it (price plus fee), so cash is 0 and the total is
    # the holding's value.
    for name, instrument, quantity, price, fee in (
        ("alice", btc, "2", "500", "0"),
        ("bob", eth, "10", "100", "0"),
        ("charlie", btc, "3", "333", "1"),
    ):
        portfolio = services.portfolio_create(owner=users[name], name=f"{name.title()}'s")
        services.transaction_add(
            portfolio=portfolio,
            kind=TxKind.DEPOSIT,
            amount=Decimal("1000"),
            executed_at=bought_at,
        )
        services.transaction_add(
            portfolio=portfolio,
            kind=TxKind.BUY,
            instrument=instrument,
            quantity=Decimal(quantity),
            price=Decimal(price),
            fees=Decimal(fee),
            executed_at=bought_at + timedelta(minutes=1),
        )
        portfolios[name] = portfolio
    return {"users": users, "portfolios": portfolios, "btc": btc, "eth": eth}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stack_env(**extra: str) -> dict[str, str]:
    """Environment for a child process on the test database and the test Redis."""
    from django.db import connection

    db = connection.settings_dict
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update(
        DJANGO_SETTINGS_MODULE="portfolio.settings",
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        REDIS_URL=settings.REDIS_URL,
        DJANGO_SECRET_KEY=settings.SECRET_KEY,
        LIVEFOLIO_REDIS_PREFIX=os.environ["LIVEFOLIO_REDIS_PREFIX"],
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Process:
    """A child process whose output goes to a log file, shown when a test fails."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], tmp: Path) -> None:
        self.name = name
        self.log_path = tmp / f"{name}.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def wait_for_output(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.output()}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not print {text!r}:\n{self.output()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def start_worker(tmp: Path, **env: str) -> Process:
    worker = Process(
        "celery-worker",
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
        ],
        stack_env(**env),
        tmp,
    )
    worker.wait_for_output("ready.")
    return worker


def start_daphne(tmp: Path, port: int, module: str = "streaming.serve", **env: str) -> Process:
    """daphne serving the app, started as the Procfile does (``python -m streaming.serve``,
    Livefolio's launcher); ``module="daphne"`` starts plain daphne."""
    server = Process(
        "daphne",
        [
            sys.executable,
            "-m",
            module,
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "portfolio.asgi:application",
        ],
        stack_env(DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost", **env),
        tmp,
    )
    server.wait_for_output("Listening on TCP address")
    return server


@pytest.fixture
def celery_worker(transactional_db, redis_client, tmp_path) -> Iterator[Process]:
    """A real Celery worker process on Redis and the test database."""
    worker = start_worker(tmp_path)
    yield worker
    worker.stop()


@pytest.fixture
def daphne_server(transactional_db, redis_client, tmp_path) -> Iterator[str]:
    """A real daphne serving the app on a free port; yields its base URL."""
    port = free_port()
    server = start_daphne(tmp_path, port)
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def chromium():
    """Chromium for one test module. Playwright's sync API keeps an event loop running in this
    thread, so Django's async-safety check is lifted for that module only (never in children)."""
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def page(chromium):
    """A fresh browser context; any console error or page error fails the test."""
    context = chromium.new_context(locale="en-US", timezone_id="UTC")
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.console_errors = errors
    yield page
    context.close()


@contextlib.contextmanager
def configured_layer(kind: str, **host):
    """Make ``kind`` the default channel layer, with ``host`` added to its Redis host config."""
    config = dict(settings.CHANNEL_LAYERS["default"]["CONFIG"])
    config["hosts"] = [config["hosts"][0] | host]
    if kind == "pubsub":
        config.pop("expiry", None)
    layers = {"default": {"BACKEND": settings.CHANNEL_LAYER_BACKENDS[kind], "CONFIG": config}}
    saved_settings, saved_backends = settings.CHANNEL_LAYERS, dict(channel_layers.backends)
    settings.CHANNEL_LAYERS = layers
    channel_layers.backends.clear()
    try:
        yield
    finally:
        settings.CHANNEL_LAYERS = saved_settings
        channel_layers.backends.clear()
        channel_layers.backends.update(saved_backends)


@pytest.fixture(params=["pubsub", "core"])
def layer_kind(request):
    """Run the test on each channel layer Livefolio can be configured with."""
    with configured_layer(request.param):
        yield request.param
