"""A portfolio's value on every past day, and its returns over any range of days, from its
ledger and price history (pure ``Decimal`` math, no Django imports).

Conventions a caller must know:

- A day is a UTC calendar day; a day's value is the value at its end (every transaction of
  the day applied), at that day's closes and FX rates. A day without a close has the last close
  before it (carried, and listed as such).
- Returns from day ``a`` to day ``c`` run from the end of ``a`` to the end of ``c``; the flows
  (deposits +, withdrawals -, in the base currency at their own date's rate) of days ``a + 1``
  to ``c`` count. So the range ``[a, c]`` chains ``[a, b]`` and ``[b, c]`` exactly.
- TWR chains daily sub-periods, each day's flows counted at its start:
  ``V(d) / (V(d - 1) + F(d)) - 1``.
- IRR is XIRR (actual/365, as spreadsheets): ``-V(a)`` on day ``a``, ``-F(d)`` on day ``d``,
  ``+V(c)`` on day ``c``. It is annualized when the range is a year or longer; under a year the
  rate for the range itself is given (annualizing days of noise says nothing), and labelled.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from portfolio import ledger, performance

ZERO = Decimal(0)
YEAR_DAYS = 365
# A value chart's points at most: more than a chart is wide, few enough to value quickly.
CHART_POINTS = 500


@dataclass(frozen=True, slots=True)
class ClosePrice:
    """The close that holds on ``day``: the close of ``priced_on``, the last day with a price
    on or before it. ``carried`` when that is an earlier day (a weekend, a holiday, a gap)."""

    day: date
    close: Decimal
    priced_on: date

    @property
    def carried(self) -> bool:
        return self.priced_on != self.day


def close_on(series: Sequence[tuple[date, Decimal]], day: date) -> ClosePrice | None:
    """The close on ``day`` from ``series`` ((day, close) sorted by day, one per day), carried
    forward from the last earlier day when ``day`` has none; None before the first day."""
    index = bisect.bisect_right(series, day, key=lambda row: row[0]) - 1
    if index < 0:
        return None
    priced_on, close = series[index]
    return ClosePrice(day=day, close=close, priced_on=priced_on)


def closes_between(
    series: Sequence[tuple[date, Decimal]], start: date, end: date
) -> list[ClosePrice]:
    """The close of every day from ``start`` to ``end`` inclusive, gaps carried forward; days
    before the series' first day are left out."""
    out = []
    index = bisect.bisect_right(series, start, key=lambda row: row[0]) - 1
    day = start
    while day <= end:
        while index + 1 < len(series) and series[index + 1][0] <= day:
            index += 1
        if index >= 0:
            out.append(ClosePrice(day=day, close=series[index][1], priced_on=series[index][0]))
        day += timedelta(days=1)
    return out


@dataclass(frozen=True, slots=True)
class DayValue:
    """A portfolio's value at the end of one day, in the base currency, and how it was priced:
    ``carried`` instruments used an earlier day's close, ``missing`` ones (no close or no FX
    rate yet) are left out of ``value``."""

    day: date
    value: Decimal
    holdings_value: Decimal
    cash_value: Decimal
    carried: tuple[Hashable, ...] = ()
    missing: tuple[str, ...] = ()


# (currency, day) -> base-currency units per unit of currency, or None when unknown.
FxOnDay = Callable[[str, date], Decimal | None]


def daily_values(
    states: Iterable[ledger.DayState],
    *,
    closes: Mapping[Hashable, Sequence[tuple[date, Decimal]]],
    fx: FxOnDay,
) -> list[DayValue]:
    """Value each day's state at that day's closes (carried over gaps) and FX rates.

    ``states`` come in day order (as :func:`ledger.daily_states` yields them): each
    instrument's close is found by moving a cursor forward, and each currency's rate is asked
    for once a day, so ten years of fifty holdings stay a linear walk.
    """
    out = []
    cursors: dict[Hashable, int] = {}
    for state in states:
        day = state.day
        holdings = cash = ZERO
        carried, missing = [], []
        rates: dict[str, Decimal | None] = {}
        for instrument, quantity in state.quantities.items():
            series = closes.get(instrument, ())
            index = cursors.get(instrument, -1)
            while index + 1 < len(series) and series[index + 1][0] <= day:
                index += 1
            cursors[instrument] = index
            currency = state.currencies.get(instrument) or ""
            if currency not in rates:
                rates[currency] = fx(currency, day) if currency else None
            rate = rates[currency]
            if index < 0 or rate is None:
                missing.append(f"{instrument}: no {'close' if index < 0 else 'FX rate'}")
                continue
            priced_on, close = series[index]
            if priced_on != day:
                carried.append(instrument)
            holdings += quantity * close * rate
        for currency, amount in state.cash.items():
            if amount == 0:
                continue
            if currency not in rates:
                rates[currency] = fx(currency, day)
            rate = rates[currency]
            if rate is None:
                missing.append(f"cash {currency}: no FX rate")
                continue
            cash += amount * rate
        out.append(DayValue(day, holdings + cash, holdings, cash, tuple(carried), tuple(missing)))
    return out


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class RangeReturns:
    """TWR and IRR from the end of ``start`` to the end of ``end``, with their working."""

    start: date
    end: date
    twr: performance.TimeWeightedReturn
    irr: performance.IrrResult | None
    irr_annualized: bool  # False: ``irr_rate`` is the rate for the range itself
    irr_rate: Decimal | None
    irr_problem: str | None
    irr_days: tuple[date, ...] = ()  # the day of each of ``irr.flows``, in their order


def range_days(flows: Iterable[tuple[date, Decimal]], *, start: date, end: date) -> list[date]:
    """The days whose values :func:`range_returns` reads for ``[start, end]``: the two ends and
    the eve of each day in the range with a flow. Between two flows the daily TWR links
    multiply to the end value over the start value, so no other day changes a return."""
    eves = {day - timedelta(days=1) for day, _ in flows if start < day <= end}
    return sorted({start, end, *eves})


def chart_days(start: date, end: date, *, most: int = CHART_POINTS) -> list[date]:
    """At most ``most`` days from ``start`` to ``end`` for a value chart: every day when they
    fit, else every n-th day counted back from ``end`` (so the newest point is ``end``'s), and
    ``start``."""
    span = (end - start).days
    # The n-th days back from ``end`` and ``start`` together stay within ``most``.
    step = 1 if span < most else -(-span // (most - 2))
    return sorted({start, *(end - timedelta(days=n) for n in range(0, span + 1, step))})


def range_returns(
    values: Sequence[DayValue],
    flows: Iterable[tuple[date, Decimal]],
    *,
    start: date,
    end: date,
) -> RangeReturns:
    """Returns over ``[start, end]`` from ``values`` (in day order, covering at least
    :func:`range_days`) and ``flows`` ((day, amount in the base currency), deposits
    positive)."""
    if end <= start:
        raise performance.PerformanceError(f"the range must end after it starts: {start}..{end}")
    flows = list(flows)
    per_day: dict[date, Decimal] = {}
    for day, amount in flows:
        if start < day <= end:
            per_day[day] = per_day.get(day, ZERO) + amount
    # The value at the end of day d is stamped at the next midnight; day d's flows at its own
    # midnight attach to the value of the end of d - 1: flows count at the start of their day.
    cuts = range_days(flows, start=start, end=end)
    day_value = _value_lookup(values, cuts)
    for day in cuts:
        # A value without one of its holdings would read as a loss (or gain) that never was.
        left_out = day_value(day).missing
        if left_out:
            raise performance.PerformanceError(
                f"the value of {day} leaves out {'; '.join(left_out)} (import its history)"
            )

    def value_on(day: date) -> Decimal:
        return day_value(day).value

    points = [
        performance.ValuePoint(at=_midnight(d) + timedelta(days=1), value=value_on(d)) for d in cuts
    ]
    twr_flows = [performance.CashFlow(at=_midnight(d), amount=a) for d, a in per_day.items()]
    twr = performance.time_weighted_return(values=points, flows=twr_flows)
    dated = [(_midnight(start), -value_on(start))]
    dated += [(_midnight(d), -a) for d, a in sorted(per_day.items())]
    dated.append((_midnight(end), value_on(end)))
    irr_days = tuple(at.date() for at, _ in dated)
    annualized = (end - start).days >= YEAR_DAYS
    if not annualized:
        # Under a year, time is stretched so the range is one year long: the annual rate of the
        # stretched flows is the rate for the range (compounding days up to a year overflows).
        origin, scale = dated[0][0], YEAR_DAYS / (end - start).days
        dated = [(origin + (at - origin) * scale, amount) for at, amount in dated]
    irr = problem = None
    try:
        irr = performance.xirr(flows=dated)
    except performance.PerformanceError as exc:
        problem = str(exc)
    rate = None if irr is None else irr.rate
    return RangeReturns(start, end, twr, irr, annualized, rate, problem, irr_days)


def _value_lookup(values: Sequence[DayValue], days: Sequence[date]) -> Callable[[date], DayValue]:
    """The value of each of ``days`` from ``values``; raises ``PerformanceError`` naming the
    first of them without one."""
    by_day = {v.day: v for v in values}
    gaps = [d for d in days if d not in by_day]
    if gaps:
        raise performance.PerformanceError(f"no value for {gaps[0]} (and {len(gaps) - 1} more)")
    return by_day.__getitem__
