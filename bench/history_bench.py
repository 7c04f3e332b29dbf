"""Performance and value-chart benchmark: a portfolio with a year of minute snapshots.

Celery beat stores every portfolio's value each minute (525,600 rows a year); the live page
shows TWR and IRR per period, the performance page their working and the chart thins a range
to 500 points. This times each of them, and the two pages as a logged-in user gets them, on
the database of your environment (``DATABASE_URL``; SQLite by default) from the repository root:

    .venv/bin/python bench/history_bench.py [--days 365] [--repeat 3]

It creates a throw-away user ``bench-history`` with a portfolio (12 monthly deposits, one
snapshot a minute) and deletes them afterwards. Prints one JSON object and a short table.
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

from portfolio import performance, selectors, services  # noqa: E402
from portfolio.models import TxKind, ValuationSnapshot  # noqa: E402


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
            args.repeat, lambda: selectors.portfolio_performance(portfolio=portfolio, now=now)
        )
        for period in performance.Period:
            rows[f"value chart {period}"] = timed(
                args.repeat,
                lambda p=period: selectors.value_history(portfolio=portfolio, period=p, now=now),
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
    report = {
        "benchmark": "value_history",
        "database": connection.vendor,
        "days": args.days,
        "snapshots": args.days * 1440 + 1,
        "seed_seconds": round(seeded, 1),
        "repeat": args.repeat,
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
