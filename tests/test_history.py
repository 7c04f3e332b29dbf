"""Performance and the value chart read only the snapshots they use, and give what reading the
whole series gives: on PostgreSQL and on the embedded SQLite default."""

import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.conftest import ROOT

NOW = datetime(2026, 11, 27, 21, 0, 13, tzinfo=UTC)


def seed(days: int, step: timedelta):
    """A portfolio with ``days`` of snapshots every ``step`` (values wander, a few missing) and
    deposits and withdrawals at odd times, some exactly at a snapshot."""
    from django.contrib.auth import get_user_model

    from portfolio import services
    from portfolio.ledger import TxKind
    from portfolio.models import ValuationSnapshot

    owner = get_user_model().objects.create(username="historian")
    portfolio = services.portfolio_create(owner=owner, name="History")
    rng = random.Random(8)
    first = NOW - timedelta(days=days)
    snapshots, value, at = [], Decimal("1000.00"), first
    while at <= NOW:
        if rng.random() > 0.02:
            snapshots.append(ValuationSnapshot(portfolio=portfolio, taken_at=at, value=value))
        value = max(Decimal("100.00"), value + Decimal(rng.randint(-900, 1000)) / 100)
        at += step
    ValuationSnapshot.objects.bulk_create(snapshots)
    flows = [
        (first - timedelta(days=1), "1000", TxKind.DEPOSIT),  # before the first snapshot
        (first + timedelta(days=3, minutes=7), "500", TxKind.DEPOSIT),
        (first + timedelta(days=20), "250", TxKind.DEPOSIT),  # exactly at a snapshot
        (NOW - timedelta(days=5, minutes=3, seconds=2), "80", TxKind.WITHDRAWAL),
        (NOW - timedelta(hours=5, minutes=55), "300", TxKind.DEPOSIT),
        (NOW - timedelta(minutes=4), "20", TxKind.WITHDRAWAL),  # after the last snapshot
    ]
    for at, amount, kind in flows:
        services.transaction_add(
            portfolio=portfolio, kind=kind, amount=Decimal(amount), executed_at=at
        )
    return portfolio


def whole_series_performance(portfolio):
    """The performance rows computed from every snapshot (the definition)."""
    from portfolio import performance
    from portfolio.models import ValuationSnapshot
    from portfolio.selectors import ledger_reads, snapshot_history

    series = [
        performance.ValuePoint(at=s.taken_at, value=s.value)
        for s in ValuationSnapshot.objects.filter(portfolio=portfolio, taken_at__lte=NOW)
    ]
    flows = ledger_reads.external_flows(portfolio=portfolio)
    rows = []
    for period in performance.Period:
        start = performance.period_start(period=period, now=NOW, inception=series[0].at)
        points = tuple(p for p in series if p.at >= start)
        inside = tuple(f for f in flows if points[0].at <= f.at < points[-1].at)
        twr = performance.time_weighted_return(values=points, flows=inside)
        irr = snapshot_history._period_irr(points, inside)
        rows.append((str(period), points[0].at, points[-1].at, inside, twr, irr))
    return rows, series


def whole_series_history(portfolio, period):
    """The chart's points from every snapshot: 500 equal buckets, the last of each."""
    from portfolio import performance
    from portfolio.models import ValuationSnapshot
    from portfolio.selectors import snapshot_history

    start = performance.period_start(period=period, now=NOW)
    series = list(
        ValuationSnapshot.objects.filter(portfolio=portfolio, taken_at__lte=NOW)
        .filter(**({"taken_at__gte": start} if start else {}))
        .values_list("taken_at", "value")
    )
    if len(series) > snapshot_history.HISTORY_MAX_POINTS:
        first, buckets = series[0][0], {}
        width = (NOW - first) / snapshot_history.HISTORY_MAX_POINTS
        for at, value in series:
            buckets[min((at - first) // width, snapshot_history.HISTORY_MAX_POINTS - 1)] = (
                at,
                value,
            )
        series = list(buckets.values())
    return series


def check_against_the_whole_series(days: int = 40, step_minutes: int = 10) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from portfolio.selectors import ledger_reads, snapshot_history

    portfolio = seed(days, timedelta(minutes=step_minutes))
    expected, series = whole_series_performance(portfolio)
    flows = ledger_reads.external_flows(portfolio=portfolio)
    with CaptureQueriesContext(connection) as queries:
        rows = snapshot_history.portfolio_performance(portfolio=portfolio, now=NOW)
    # Inception, the flows, their FX rates and the snapshots: not one query per snapshot.
    assert len(queries) <= 6, [q["sql"][:80] for q in queries]
    assert [r.period for r in rows] == [e[0] for e in expected]
    for row, (period, start, end, inside, twr, irr) in zip(rows, expected, strict=True):
        assert (row.start, row.end, row.flows) == (start, end, inside), period
        assert row.problem is None, (period, row.problem)
        assert row.twr == twr, period
        assert (row.irr, row.irr_annualized, row.irr_dates) == irr, period
        # What it read: the last snapshot, the first of each period, the one before each flow.
        assert len(row.values) <= 1 + len(rows) + len(flows), (period, len(row.values))
        assert set(row.values) <= set(series)
    assert rows[-1].twr.approximate  # flows between snapshots are in the test
    if days > 366:  # every period starts at its own snapshot; Max's IRR is the annual one
        assert len({row.start for row in rows}) == len(rows)
        assert rows[-1].irr_annualized and not rows[3].irr_annualized  # Max, YTD

    # Read whole and thinned here, and looked up bucket by bucket: the same points.
    read_whole = snapshot_history.HISTORY_READ_WHOLE
    try:
        for snapshot_history.HISTORY_READ_WHOLE in (read_whole, 0):
            for period in ("1D", "1W", "1M", "YTD", "1Y", "MAX"):
                points = snapshot_history.value_history(portfolio=portfolio, period=period, now=NOW)
                got = [(datetime.fromisoformat(p["at"]), Decimal(p["value"])) for p in points]
                assert got == whole_series_history(portfolio, period), period
            assert len(points) == snapshot_history.HISTORY_MAX_POINTS  # thinned
    finally:
        snapshot_history.HISTORY_READ_WHOLE = read_whole


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("days", "step_minutes"),
    [(40, 10), (430, 360)],  # the second: 1Y, YTD and Max start apart; Max's IRR is annual
)
def test_performance_and_history_equal_the_whole_series_on_postgresql(days, step_minutes):
    check_against_the_whole_series(days, step_minutes)


@pytest.mark.django_db
def test_a_portfolio_with_fewer_than_two_snapshots_says_how_many_it_has(world):
    from portfolio.models import ValuationSnapshot
    from portfolio.selectors import snapshot_history

    portfolio = world["portfolios"]["alice"]
    rows = snapshot_history.portfolio_performance(portfolio=portfolio, now=NOW)
    assert {r.problem for r in rows} == {"needs two value snapshots in the period, has 0"}
    ValuationSnapshot.objects.create(portfolio=portfolio, taken_at=NOW, value=Decimal("5"))
    rows = snapshot_history.portfolio_performance(portfolio=portfolio, now=NOW)
    assert {r.problem for r in rows} == {"needs two value snapshots in the period, has 1"}
    assert rows[0].values[0].value == Decimal("5")


def test_performance_and_history_equal_the_whole_series_on_the_embedded_sqlite(tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "portfolio.settings",
        "LIVEFOLIO_SQLITE_PATH": str(tmp_path / "db.sqlite3"),
    }
    script = (
        "import django; django.setup(); "
        "from django.core.management import call_command; call_command('migrate', verbosity=0); "
        "from tests.test_history import check_against_the_whole_series as check; check(); "
        "from django.db import connection; print(connection.vendor, 'ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["sqlite", "ok"]
