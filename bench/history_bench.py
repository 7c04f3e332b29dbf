"""Value-snapshot benchmark: a portfolio with a year of minute snapshots, and the minute task.

Celery beat stores every portfolio's value each minute (525,600 rows a year); the live page
shows TWR and IRR per period, the performance page their working and the chart thins a range
to 500 points. This times each of them, the two pages as a logged-in user gets them, and one
run of the minute task over P portfolios of 20 holdings, on the database of your environment
(``DATABASE_URL``; SQLite by default) from the repository root:

    .venv/bin/python bench/history_bench.py [--days 365] [--repeat 3] [--portfolios 2000]

It creates throw-away users ``bench-history*`` with their portfolios (12 monthly deposits, one
snapshot a minute; one deposit and 20 holdings each) and deletes them afterwards. Prints one
JSON object and a short table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.urls import reverse  # noqa: E402

from portfolio import performance, services  # noqa: E402
from portfolio.ledger import TxKind  # noqa: E402
from portfolio.models import (  # noqa: E402
    AssetClass,
    FeedKind,
    Holding,
    Instrument,
    Portfolio,
    Quote,
    Transaction,
    ValuationSnapshot,
)
from portfolio.selectors import snapshot_history  # noqa: E402


def seed(days: int, now: datetime):
    user_model = get_user_model()
    user_model.objects.filter(username="bench-history").delete()
    user = user_model.objects.create(username="bench-history")
    portfolio = services.portfolio_create(owner=user, name="History benchmark")
    first = now - timedelta(days=days)
    for month in range(0, days, 30):
        services.transaction_add(
            portfolio=portfolio,
            kind=TxKind.DEPOSIT,
            amount=Decimal("1000"),
            executed_at=first + timedelta(days=month, seconds=17),
        )
    rng = random.Random(5)
    value, batch, at = Decimal("1000.00"), [], first
    while at <= now:
        batch.append(ValuationSnapshot(portfolio=portfolio, taken_at=at, value=value))
        if len(batch) == 10_000:
            ValuationSnapshot.objects.bulk_create(batch)
            batch = []
        value = max(Decimal("1.00"), value + Decimal(rng.randint(-100, 110)) / 100)
        at += timedelta(minutes=1)
    ValuationSnapshot.objects.bulk_create(batch)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # what autovacuum would have done by now
            cursor.execute(f"ANALYZE {ValuationSnapshot._meta.db_table}")
    return user, portfolio


def snapshot_task(count: int) -> dict:
    """One run of the minute task over ``count`` portfolios of 20 holdings out of 200."""
    rng = random.Random(6)
    now = datetime.now(UTC)
    instruments = Instrument.objects.bulk_create(
        Instrument(
            symbol=f"BENCHH{i:03d}",
            name=f"History bench {i}",
            asset_class=AssetClass.CRYPTO,
            quote_currency="USD",
            feed=FeedKind.SIMULATED,
            feed_symbol=f"BENCHH{i:03d}",
            active=False,
        )
        for i in range(200)
    )
    Quote.objects.bulk_create(
        Quote(instrument=i, price=Decimal(rng.randint(10, 5000)), exchange_ts=now, received_at=now)
        for i in instruments
    )
    owners = get_user_model().objects.bulk_create(
        get_user_model()(username=f"bench-history{n:06d}") for n in range(count)
    )
    try:
        portfolios = Portfolio.objects.bulk_create(
            Portfolio(owner=u, name="Bench", base_currency="USD") for u in owners
        )
        Transaction.objects.bulk_create(
            Transaction(
                portfolio=p, kind=TxKind.DEPOSIT, amount=Decimal(1000), currency="USD",
                executed_at=now - timedelta(days=1),
            )
            for p in portfolios
        )  # fmt: skip
        Holding.objects.bulk_create(
            Holding(
                portfolio=p,
                instrument=i,
                quantity=Decimal(rng.randint(1, 10_000)) / 100,
                cost_basis=Decimal(1000),
            )
            for p in portfolios
            for i in rng.sample(instruments, 20)
        )
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            written = services.valuation_snapshots_take(at=now)
            seconds = time.perf_counter() - started
        assert written == count, (written, count)
        return {"median_ms": round(seconds * 1000, 1), "queries": len(captured)}
    finally:
        get_user_model().objects.filter(id__in=[u.id for u in owners]).delete()
        Instrument.objects.filter(id__in=[i.id for i in instruments]).delete()


def timed(repeat: int, call) -> dict:
    seconds, queries = [], 0
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - started)
        queries = len(captured)
    return {"median_ms": round(statistics.median(seconds) * 1000, 1), "queries": queries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--portfolios", type=int, default=2000)
    args = parser.parse_args()
    call_command("migrate", interactive=False, verbosity=0)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    started = time.perf_counter()
    user, portfolio = seed(args.days, now)
    seeded = time.perf_counter() - started
    client = Client()
    client.force_login(user)
    rows = {}
    try:
        rows["performance (TWR + IRR, 6 periods)"] = timed(
            args.repeat,
            lambda: snapshot_history.portfolio_performance(portfolio=portfolio, now=now),
        )
        for period in performance.Period:
            rows[f"value chart {period}"] = timed(
                args.repeat,
                lambda p=period: snapshot_history.value_history(
                    portfolio=portfolio, period=p, now=now
                ),
            )
        for name, url in (
            ("page: live portfolio", reverse("portfolio", args=[portfolio.id])),
            ("page: performance", reverse("performance", args=[portfolio.id])),
        ):

            def get(url=url):
                response = client.get(url, HTTP_HOST="localhost")
                assert response.status_code == 200, (url, response.status_code)

            rows[name] = timed(args.repeat, get)
    finally:
        user.delete()
    if args.portfolios:
        rows[f"minute task, {args.portfolios} portfolios"] = snapshot_task(args.portfolios)
    report = {
        "benchmark": "value_history",
        "database": connection.vendor,
        "days": args.days,
        "snapshots": args.days * 1440 + 1,
        "seed_seconds": round(seeded, 1),
        "repeat": args.repeat,
        "portfolios": args.portfolios,
        "timings": rows,
    }
    print(json.dumps(report))
    print()
    print(f"{report['snapshots']:,} snapshots ({args.days} days of minutes), {connection.vendor}")
    print(f"{'what':<38}{'median ms':>11}{'queries':>9}")
    for name, row in rows.items():
        print(f"{name:<38}{row['median_ms']:>11.1f}{row['queries']:>9}")


if __name__ == "__main__":
    main()
