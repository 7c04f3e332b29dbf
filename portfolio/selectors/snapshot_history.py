"""Value history from the minute snapshots (1D) and the performance of a period from them."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import connection
from django.db.models import DateTimeField
from django.db.models.expressions import RawSQL
from django.utils import timezone

from portfolio import performance, wire
from portfolio.models import (
    Portfolio,
    ValuationSnapshot,
)
from portfolio.selectors.ledger_reads import external_flows


@dataclass(frozen=True)
class PeriodPerformance:
    """One row of the performance page: the numbers and how they were computed."""

    period: str
    start: datetime | None
    end: datetime | None
    values: tuple[performance.ValuePoint, ...]  # the snapshots read: its numbers come from them
    flows: tuple[performance.CashFlow, ...]
    twr: performance.TimeWeightedReturn | None
    irr: performance.IrrResult | None
    problem: str | None
    # Under a year the IRR is the period's own rate (not annualized, as GIPS asks); irr_dates
    # are the real dates of irr.flows, whose times were stretched to compute it.
    irr_annualized: bool = True
    irr_dates: tuple[datetime, ...] = ()


YEAR = timedelta(days=365)


def _period_irr(
    points: tuple[performance.ValuePoint, ...], flows: tuple[performance.CashFlow, ...]
) -> tuple[performance.IrrResult, bool, tuple[datetime, ...]]:
    """XIRR over the span; under a year, time is stretched so the span is one year, which
    makes the annual rate the rate for the period (annualizing minutes overflows)."""
    span = points[-1].at - points[0].at
    if span >= YEAR:
        irr = performance.money_weighted_return(values=points, flows=flows)
        return irr, True, tuple(f.at for f in irr.flows)
    origin, scale = points[0].at, YEAR / span

    def stretch(at: datetime) -> datetime:
        return origin + (at - origin) * scale

    originals = {stretch(p.at): p.at for p in points} | {stretch(f.at): f.at for f in flows}
    irr = performance.money_weighted_return(
        values=[performance.ValuePoint(at=stretch(p.at), value=p.value) for p in points],
        flows=[performance.CashFlow(at=stretch(f.at), amount=f.amount) for f in flows],
    )
    return irr, False, tuple(originals.get(f.at, f.at) for f in irr.flows)


# The value chart draws at most this many points; a long range is thinned to one per time bucket.
HISTORY_MAX_POINTS = 500
# A range of up to this many snapshots is read whole and thinned here (quicker for a day of
# minutes); a longer one is looked up bucket by bucket, at a cost that does not grow with it.
HISTORY_READ_WHOLE = 20_000
# Instants looked up per query by _snapshots_near (SQLite allows 32,766 parameters a query).
_LOOKUPS_PER_QUERY = 250


def _snapshots_near(
    *, portfolio: Portfolio, until: datetime, lookups: Iterable[tuple[str, datetime]]
) -> list[performance.ValuePoint]:
    """The portfolio's snapshots found by ``lookups``, oldest first, each once, none after
    ``until``. A lookup ``("lt", at)`` or ``("lte", at)`` finds the last snapshot before (or at)
    ``at``; ``("gte", at)`` the first at or after it. Each is one index lookup, so the cost
    follows the number of lookups, not how many snapshots (a year of minutes: 525,600) exist.
    """
    own = ValuationSnapshot.objects.filter(portfolio=portfolio, taken_at__lte=until).order_by()
    # Each lookup is a scalar subquery, one column of a one-row query; written out once rather
    # than built by the ORM for each of hundreds of lookups. Inside an IN, PostgreSQL would
    # filter every snapshot against them instead of looking each up. A backward lookup has one
    # upper bound, the earlier of ``at`` and ``until``: given both, SQLite seeks to one and may
    # scan from ``until`` back to ``at``, across a year of minutes.
    table = connection.ops.quote_name(ValuationSnapshot._meta.db_table)
    adapt = connection.ops.adapt_datetimefield_value
    picks = {}
    for lookup, at in dict.fromkeys(lookups):
        if lookup == "gte":
            where, params, order = "taken_at >= %s AND taken_at <= %s", (at, until), "ASC"
        elif at <= until:
            where, params, order = f"taken_at {'<' if lookup == 'lt' else '<='} %s", (at,), "DESC"
        else:
            where, params, order = "taken_at <= %s", (until,), "DESC"
        sql = (
            f"SELECT taken_at FROM {table} WHERE portfolio_id = %s AND {where}"
            f" ORDER BY taken_at {order} LIMIT 1"
        )
        params = (portfolio.pk, *map(adapt, params))
        picks[f"pick{len(picks)}"] = RawSQL(sql, params, output_field=DateTimeField())
    instants: set[datetime] = set()
    names = list(picks)
    for begin in range(0, len(names), _LOOKUPS_PER_QUERY):
        chunk = {name: picks[name] for name in names[begin : begin + _LOOKUPS_PER_QUERY]}
        row = Portfolio.objects.filter(pk=portfolio.pk).annotate(**chunk).values_list(*chunk)
        instants.update(at for at in row.first() or () if at is not None)
    points: dict[datetime, Decimal] = {}
    found = sorted(instants)
    for begin in range(0, len(found), _LOOKUPS_PER_QUERY):
        chunk_at = found[begin : begin + _LOOKUPS_PER_QUERY]
        points.update(own.filter(taken_at__in=chunk_at).values_list("taken_at", "value"))
    return [performance.ValuePoint(at=at, value=points[at]) for at in sorted(points)]


def value_history(
    *, portfolio: Portfolio, period: performance.Period | str, now: datetime | None = None
) -> list[dict[str, str]]:
    """The portfolio's value snapshots over ``period`` (1D, 1W, 1M, YTD, 1Y or MAX) as
    ``{"at": iso, "value": decimal string}``, oldest first, for the value chart.

    A range holding more than HISTORY_MAX_POINTS snapshots is split into that many equal time
    buckets, from its first snapshot to ``now``, and keeps the last snapshot of each (the newest
    point is always kept). A long range is not read: one index lookup per bucket finds each,
    so a year of minute snapshots draws about as quickly as a day's. Raises PerformanceError
    on an unknown period.
    """
    now = now or timezone.now()
    start = performance.period_start(period=period, now=now)
    rows = ValuationSnapshot.objects.filter(portfolio=portfolio, taken_at__lte=now)
    if start is not None:
        rows = rows.filter(taken_at__gte=start)
    rows = rows.order_by("taken_at")
    whole = rows[: HISTORY_READ_WHOLE + 1].count() <= HISTORY_READ_WHOLE
    series = list(rows.values_list("taken_at", "value")) if whole else []
    if whole and len(series) <= HISTORY_MAX_POINTS:
        return [{"at": wire.iso(at), "value": wire.money(value)} for at, value in series]
    first = series[0][0] if whole else rows.values_list("taken_at", flat=True).first()
    width = (now - first) / HISTORY_MAX_POINTS
    # Bucket i is [first + i * width, first + (i + 1) * width); the last one ends at now.
    ends = [first + width * (i + 1) for i in range(HISTORY_MAX_POINTS - 1)]
    if whole:  # later snapshots overwrite earlier ones: each bucket keeps its last
        series = list({bisect.bisect_right(ends, at): (at, v) for at, v in series}.values())
    else:
        lookups = [*(("lt", end) for end in ends), ("lte", now)]
        found = _snapshots_near(portfolio=portfolio, until=now, lookups=lookups)
        series = [(point.at, point.value) for point in found if point.at >= first]
    return [{"at": wire.iso(at), "value": wire.money(value)} for at, value in series]


def portfolio_performance(
    *, portfolio: Portfolio, now: datetime | None = None
) -> list[PeriodPerformance]:
    """TWR and IRR for 1D, 1W, 1M, YTD, 1Y and Max from the value snapshots and the ledger's
    deposits and withdrawals. A period needs two snapshots inside it.

    The TWR chains sub-periods cut at the last snapshot before each flow, and the IRR uses the
    first and last values and the flows, so only those snapshots are read: one index lookup
    per period start, one for the end and one per flow, however many minutes of snapshots
    there are. Each period's ``values`` are the snapshots read that fall inside it.
    """
    now = now or timezone.now()
    own = ValuationSnapshot.objects.filter(portfolio=portfolio, taken_at__lte=now)
    inception = own.order_by("taken_at").values_list("taken_at", flat=True).first()
    flows = external_flows(portfolio=portfolio)
    starts = {
        period: performance.period_start(period=period, now=now, inception=inception)
        for period in performance.Period
    }
    snapshots: list[performance.ValuePoint] = []
    if inception is not None:
        lookups = [("lte", now)]  # the last snapshot, where every period ends
        lookups += [("gte", start) for start in starts.values() if start is not None]
        # Where each flow is cut in: the last snapshot at or before it.
        lookups += [("lte", f.at) for f in flows if inception <= f.at < now]
        snapshots = _snapshots_near(portfolio=portfolio, until=now, lookups=lookups)
    results = []
    for period, start in starts.items():
        points = tuple(p for p in snapshots if start is None or p.at >= start)
        inside = tuple(f for f in flows if points and points[0].at <= f.at < points[-1].at)
        twr = irr = None
        annualized, irr_dates = True, ()
        problem = None
        if len(points) < 2:
            problem = f"needs two value snapshots in the period, has {len(points)}"
        else:
            try:
                twr = performance.time_weighted_return(values=points, flows=inside)
            except performance.PerformanceError as exc:
                problem = str(exc)
            try:
                irr, annualized, irr_dates = _period_irr(points, inside)
            except performance.PerformanceError as exc:
                problem = problem or f"IRR: {exc}"
        results.append(
            PeriodPerformance(
                period=str(period),
                start=points[0].at if points else start,
                end=points[-1].at if points else None,
                values=points,
                flows=inside,
                twr=twr,
                irr=irr,
                irr_annualized=annualized,
                irr_dates=irr_dates,
                problem=problem,
            )
        )
    return results
