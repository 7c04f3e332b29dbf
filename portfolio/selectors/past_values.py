"""Past values from the ledger, the daily price history and the FX history: the value
chart's long ranges and the returns (TWR, IRR) over any range of days."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Count, Max, Q
from django.utils import timezone

from portfolio import day_values, ledger, performance, wire
from portfolio.models import (
    AssetClass,
    DailyPrice,
    Holding,
    Instrument,
    Portfolio,
    Transaction,
)
from portfolio.price_history import FxHistory
from portfolio.selectors.ledger_reads import external_flows, ledger_entries
from portfolio.selectors.live_states import trim_scale
from portfolio.selectors.snapshot_history import value_history

# What each portfolio's past values come from and the days valued so far, kept by each process
# for the portfolios asked about most recently (see _ledger_history): about 0.5 KB a
# transaction and 0.4 KB a valued day, so ten years of 2,000 trades are ~1.5 MB; a small
# number bounds what a web process holds.
HISTORIES_KEPT = 16
_histories_kept: OrderedDict[tuple, _LedgerHistory] = OrderedDict()
_histories_lock = threading.Lock()
# A day's close is looked for among its own and the days before it, this many in all:
# enough for a weekend and a holiday (see _closes_on).
CLOSE_WINDOW = 4


@dataclass(slots=True)
class _LedgerHistory:
    """A portfolio's ledger as its past values need it, and the values of the days valued
    so far (by day; none valued with a live FX quote, which moves)."""

    end: date
    base_currency: str
    method: ledger.CostBasis
    allow_short: bool
    entries: list[ledger.LedgerEntry]
    flows: list[tuple[date, Decimal]]  # external flows: (UTC day, base-currency amount)
    values: dict[date, day_values.DayValue] = field(default_factory=dict)


def _history_key(portfolio: Portfolio, end: date) -> tuple:
    """What a portfolio's values up to ``end`` depend on: its ledger (``recomputed_at``
    changes in every transaction that rewrites it, and its settings) and the daily prices of
    the instruments it has held and of every FX pair (how many and the newest write: an
    import, a backfill, the hourly roll-up of bars or a deletion changes one of them; a
    close after ``end`` counts too, which only costs a valuation)."""
    row = (
        Portfolio.objects.filter(pk=portfolio.pk)
        .values_list("recomputed_at", "base_currency", "cost_basis_method", "allow_short")
        .first()
    )
    held = Holding.objects.filter(portfolio_id=portfolio.pk).values("instrument_id")
    pairs = Instrument.objects.filter(asset_class=AssetClass.FX).values("id")
    # Count("*") and the two columns of the daily_price_writes index: an index-only scan.
    prices = DailyPrice.objects.filter(
        Q(instrument_id__in=held) | Q(instrument_id__in=pairs)
    ).aggregate(count=Count("*"), newest=Max("updated_at"))
    return (portfolio.pk, end, row, prices["count"], prices["newest"])


def _ledger_history(*, portfolio: Portfolio, end: date) -> _LedgerHistory:
    """The portfolio's ledger entries and external flows, with the values kept for it while
    nothing they depend on (:func:`_history_key`) changes. Raises ``PerformanceError``
    without transactions."""
    key = _history_key(portfolio, end)
    with _histories_lock:
        kept = _histories_kept.get(key)
        if kept is not None:
            _histories_kept.move_to_end(key)
            return kept
    entries = ledger_entries(portfolio)
    if not entries:
        raise performance.PerformanceError("the portfolio has no transactions")
    flows = [(f.at.astimezone(UTC).date(), f.amount) for f in external_flows(portfolio=portfolio)]
    _, base_currency, method, allow_short = key[2]
    kept = _LedgerHistory(end, base_currency, ledger.CostBasis(method), allow_short, entries, flows)
    with _histories_lock:
        kept = _histories_kept.setdefault(key, kept)
        while len(_histories_kept) > HISTORIES_KEPT:
            _histories_kept.popitem(last=False)
    return kept


def _values_on(
    history: _LedgerHistory, days: Iterable[date], *, along: Iterable[date] = ()
) -> list[day_values.DayValue]:
    """The portfolio's value at the end of each of ``days`` (UTC days up to ``history.end``),
    in day order, from the ledger, the daily price history (closes carried over gaps) and the
    FX history; only the days not valued before are valued, and when some are, the days of
    ``along`` not valued yet with them (one replay and one read of the closes for both).
    Raises ``LedgerError`` where the ledger refuses an entry up to ``history.end`` (the
    replay always runs to it)."""
    wanted = sorted(set(days))
    with _histories_lock:
        valued = dict(history.values)
    missing = [d for d in wanted if d not in valued]
    if missing:
        extra = {d for d in along if d not in valued and d <= history.end}
        missing = sorted({*missing, *extra, history.end} - valued.keys())
        computed, from_quotes = _values_computed(history, missing)
        valued.update(computed)
        if not from_quotes:
            with _histories_lock:
                history.values.update(computed)
    return [valued[d] for d in wanted]


def _values_computed(
    history: _LedgerHistory, days: list[date]
) -> tuple[dict[date, day_values.DayValue], bool]:
    """:func:`_values_on` computed for ``days`` (ascending): one query for the closes, one for
    the FX pairs' history; and whether a rate came from today's quote."""
    entries = history.entries
    states = list(
        ledger.states_on(entries, days=days, method=history.method, allow_short=history.allow_short)
    )
    closes = _closes_on(states)
    currencies = {e.currency for e in entries} | {e.to_currency for e in entries if e.to_currency}
    rates = FxHistory(base_currency=history.base_currency, currencies=currencies)
    from_quotes = False

    def fx(currency: str, day: date) -> Decimal | None:
        nonlocal from_quotes
        rate = rates.rate_on(currency, day)
        if rate is None:
            return None
        from_quotes = from_quotes or not rate.from_history
        return rate.rate

    values = day_values.daily_values(states, closes=closes, fx=fx)
    return {v.day: v for v in values}, from_quotes


def _closes_on(states: list[ledger.DayState]) -> dict[str, list[tuple[date, Decimal]]]:
    """For each instrument held on one of the states' days (by symbol), the close that holds
    on each of those days: the last close on or before it, as (day of the close, close) in day
    order, one row per close (what :func:`day_values.daily_values` reads).

    On PostgreSQL each instrument's close of each day is looked up by index, first among the
    day and the ``CLOSE_WINDOW - 1`` days before it (a weekend or a holiday ends within them),
    then without that bound only where the window has none; elsewhere every close up to the
    last day is read."""
    symbols = {symbol for state in states for symbol in state.quantities}
    closes: dict[str, list[tuple[date, Decimal]]] = {symbol: [] for symbol in symbols}
    if not symbols:
        return closes
    days = [state.day for state in states]
    ids = dict(Instrument.objects.filter(symbol__in=symbols).values_list("id", "symbol"))
    if connection.vendor == "postgresql":
        table = DailyPrice._meta.db_table
        with connection.cursor() as cursor:
            # UNION ALL ... LIMIT 1 runs its second, unbounded search only without a first row.
            cursor.execute(
                f"""SELECT i.id, p.day, p.close
                FROM unnest(%s::bigint[]) AS i(id) CROSS JOIN unnest(%s::date[]) AS d(day)
                CROSS JOIN LATERAL ((
                    SELECT day, close FROM {table} WHERE instrument_id = i.id
                    AND day <= d.day AND day > d.day - %s ORDER BY day DESC LIMIT 1
                ) UNION ALL (
                    SELECT day, close FROM {table} WHERE instrument_id = i.id
                    AND day <= d.day ORDER BY day DESC LIMIT 1
                ) LIMIT 1) p
                ORDER BY i.id, p.day""",
                [list(ids), days, CLOSE_WINDOW],
            )
            rows = cursor.fetchall()
    else:
        rows = list(
            DailyPrice.objects.filter(instrument_id__in=list(ids), day__lte=days[-1])
            .order_by("instrument_id", "day")
            .values_list("instrument_id", "day", "close")
        )
    # Only the close that holds on one of ``days`` is kept (and trimmed): for each instrument,
    # the last row on or before each day.
    last: tuple[int, date, Decimal] | None = None  # the row read last, not yet kept
    at = 0  # the index of the first day not yet past
    for row in rows:
        if last is not None and last[0] != row[0]:
            closes[ids[last[0]]].append((last[1], trim_scale(last[2])))
            last, at = None, 0
        while at < len(days) and days[at] < row[1]:
            if last is not None:  # the last close on or before days[at]
                closes[ids[last[0]]].append((last[1], trim_scale(last[2])))
                last = None
            at += 1
        if last is None or last[1] != row[1]:
            last = row
    if last is not None:
        closes[ids[last[0]]].append((last[1], trim_scale(last[2])))
    return closes


def portfolio_returns(
    *, portfolio: Portfolio, start: date, end: date
) -> tuple[day_values.RangeReturns, list[day_values.DayValue]]:
    """TWR and IRR from the end of day ``start`` to the end of day ``end`` (UTC), and the
    values they come from (the days :func:`day_values.range_days` names: the two ends and the
    eve of each flow): derived from the ledger, the daily price history (closes carried over
    gaps) and the FX history, not from snapshots. Raises ``PerformanceError`` naming what is
    missing."""
    history = _ledger_history(portfolio=portfolio, end=end)
    values = _values_on(history, day_values.range_days(history.flows, start=start, end=end))
    return day_values.range_returns(values, history.flows, start=start, end=end), values


def first_transaction_day(*, portfolio: Portfolio) -> date | None:
    """The UTC day of the portfolio's first transaction, or None without any."""
    first = (
        Transaction.objects.filter(portfolio=portfolio)
        .order_by("executed_at")
        .values_list("executed_at", flat=True)
        .first()
    )
    return None if first is None else first.astimezone(UTC).date()


def value_series(
    *, portfolio: Portfolio, period: performance.Period | str, now: datetime | None = None
) -> dict[str, Any]:
    """The value chart's series for ``period``, oldest first, as ``{"points": [{"at",
    "value"}], "source", ...}``.

    1D is intraday: the minute value snapshots (:func:`value_history`, ``source``
    ``"snapshots"``). 1W, 1M, YTD, 1Y and Max are daily (``source`` ``"ledger"``): the value at
    the end of UTC days, from the ledger, the price history and the FX history, stamped at the
    day's 00:00 UTC (``day`` names it), from the period's first day or the first transaction's
    day, whichever is later, to today (today's value at the latest closes): every day when
    they are at most :data:`day_values.CHART_POINTS`, else every n-th day back from today and
    the first (:func:`day_values.chart_days`). A live valuation extends the right-hand end.
    ``carried_days`` counts the points valued with an earlier day's close, ``missing_days``
    the points with a holding left out for want of a close or an FX rate; ``problem`` names a
    ledger refusal (then there are no points).
    """
    now = now or timezone.now()
    period = performance.Period(period)
    if period is performance.Period.DAY:
        return {
            "points": value_history(portfolio=portfolio, period=period, now=now),
            "source": "snapshots",
        }
    found: dict[str, Any] = {"points": [], "source": "ledger", "carried_days": 0}
    found.update(missing_days=0, problem=None)
    first = first_transaction_day(portfolio=portfolio)
    if first is None:
        return found
    today = now.astimezone(UTC).date()
    start = first
    if period is not performance.Period.MAX:
        start = max(first, performance.period_start(period=period, now=now).astimezone(UTC).date())
    try:
        history = _ledger_history(portfolio=portfolio, end=today)
        values = _values_on(
            history, day_values.chart_days(start, today), along=_page_days(history, first, now)
        )
    except (performance.PerformanceError, ledger.LedgerError) as exc:
        found["problem"] = str(exc)
        return found
    found["points"] = [
        # wire.iso of the day's 00:00 UTC, written out: one per point of up to decades.
        {"at": f"{day}T00:00:00.000Z", "day": day, "value": wire.money(v.value)}
        for v in values
        for day in (v.day.isoformat(),)
    ]
    found["carried_days"] = sum(1 for v in values if v.carried)
    found["missing_days"] = sum(1 for v in values if v.missing)
    return found


@dataclass(frozen=True, slots=True)
class RangeResult:
    """Returns over one range of days (a preset period or a custom one) from the ledger and
    price history, or the ``problem`` that kept them from being computed."""

    period: str  # 1D, 1W, 1M, YTD, 1Y, MAX or "custom"
    start: date
    end: date
    returns: day_values.RangeReturns | None
    problem: str | None


def period_returns(
    *,
    portfolio: Portfolio,
    now: datetime | None = None,
    custom: tuple[date, date] | None = None,
) -> list[RangeResult]:
    """TWR and IRR over each preset period (1D … Max), and over ``custom`` (from, to) when
    given, from the ledger and the daily price history (not the snapshots), valuing only the
    days they read (:func:`day_values.range_days`), once for all of them.

    A period runs from the end of the day its start falls on (1D: yesterday) to the end of
    today (UTC); a start before the first transaction is moved to the day before it (value 0),
    so Max runs from there. ``custom`` must end after it starts and not after today.
    """
    now = now or timezone.now()
    today = now.astimezone(UTC).date()
    first = first_transaction_day(portfolio=portfolio)
    ranges = [] if first is None else _preset_ranges(first, now)
    if custom is not None:
        ranges.append(("custom", *custom))
    problems = {}
    for name, start, end in ranges:
        if end <= start:
            problems[name] = f"the range must end after it starts: {start}..{end}"
        elif end > today:
            problems[name] = f"the range ends in the future: {end}"
    if first is None:
        problems = {name: "the portfolio has no transactions" for name, _, _ in ranges}
    wanted = [(s, e) for name, s, e in ranges if name not in problems]
    values: list[day_values.DayValue] = []
    flows: list[tuple[date, Decimal]] = []
    if wanted:
        try:
            history = _ledger_history(portfolio=portfolio, end=max(e for _, e in wanted))
            flows = history.flows
            days = {d for s, e in wanted for d in day_values.range_days(flows, start=s, end=e)}
            along = _page_days(history, first, now) if history.end == today else ()
            values = _values_on(history, days, along=along)
        except (performance.PerformanceError, ledger.LedgerError) as exc:
            problems.update({name: str(exc) for name, _, _ in ranges})
    out = []
    for name, start, end in ranges:
        returns = None
        problem = problems.get(name)
        if problem is None:
            try:
                returns = day_values.range_returns(values, flows, start=start, end=end)
            except performance.PerformanceError as exc:
                problem = str(exc)
        out.append(RangeResult(name, start, end, returns, problem))
    return out


def _preset_ranges(first: date, now: datetime) -> list[tuple[str, date, date]]:
    """(period, first day, last day) of 1D … Max for :func:`period_returns`."""
    today = now.astimezone(UTC).date()
    inception = first - timedelta(days=1)
    ranges = []
    for period in performance.Period:
        start = inception
        if period is not performance.Period.MAX:
            begun = performance.period_start(period=period, now=now)
            start = max(inception, begun.astimezone(UTC).date())
        ranges.append((period.value, start, today))
    return ranges


def _page_days(history: _LedgerHistory, first: date, now: datetime) -> set[date]:
    """The days the live and performance pages and the API ask for first, valued together
    whichever asks first: Max's chart points and what the returns over 1D … Max read."""
    today = now.astimezone(UTC).date()
    days = set(day_values.chart_days(first, today))
    for _, start, end in _preset_ranges(first, now):
        days.update(day_values.range_days(history.flows, start=start, end=end))
    return days
