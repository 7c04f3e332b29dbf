"""Ledger-history benchmark: ten years of daily prices behind a big ledger.

The value chart's long ranges and the returns over 1D … Max are valued day by day from the
ledger, the daily price history and the FX history. This times them for one portfolio of 50
holdings in 3 currencies (USD base, EUR, GBP) with 2,000 transactions over ten years, each
instrument and FX pair with a close every weekday, on the database of your environment
(``DATABASE_URL``; PostgreSQL for the targets) from the repository root:

    .venv/bin/python bench/ledger_history_bench.py [--years 10] [--transactions 2000] [--repeat 5]

Targets (issue 22): the value series and all six return periods within 300 ms; the
performance page within 200 ms warm. It creates a throw-away user ``bench-ledger-history``
and instruments ``BENCHL*``, deletes them afterwards, and prints one JSON object and a table
with each number beside its target. Timings are medians of ``--repeat`` runs after one
warm-up run (the first, cold run is printed too: the first after a change of the ledger, when
nothing is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from datetime import UTC, date, datetime, timedelta
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
    DailyPrice,
    FeedKind,
    Instrument,
    PriceSource,
    Transaction,
)
from portfolio.selectors import past_values  # noqa: E402

USERNAME = "bench-ledger-history"
PREFIX = "BENCHL"
CURRENCIES = ("USD", "EUR", "GBP")
HOLDINGS = 50


def weekdays(first: date, last: date):
    day = first
    while day <= last:
        if day.weekday() < 5:
            yield day
        day += timedelta(days=1)


def seed(years: int, transactions: int, today: date):
    """The instruments, ten years of closes, and a ledger that never sells more than it holds."""
    rng = random.Random(22)
    user_model = get_user_model()
    user_model.objects.filter(username=USERNAME).delete()
    Instrument.objects.filter(symbol__startswith=PREFIX).delete()
    user = user_model.objects.create(username=USERNAME)
    portfolio = services.portfolio_create(owner=user, name="Ledger history benchmark")
    first = today - timedelta(days=365 * years)
    stocks = Instrument.objects.bulk_create(
        Instrument(
            symbol=f"{PREFIX}{i:02d}",
            name=f"Ledger bench {i}",
            asset_class=AssetClass.EQUITY,
            quote_currency=CURRENCIES[i % 3],
            feed=FeedKind.SIMULATED,
            feed_symbol=f"{PREFIX}{i:02d}",
            active=False,
        )
        for i in range(HOLDINGS)
    )
    pairs = Instrument.objects.bulk_create(
        Instrument(
            symbol=f"{currency}USD",
            name=f"{currency} in USD",
            asset_class=AssetClass.FX,
            quote_currency="USD",
            feed=FeedKind.SIMULATED,
            feed_symbol=f"{PREFIX}{currency}USD",
            active=False,
        )
        for currency in ("EUR", "GBP")
        if not Instrument.objects.filter(symbol=f"{currency}USD").exists()
    )
    days = list(weekdays(first, today))
    closes: dict[int, dict[date, Decimal]] = {}
    rows = []
    for instrument in [*stocks, *pairs]:
        price = 1.2 if instrument.asset_class == AssetClass.FX else rng.uniform(20, 400)
        step = 0.003 if instrument.asset_class == AssetClass.FX else 0.015
        series = {}
        for day in days:
            price *= 1 + rng.gauss(0.0002, step)
            series[day] = Decimal(f"{price:.4f}")
            rows.append(
                DailyPrice(
                    instrument=instrument, day=day, close=series[day], source=PriceSource.CSV
                )
            )
        closes[instrument.id] = series
    DailyPrice.objects.bulk_create(rows, batch_size=5000)

    # Deposits in each currency, then buys, sells and dividends on random weekdays.
    txs, held = [], {s.id: Decimal(0) for s in stocks}
    for currency in CURRENCIES:
        txs.append(
            Transaction(
                portfolio=portfolio, kind=TxKind.DEPOSIT, currency=currency,
                amount=Decimal(2_000_000), executed_at=datetime.combine(
                    days[0], datetime.min.time(), UTC
                ) + timedelta(hours=9),
            )
        )  # fmt: skip
    trade_days = sorted(rng.choices(days, k=transactions - len(txs)))
    for n, day in enumerate(trade_days):
        stock = stocks[rng.randrange(HOLDINGS)] if n >= HOLDINGS else stocks[n]
        at = datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=10, seconds=n)
        roll = rng.random()
        if held[stock.id] > 10 and roll < 0.25:
            quantity = max(1, (held[stock.id] * Decimal(rng.randint(1, 50)) / 100).quantize(1))
            kind = TxKind.SELL
            held[stock.id] -= quantity
        elif held[stock.id] > 0 and roll < 0.32:
            txs.append(
                Transaction(
                    portfolio=portfolio, kind=TxKind.DIVIDEND, instrument=stock,
                    currency=stock.quote_currency, amount=Decimal(rng.randint(10, 500)),
                    executed_at=at,
                )
            )  # fmt: skip
            continue
        else:
            quantity = Decimal(rng.randint(1, 40))
            kind = TxKind.BUY
            held[stock.id] += quantity
        txs.append(
            Transaction(
                portfolio=portfolio, kind=kind, instrument=stock, currency=stock.quote_currency,
                quantity=quantity, price=closes[stock.id][day], fees=Decimal("4.95"),
                executed_at=at,
            )
        )  # fmt: skip
    Transaction.objects.bulk_create(txs)
    services.holdings_recompute(portfolio=portfolio)
    if connection.vendor == "postgresql":
        # What autovacuum would have done by now (it vacuums after inserts too, which marks
        # the pages all-visible for index-only scans).
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {DailyPrice._meta.db_table}")
            cursor.execute(f"VACUUM ANALYZE {Transaction._meta.db_table}")
    return user, portfolio, [*stocks, *pairs], len(rows)


def timed(repeat: int, call, change=None) -> dict:
    """The first (cold) run, after ``change`` (untimed) when given, then the median of
    ``repeat`` more, and the queries of the last."""
    seconds, queries = [], 0
    if change is not None:
        change()
    for _ in range(repeat + 1):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - started)
        queries = len(captured)
    return {
        "cold_ms": round(seconds[0] * 1000, 1),
        "median_ms": round(statistics.median(seconds[1:]) * 1000, 1),
        "queries": queries,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    call_command("migrate", interactive=False, verbosity=0)
    now = datetime.now(UTC)
    started = time.perf_counter()
    user, portfolio, instruments, closes = seed(args.years, args.transactions, now.date())
    seeded = time.perf_counter() - started
    client = Client()
    client.force_login(user)
    rows: dict[str, dict] = {}
    targets: dict[str, float] = {}

    # A cold run is the first after a change of the ledger (what a web process meets after
    # a new transaction): recomputing the holdings changes what the kept values depend on.
    def change():
        services.holdings_recompute(portfolio=portfolio)

    def series():
        past_values.value_series(portfolio=portfolio, period=performance.Period.MAX, now=now)

    def returns():
        past_values.period_returns(portfolio=portfolio, now=now)

    try:
        rows["value series MAX"] = timed(args.repeat, series, change)
        rows["returns, six periods"] = timed(args.repeat, returns, change)
        both = "value series MAX + six return periods"
        rows[both] = timed(args.repeat, lambda: (series(), returns()), change)
        targets[both] = 300
        for name, url in (
            ("page: performance", reverse("performance", args=[portfolio.id])),
            ("page: live portfolio", reverse("portfolio", args=[portfolio.id])),
            ("history.json?range=MAX", reverse("portfolio-history", args=[portfolio.id])),
        ):

            def get(url=url, name=name):
                params = {"range": "MAX"} if "range" in name else {}
                response = client.get(url, params, HTTP_HOST="localhost")
                assert response.status_code == 200, (url, response.status_code)

            rows[name] = timed(args.repeat, get, change)
        targets["page: performance"] = 200
    finally:
        user.delete()
        Instrument.objects.filter(id__in=[i.id for i in instruments]).delete()
    report = {
        "benchmark": "ledger_history",
        "database": connection.vendor,
        "years": args.years,
        "transactions": args.transactions,
        "holdings": HOLDINGS,
        "daily_closes": closes,
        "seed_seconds": round(seeded, 1),
        "repeat": args.repeat,
        "timings": rows,
        "targets_ms": targets,
    }
    print(json.dumps(report))
    print()
    print(
        f"{args.years} years, {args.transactions:,} transactions, {HOLDINGS} holdings in "
        f"{len(CURRENCIES)} currencies, {closes:,} daily closes, {connection.vendor}"
    )
    print(f"{'what':<40}{'cold ms':>9}{'warm ms':>9}{'queries':>9}{'target ms':>11}{'met':>12}")
    for name, row in rows.items():
        target = targets.get(name)
        met = shown = ""
        if target is not None:
            shown = f"{target:.0f}"
            met = "NO"
            if row["median_ms"] <= target:
                met = "cold, warm" if row["cold_ms"] <= target else "warm"
        print(
            f"{name:<40}{row['cold_ms']:>9.1f}{row['median_ms']:>9.1f}{row['queries']:>9}"
            f"{shown:>11}{met:>12}"
        )


if __name__ == "__main__":
    main()
