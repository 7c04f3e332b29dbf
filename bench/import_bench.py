"""CSV import benchmark: generate 100,000 transactions, import them, time each 10,000 rows.

Not a test: it prints numbers. Run against the database of your environment (``DATABASE_URL``;
SQLite by default) from the repository root:

    .venv/bin/python bench/import_bench.py [--rows 100000]

It creates a throw-away user ``bench-import`` with a portfolio and deletes them afterwards.
Prints one JSON object (machine-readable) and a short table.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import random
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

from portfolio import services  # noqa: E402
from portfolio.importers import transactions_csv  # noqa: E402
from portfolio.models import AssetClass, FeedKind, Instrument  # noqa: E402

SYMBOLS = [f"BENCH{i:02d}" for i in range(20)]


def generate(rows: int, seed: int = 7) -> str:
    """A valid ledger: one deposit, then buys and sells that never sell more than held."""
    rng = random.Random(seed)
    held = dict.fromkeys(SYMBOLS, Decimal(0))
    start = datetime(2020, 1, 1, tzinfo=UTC)
    out = io.StringIO()
    out.write("date,type,symbol,quantity,price,fee,amount,currency,note\n")
    out.write(f"{start.isoformat()},DEPOSIT,,,,,100000000,USD,bench\n")
    for i in range(1, rows):
        at = (start + timedelta(minutes=i)).isoformat()
        symbol = rng.choice(SYMBOLS)
        price = Decimal(rng.randint(1000, 50000)) / 100
        if held[symbol] >= 10 and rng.random() < 0.4:
            quantity = Decimal(rng.randint(1, int(held[symbol])))
            held[symbol] -= quantity
            out.write(f"{at},SELL,{symbol},{quantity},{price},1,,USD,\n")
        elif rng.random() < 0.05:
            out.write(f"{at},DIVIDEND,{symbol},,,,{rng.randint(1, 99)}.5,USD,\n")
        else:
            quantity = Decimal(rng.randint(1, 50))
            held[symbol] += quantity
            out.write(f"{at},BUY,{symbol},{quantity},{price},1,,USD,\n")
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    call_command("migrate", interactive=False, verbosity=0)
    for symbol in SYMBOLS:
        Instrument.objects.get_or_create(
            symbol=symbol,
            defaults={
                "name": f"Benchmark {symbol}",
                "asset_class": AssetClass.EQUITY,
                "quote_currency": "USD",
                "feed": FeedKind.REPLAY,
                "feed_symbol": symbol,
                "active": False,
            },
        )
    user_model = get_user_model()
    user_model.objects.filter(username="bench-import").delete()
    user = user_model.objects.create(username="bench-import")
    portfolio = services.portfolio_create(owner=user, name="Import benchmark")
    text = generate(args.rows)
    marks: list[tuple[int, float]] = []
    started = time.perf_counter()

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "stored":
            marks.append((done, time.perf_counter()))

    try:
        result = transactions_csv.import_csv(
            portfolio=portfolio, text=io.StringIO(text), progress=progress
        )
        finished = time.perf_counter()
    finally:
        user.delete()
        Instrument.objects.filter(symbol__in=SYMBOLS, holdings__isnull=True).delete()
    if not result.ok:
        raise SystemExit("benchmark file did not import: " + "; ".join(map(str, result.errors[:5])))
    # Parsing, validation and the checking replay happen before the first mark (done=0).
    checked = marks[0][1] - started
    chunks = [
        {"rows": done, "seconds": round(at - before, 3)}
        for (_, before), (done, at) in itertools.pairwise(marks)
    ]
    report = {
        "benchmark": "csv_import",
        "database": django.db.connection.vendor,
        "rows": result.imported,
        "total_seconds": round(finished - started, 3),
        "parse_and_check_seconds": round(checked, 3),
        "store_per_10k_rows": chunks,
        "recompute_seconds": round(finished - marks[-1][1], 3),
        "rows_per_second": round(result.imported / (finished - started)),
    }
    print(json.dumps(report))
    print()
    print(f"{'phase':<28}{'seconds':>10}")
    print(f"{'parse + validate + replay':<28}{report['parse_and_check_seconds']:>10.3f}")
    for chunk in chunks:
        print(f"{'store rows to ' + format(chunk['rows'], ','):<28}{chunk['seconds']:>10.3f}")
    print(f"{'recompute holdings':<28}{report['recompute_seconds']:>10.3f}")
    print(f"{'total':<28}{report['total_seconds']:>10.3f}  ({report['rows_per_second']:,} rows/s)")


if __name__ == "__main__":
    main()
