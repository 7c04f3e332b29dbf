"""The bench's own database and Redis, and the world a run seeds into them: users, instruments,
quotes, portfolios, holdings and logged-in sessions."""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import redis

from bench.processes import PYTHON, ROOT
from bench.scenarios.base import Scenario

PASSWORD = "bench-password-not-secret"


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


def seed(args: argparse.Namespace, scenario: Scenario) -> dict[str, Any]:
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
                # A scenario on one instrument: the first is the only one the feed streams.
                active=not scenario.one_instrument or i == 0,
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
        # Users without portfolios (broadcast): the instrument page also joins its user's group,
        # but with nothing held no valuation reaches it: only the one instrument's quotes flow.
        portfolios = []
        if scenario.users_hold:
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


def presence_established(r: redis.Redis) -> None:
    """Every client has connected, so every one has marked its user present: let the workers
    trust presence now rather than one ttl after this fresh Redis saw its first mark (the wait
    that covers a Redis restart, when open sockets have not marked themselves again yet;
    streaming/flow.py present()). A server up for a minute is in this state."""
    from streaming import flow

    now, _ = r.time()
    r.set(flow.presence_keys()[1], now - flow.presence_ttl())
