"""How well a portfolio did: time-weighted return, money-weighted return (XIRR), periods.

Pure ``Decimal`` math with no Django imports. Every result carries the figures it was computed
from (sub-periods, discounted flows) so a page can show its working. Rates are fractions:
``Decimal("0.05")`` is 5 %.

External cash flows (:class:`CashFlow`) are seen from the portfolio: a deposit is positive, a
withdrawal negative. A value snapshot taken at the same instant as a flow is the value *just
before* the flow, which is how the textbook examples state it.
"""

from __future__ import annotations

import calendar
import enum
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Context, Decimal, DivisionByZero, InvalidOperation, Overflow, localcontext

__all__ = [
    "CashFlow",
    "IrrFlow",
    "IrrResult",
    "PerformanceError",
    "Period",
    "SubPeriod",
    "TimeWeightedReturn",
    "ValuePoint",
    "money_weighted_return",
    "period_start",
    "time_weighted_return",
    "xirr",
]

ZERO = Decimal(0)
ONE = Decimal(1)
_CONTEXT = Context(prec=40, traps=[InvalidOperation, DivisionByZero, Overflow])
_SECONDS_PER_YEAR = Decimal(365 * 24 * 3600)  # actual/365, as Excel's XIRR
DEFAULT_TOLERANCE = Decimal("1e-12")
# Candidate rates scanned for a sign change of the NPV; the bracket nearest 10 % (Excel's
# default guess) is refined, so the usual root is found when several exist.
_RATE_GRID = tuple(
    Decimal(r)
    for r in (
        "-0.999999", "-0.99", "-0.9", "-0.75", "-0.5", "-0.25", "-0.1", "0", "0.1", "0.25",
        "0.5", "1", "2", "5", "10", "100", "1000", "1000000",
    )
)  # fmt: skip


class PerformanceError(ValueError):
    """A return that cannot be computed from the given data; the message says why."""


@dataclass(frozen=True, slots=True)
class ValuePoint:
    """The portfolio's market value at one instant."""

    at: datetime
    value: Decimal


@dataclass(frozen=True, slots=True)
class CashFlow:
    """Money moved into (positive) or out of (negative) the portfolio from outside."""

    at: datetime
    amount: Decimal


@dataclass(frozen=True, slots=True)
class SubPeriod:
    """One link of the TWR chain: ``end_value / (start_value + flow) - 1``.

    ``flow_times`` lists when the flows happened; they differ from ``start`` when no snapshot
    was taken at the flow, and the flows are then treated as if made at ``start``.
    """

    start: datetime
    end: datetime
    start_value: Decimal
    flow: Decimal
    end_value: Decimal
    period_return: Decimal
    flow_times: tuple[datetime, ...] = ()


@dataclass(frozen=True, slots=True)
class TimeWeightedReturn:
    """Cumulative (not annualized) TWR and the sub-periods it chains."""

    start: datetime
    end: datetime
    cumulative: Decimal
    sub_periods: tuple[SubPeriod, ...]
    ignored_flows: tuple[CashFlow, ...]  # outside [start, end): already in a value, or after

    @property
    def approximate(self) -> bool:
        """True when some flow had no snapshot at its instant."""
        return any(t != sp.start for sp in self.sub_periods for t in sp.flow_times)


@dataclass(frozen=True, slots=True)
class IrrFlow:
    """One flow of an IRR, from the investor's side, discounted at the solved rate."""

    at: datetime
    amount: Decimal
    years: Decimal
    present_value: Decimal


@dataclass(frozen=True, slots=True)
class IrrResult:
    """Annualized money-weighted return; a root of the NPV lies within ``tolerance`` of it."""

    rate: Decimal
    flows: tuple[IrrFlow, ...]
    npv: Decimal  # residual NPV at ``rate``, close to zero
    tolerance: Decimal
    iterations: int


def _check_time(at: object, what: str) -> None:
    if not isinstance(at, datetime) or at.utcoffset() is None:
        raise PerformanceError(f"{what} must be a timezone-aware datetime, got {at!r}")


def _check_amount(amount: object, what: str) -> None:
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise PerformanceError(f"{what} must be a finite Decimal, got {amount!r}")


def _checked_series(
    values: Iterable[ValuePoint], flows: Iterable[CashFlow]
) -> tuple[list[ValuePoint], list[CashFlow]]:
    points = list(values)
    for point in points:
        _check_time(point.at, "ValuePoint.at")
        _check_amount(point.value, f"value at {point.at.isoformat()}")
    points.sort(key=lambda p: p.at)
    if len(points) < 2:
        raise PerformanceError(f"need at least two value snapshots, got {len(points)}")
    for before, after in itertools.pairwise(points):
        if before.at == after.at:
            raise PerformanceError(f"two value snapshots at {after.at.isoformat()}")
    moves = list(flows)
    for flow in moves:
        _check_time(flow.at, "CashFlow.at")
        _check_amount(flow.amount, f"cash flow at {flow.at.isoformat()}")
    moves.sort(key=lambda f: f.at)
    return points, moves


def time_weighted_return(
    *, values: Iterable[ValuePoint], flows: Iterable[CashFlow] = ()
) -> TimeWeightedReturn:
    """Chain sub-period returns, cutting a sub-period at every external cash flow.

    Each sub-period's return is ``end_value / (start_value + flow) - 1`` where ``start_value``
    is the snapshot just before the flow. A flow between snapshots is treated as made at the
    last snapshot before it (the result is then ``approximate``). Flows before the first or at
    or after the last snapshot are outside the measured span and are ignored, but listed.
    """
    points, moves = _checked_series(values, flows)
    first, last = points[0].at, points[-1].at
    with localcontext(_CONTEXT):
        # Index of the snapshot each flow attaches to, and the flows summed per index.
        attached: dict[int, list[CashFlow]] = {}
        ignored = []
        cursor = 0
        for flow in moves:
            if not first <= flow.at < last:
                ignored.append(flow)
                continue
            while points[cursor + 1].at <= flow.at:
                cursor += 1
            attached.setdefault(cursor, []).append(flow)
        cuts = sorted({0, *attached, len(points) - 1})
        sub_periods = []
        growth = ONE
        for begin, finish in itertools.pairwise(cuts):
            start, end = points[begin], points[finish]
            group = attached.get(begin, [])
            flow = sum((f.amount for f in group), ZERO)
            invested = start.value + flow
            if invested < 0:
                raise PerformanceError(
                    f"sub-period from {start.at.isoformat()}: value {start.value} plus flows "
                    f"{flow} is negative; a withdrawal cannot exceed the value"
                )
            if invested == 0:
                if end.value != 0:
                    raise PerformanceError(
                        f"sub-period from {start.at.isoformat()} starts with nothing invested "
                        f"but ends at {end.value}; a deposit is missing"
                    )
                period_return = ZERO  # nothing invested, nothing gained
            else:
                period_return = end.value / invested - 1
            growth *= 1 + period_return
            sub_periods.append(
                SubPeriod(
                    start=start.at,
                    end=end.at,
                    start_value=start.value,
                    flow=flow,
                    end_value=end.value,
                    period_return=period_return,
                    flow_times=tuple(f.at for f in group),
                )
            )
        return TimeWeightedReturn(
            start=first,
            end=last,
            cumulative=growth - 1,
            sub_periods=tuple(sub_periods),
            ignored_flows=tuple(ignored),
        )


def _years(since: datetime, at: datetime) -> Decimal:
    delta = at - since
    seconds = Decimal(delta.days) * 86400 + delta.seconds + Decimal(delta.microseconds) / 10**6
    return seconds / _SECONDS_PER_YEAR


def _npv(rate: Decimal, flows: list[tuple[Decimal, Decimal]]) -> Decimal:
    log_growth = (1 + rate).ln()
    return sum(((amount * (-years * log_growth).exp()) for years, amount in flows), ZERO)


def xirr(
    *, flows: Iterable[tuple[datetime, Decimal]], tolerance: Decimal = DEFAULT_TOLERANCE
) -> IrrResult:
    """Annualized internal rate of return of dated flows (actual/365), like Excel's XIRR.

    Sign convention as in Excel: money the investor pays in is negative, money received back
    (including the final value) positive. Solved by bracketing a sign change of the NPV and
    refining it (Illinois false position, with bisection steps so it always converges) until
    the bracket is narrower than ``tolerance``. Raises :class:`PerformanceError` when flows
    do not have both signs or no rate in (-99.9999 %, 10^8 %) makes the NPV zero.
    """
    dated = list(flows)
    if not dated:
        raise PerformanceError("IRR needs cash flows, got none")
    for at, amount in dated:
        _check_time(at, "flow date")
        _check_amount(amount, f"cash flow at {at.isoformat()}")
    _check_amount(tolerance, "tolerance")
    if tolerance <= 0:
        raise PerformanceError(f"tolerance must be positive, got {tolerance}")
    if not any(a < 0 for _, a in dated) or not any(a > 0 for _, a in dated):
        raise PerformanceError(
            f"IRR needs at least one negative and one positive cash flow; all {len(dated)} "
            "flows have the same sign (or are zero), so no rate makes the NPV zero"
        )
    dated.sort(key=lambda flow: flow[0])
    origin = dated[0][0]
    with localcontext(_CONTEXT):
        series = [(_years(origin, at), amount) for at, amount in dated]
        rate, iterations = _solve(series, tolerance)
        log_growth = (1 + rate).ln()
        explained = tuple(
            IrrFlow(at, amount, years, amount * (-years * log_growth).exp())
            for (at, amount), (years, _) in zip(dated, series, strict=True)
        )
        return IrrResult(
            rate=rate,
            flows=explained,
            npv=sum((f.present_value for f in explained), ZERO),
            tolerance=tolerance,
            iterations=iterations,
        )


def _solve(series: list[tuple[Decimal, Decimal]], tolerance: Decimal) -> tuple[Decimal, int]:
    values = [(rate, _npv(rate, series)) for rate in _RATE_GRID]
    for rate, npv in values:
        if npv == 0:
            return rate, 0
    brackets = [
        (lo, flo, hi, fhi)
        for (lo, flo), (hi, fhi) in itertools.pairwise(values)
        if (flo < 0) != (fhi < 0)
    ]
    if not brackets:
        raise PerformanceError(
            "no rate between -99.9999% and 100000000% makes the NPV of these flows zero"
        )
    guess = Decimal("0.1")
    lo, flo, hi, fhi = min(brackets, key=lambda b: max(b[0] - guess, guess - b[2], ZERO))
    stale = 0  # which end stayed put last time: -1 low, +1 high
    iterations = 0
    while hi - lo > tolerance:
        iterations += 1
        if iterations > 2000:
            raise PerformanceError("IRR did not converge in 2000 iterations")
        x = (lo * fhi - hi * flo) / (fhi - flo)
        # Every third step bisects, so the bracket shrinks even when false position crawls.
        if iterations % 3 == 0 or not lo < x < hi:
            x = (lo + hi) / 2
        fx = _npv(x, series)
        if fx == 0:
            return x, iterations
        if (fx < 0) == (flo < 0):
            lo, flo = x, fx
            if stale == 1:
                fhi /= 2  # Illinois: damp the end that keeps winning
            stale = 1
        else:
            hi, fhi = x, fx
            if stale == -1:
                flo /= 2
            stale = -1
    return (lo if abs(flo) <= abs(fhi) else hi), iterations


def money_weighted_return(
    *,
    values: Iterable[ValuePoint],
    flows: Iterable[CashFlow] = (),
    tolerance: Decimal = DEFAULT_TOLERANCE,
) -> IrrResult:
    """XIRR of a portfolio over the span of ``values``, from the same inputs as the TWR.

    The first value counts as invested at the start, the last as received at the end, and
    each flow in [start, end) as paid in (deposit) or taken out (withdrawal) at its time.
    """
    points, moves = _checked_series(values, flows)
    first, last = points[0], points[-1]
    investor = [(first.at, -first.value)]
    investor += [(f.at, -f.amount) for f in moves if first.at <= f.at < last.at]
    investor.append((last.at, last.value))
    return xirr(flows=investor, tolerance=tolerance)


class Period(enum.StrEnum):
    """The spans a performance page offers."""

    DAY = "1D"
    WEEK = "1W"
    MONTH = "1M"
    YTD = "YTD"
    YEAR = "1Y"
    MAX = "MAX"


def _months_back(now: datetime, months: int) -> datetime:
    month_index = now.year * 12 + now.month - 1 - months
    year, month = divmod(month_index, 12)
    month += 1
    # 31 March minus a month is the last day of February, not an error.
    day = min(now.day, calendar.monthrange(year, month)[1])
    return now.replace(year=year, month=month, day=day)


def period_start(
    *, period: Period | str, now: datetime, inception: datetime | None = None
) -> datetime | None:
    """When ``period`` began, as of ``now``, in ``now``'s time zone (wall-clock arithmetic).

    1D and 1W go back one and seven calendar days (same wall time, so 23 or 25 h across a DST
    change); 1M and 1Y go back a calendar month or year (clamped to the month's end); YTD is
    1 January 00:00. MAX is ``inception``, or None (everything) when unknown. A start before
    ``inception`` is clamped to it.
    """
    _check_time(now, "now")
    if inception is not None:
        _check_time(inception, "inception")
    try:
        period = Period(period)
    except ValueError:
        raise PerformanceError(
            f"period must be one of {', '.join(Period)}, got {period!r}"
        ) from None
    if period is Period.MAX:
        return inception
    if period is Period.DAY:
        start = now - timedelta(days=1)
    elif period is Period.WEEK:
        start = now - timedelta(days=7)
    elif period is Period.MONTH:
        start = _months_back(now, 1)
    elif period is Period.YEAR:
        start = _months_back(now, 12)
    else:
        start = now.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    if inception is not None and inception > start:
        return inception
    return start
