"""Reads: what a page or a stream needs, in as few queries as possible."""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, DateTimeField, Max, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone

from portfolio import day_values, ledger, performance, valuation, wire
from portfolio.ledger import TxKind
from portfolio.models import (
    AssetClass,
    CashBalance,
    DailyPrice,
    FeedStatus,
    Holding,
    Instrument,
    Portfolio,
    PriceBar,
    Quote,
    Transaction,
    ValuationSnapshot,
)
from portfolio.price_history import FxHistory, fx_pair


def fx_rates() -> dict[tuple[str, str], Decimal]:
    """Every FX rate with a price: an FX instrument (asset class "fx") ``EURUSD`` or ``EUR-USD``
    quoted in USD, whose latest price is how many USD one EUR buys."""
    rates = {}
    quotes = Quote.objects.filter(instrument__asset_class=AssetClass.FX).select_related(
        "instrument"
    )
    for quote in quotes:
        pair = fx_pair(quote.instrument)
        if pair is not None:
            rates[pair] = _trim(quote.price)
    return rates


# Wider than any column (30 digits): trimming never rounds.
_WIDE = Context(prec=60)


def _trim(value: Decimal | None) -> Decimal | None:
    """The same number without the trailing zeros of its column's scale (a quantity comes back
    as 17.110000000000, a price as 526.7902000000): a product of two trimmed numbers has 8
    digits instead of 27, so a holding's arithmetic and rounding work on short numbers; every
    amount and text comes out the same."""
    return None if value is None else value.normalize(_WIDE)


@dataclass(slots=True)
class BookPosition:
    """A holding as a valuation needs it: what changes only when the ledger is replayed."""

    instrument: int
    quantity: Decimal
    cost_basis: Decimal
    currency: str  # "" = the instrument's quote currency
    realized_pnl: Decimal
    income: Decimal
    # The same figures as wire strings, formatted once per ledger change, not per valuation.
    texts: dict[str, str | None]
    # What value_portfolio takes, kept while the instrument's currency and class stay the same.
    holding: valuation.HoldingInput | None = None
    # In the base currency at each trade's own date's rate (None: unknown, today's rate used).
    cost_basis_base: Decimal | None = None
    realized_pnl_base: Decimal | None = None
    fx_note: str = ""


@dataclass(slots=True)
class PortfolioBook:
    """One portfolio's ledger-derived state: positions and cash. A valuation adds prices."""

    id: int
    owner_id: int
    name: str
    base_currency: str
    cost_basis_method: str
    recomputed_at: datetime | None
    positions: list[BookPosition]
    cash: list[tuple[str, Decimal, Decimal]]  # (currency, amount, income)
    # Per currency, income in the base currency at each payment's date's rate.
    income_base: dict[str, Decimal | None] = field(default_factory=dict)


@dataclass(slots=True)
class Market:
    """One instrument's descriptive fields and latest quote (None fields: no quote yet)."""

    symbol: str
    name: str
    asset_class: str
    quote_currency: str
    price: Decimal | None
    reference_price: Decimal | None
    exchange_ts: datetime | None
    price_decimals: int | None = None  # set in the admin; None: the formatter's rule


_PORTFOLIO_FIELDS = ("id", "owner_id", "name", "base_currency", "cost_basis_method")


def books_load(portfolios: Iterable[tuple]) -> dict[int, PortfolioBook]:
    """Books of ``portfolios`` (rows of ``_PORTFOLIO_FIELDS`` + ``recomputed_at``): two queries."""
    books = {row[0]: PortfolioBook(*row, positions=[], cash=[]) for row in portfolios}
    rows = Holding.objects.filter(portfolio_id__in=list(books)).values_list(
        "portfolio_id", "instrument_id", "quantity", "cost_basis", "currency", "realized_pnl",
        "income", "cost_basis_base", "realized_pnl_base", "fx_note",
    )  # fmt: skip
    for pid, instrument, quantity, cost_basis, currency, realized, income, *base in rows:
        books[pid].positions.append(
            BookPosition(
                instrument, _trim(quantity), _trim(cost_basis), currency, _trim(realized),
                _trim(income), position_texts(quantity, cost_basis, realized, income), None,
                _trim(base[0]), _trim(base[1]), base[2],
            )
        )  # fmt: skip
    cash = CashBalance.objects.filter(portfolio_id__in=list(books)).values_list(
        "portfolio_id", "currency", "amount", "income", "income_base"
    )
    for pid, currency, amount, income, income_base in cash:
        books[pid].cash.append((currency, _trim(amount), _trim(income)))
        books[pid].income_base[currency] = _trim(income_base)
    return books


def position_texts(
    quantity: Decimal, cost_basis: Decimal, realized: Decimal, income: Decimal
) -> dict[str, str | None]:
    """A position's wire strings, in a holding row's order (``_ROW_REST`` starts with them)."""
    return {
        "quantity": wire.dec(quantity),
        "cost_basis": wire.money(cost_basis),
        "average_cost": wire.dec(cost_basis / quantity) if quantity else None,
        "realized_pnl": wire.money(realized),
        "income": wire.money(income),
    }


class PortfolioBookCache:
    """Books kept between valuations (a Celery worker's), reloaded when the ledger changed.

    ``Portfolio.recomputed_at`` changes in the transaction that rewrites holdings and cash
    (``services.holdings_recompute``: the only writer), so a book whose portfolio row still
    shows the ``recomputed_at`` it was loaded with is current. Name, base currency and method
    are read fresh every time. A holding written without a replay (the benchmark's seed) is
    never rewritten, so it stays current too.
    """

    def __init__(self, max_books: int = 50_000) -> None:
        self.max_books = max_books
        self.books: dict[int, PortfolioBook] = {}
        self.loads = 0  # books (re)loaded from the database: tests and metrics read it

    def get(self, portfolios: list[tuple]) -> dict[int, PortfolioBook]:
        found: dict[int, PortfolioBook] = {}
        stale = []
        for row in portfolios:
            book = self.books.get(row[0])
            if book is None or book.recomputed_at != row[-1]:
                stale.append(row)
                continue
            book.owner_id, book.name, book.base_currency, book.cost_basis_method = row[1:5]
            found[row[0]] = book
        if stale:
            loaded = books_load(stale)
            self.loads += len(loaded)
            if len(self.books) + len(loaded) > self.max_books:
                self.books.clear()  # rare (a worker serving more portfolios than it keeps)
            self.books.update(loaded)
            found.update(loaded)
        return found


def market_load(instrument_ids: Iterable[int]) -> dict[int, Market]:
    """Descriptive fields and latest quote of each instrument, in one query."""
    rows = Instrument.objects.filter(id__in=list(instrument_ids)).values_list(
        "id", "symbol", "name", "asset_class", "quote_currency", "quote__price",
        "quote__reference_price", "quote__exchange_ts", "price_decimals",
    )  # fmt: skip
    return {
        i: Market(symbol, name, asset_class, currency, _trim(price), _trim(reference), ts, places)
        for i, symbol, name, asset_class, currency, price, reference, ts, places in rows
    }


def portfolio_states(
    *,
    portfolio_ids: Iterable[int],
    now: datetime | None = None,
    cache: PortfolioBookCache | None = None,
) -> list[dict[str, Any]]:
    """The current valuation of each portfolio, as the wire protocol's portfolio shape.

    One query each for the portfolios, their holdings and cash (none for books ``cache``
    holds), the instruments with their quotes, and the FX rates. Each state carries
    ``valued_at``, taken before the first read: everything committed before it is in the
    numbers, so of two valuations of one portfolio the one valued later is never the less
    complete (call it after commit).
    """
    return list(iter_portfolio_states(portfolio_ids=portfolio_ids, now=now, cache=cache))


def iter_portfolio_states(
    *,
    portfolio_ids: Iterable[int],
    now: datetime | None = None,
    cache: PortfolioBookCache | None = None,
) -> Iterator[dict[str, Any]]:
    """:func:`portfolio_states` one by one: every read is done before the first, each state is
    computed when it is asked for (a worker publishes the first while it values the rest)."""
    valued_at = wire.iso(timezone.now())
    rows = list(
        Portfolio.objects.filter(id__in=list(portfolio_ids))
        .order_by("id")
        .values_list(*_PORTFOLIO_FIELDS, "recomputed_at")
    )
    books = cache.get(rows) if cache is not None else books_load(rows)
    market = market_load({p.instrument for b in books.values() for p in b.positions})
    rates = fx_rates() if books else {}
    now = now or timezone.now()
    texts = _MarketTexts(market, now)
    for row in rows:
        state = _state(books[row[0]], market, texts, rates)
        state["valued_at"] = valued_at
        yield state


class _MarketTexts(dict):
    """Per instrument, the wire strings every holder of it shares: formatted once a call."""

    def __init__(self, market: dict[int, Market], now: datetime) -> None:
        super().__init__()
        self.market = market
        self.now = now
        self.stale_after = settings.LIVEFOLIO_STALE_SECONDS
        self.day_change_pct: dict[int, str | None] = {}
        self.prices = _prices(market)

    def __missing__(self, instrument: int) -> dict[str, Any]:
        m = self.market[instrument]
        ts = m.exchange_ts
        age = (self.now - ts).total_seconds() if ts is not None else None
        price, reference = m.price, m.reference_price
        day_return = None
        if price is not None and reference is not None and reference != 0:
            day_return = valuation.price_return(price, reference)
        self.day_change_pct[instrument] = _pct(day_return)  # every priced holder's
        texts = {  # a holding row's fields that every holder of the instrument shares
            "instrument": instrument,
            "symbol": m.symbol,
            "name": m.name,
            "asset_class": m.asset_class,
            "price_decimals": m.price_decimals,
            "price": wire.dec(price),
            "reference_price": wire.dec(reference),
            "price_as_of": wire.iso(ts) if ts is not None else None,
            "price_age_seconds": None if age is None else max(0, int(age)),
            "stale": age is None or age > self.stale_after,
        }
        # The rest of a row's keys, in their order, filled per holding: a copy of this already
        # has room for all of them (a dict grown key by key is resized twice on the way).
        texts.update(_ROW_REST)
        self[instrument] = texts
        return texts


# A holding row's keys after the instrument's: the position's texts (position_texts), then the
# valuation's (_state).
_ROW_REST = dict.fromkeys(
    (
        "quantity", "cost_basis", "average_cost", "realized_pnl", "income", "currency", "value",
        "in_total", "status", "reason", "fx_rate", "value_base", "cost_base", "unrealized_pnl",
        "unrealized_pnl_pct", "price_effect", "currency_effect", "day_change", "day_change_pct",
        "weight_pct",
    )
)  # fmt: skip


def portfolio_states_for_user(*, user_id: int) -> list[dict[str, Any]]:
    ids = Portfolio.objects.filter(owner_id=user_id).values_list("id", flat=True)
    return portfolio_states(portfolio_ids=ids)


def portfolios_holding(*, instrument_ids: Iterable[int]) -> list[tuple[int, int]]:
    """(portfolio id, owner id) of every portfolio whose value moves with these instruments:
    those holding one, and for an FX instrument those converting through its currencies."""
    instrument_ids = list(instrument_ids)
    # Semi-joins (portfolio id IN ...), not a join and DISTINCT: half the time in PostgreSQL.
    # Flat positions (quantity 0) move with nothing.
    open_holdings = Holding.objects.exclude(quantity=0)
    affected = Q(id__in=open_holdings.filter(instrument_id__in=instrument_ids).values("portfolio"))
    for instrument in Instrument.objects.filter(id__in=instrument_ids, asset_class=AssetClass.FX):
        pair = fx_pair(instrument)
        if pair is None:
            continue
        for base, other in (pair, pair[::-1]):
            affected |= Q(base_currency=base) & (
                Q(id__in=open_holdings.filter(currency=other).values("portfolio"))
                | Q(id__in=CashBalance.objects.filter(currency=other).values("portfolio"))
            )
    return list(Portfolio.objects.filter(affected).order_by().values_list("id", "owner_id"))


def portfolio_owners(*, portfolio_ids: Iterable[int]) -> list[tuple[int, int]]:
    """(portfolio id, owner id) of each of these portfolios that exists."""
    return list(Portfolio.objects.filter(id__in=list(portfolio_ids)).values_list("id", "owner_id"))


def _times(quantity: Decimal, price: Decimal | None) -> Decimal | None:
    return None if price is None else quantity * price


# A holding's status as the wire shows it (str() of a StrEnum member, per holding per valuation).
_STATUS_TEXT = {status: str(status) for status in valuation.ValueStatus}


def _pct(rate: Decimal | None) -> str | None:
    """A fraction as a percentage string to 2 places ("0.0123" -> "1.23")."""
    return None if rate is None else wire.money(rate * 100)


def _book_value(
    book: PortfolioBook,
    market: dict[int, Market],
    rates: dict[tuple[str, str], Decimal],
    prices: tuple[dict[int, Decimal | None], dict[int, Decimal | None]] | None = None,
) -> tuple[list[BookPosition], valuation.PortfolioValue]:
    """The open positions (by symbol) and their valuation: the one place a book meets prices.
    ``prices``: latest and reference price per instrument, shared by a call's portfolios."""
    if prices is None:
        prices = _prices(market)
    positions = sorted(
        (p for p in book.positions if p.quantity != 0), key=lambda p: market[p.instrument].symbol
    )
    holdings = []
    for p in positions:
        m = market[p.instrument]
        holding = p.holding
        currency = p.currency or m.quote_currency
        if holding is None or holding.currency != currency or holding.asset_class != m.asset_class:
            holding = p.holding = valuation.HoldingInput(
                instrument=p.instrument,
                quantity=p.quantity,
                cost_basis=p.cost_basis,
                currency=currency,
                asset_class=m.asset_class,
                cost_base=p.cost_basis_base,
            )
        holdings.append(holding)
    value = valuation.value_portfolio(
        holdings=holdings,
        prices=prices[0],
        reference_prices=prices[1],
        fx_rates=rates,
        base_currency=book.base_currency,
        cash={currency: amount for currency, amount, _ in book.cash if amount != 0},
    )
    return positions, value


def _prices(market: dict[int, Market]) -> tuple[dict, dict]:
    """(latest, reference) price per instrument of ``market``."""
    return (
        {i: m.price for i, m in market.items()},
        {i: m.reference_price for i, m in market.items()},
    )


def _state(
    book: PortfolioBook,
    market: dict[int, Market],
    texts: _MarketTexts,
    rates: dict[tuple[str, str], Decimal],
) -> dict[str, Any]:
    base = book.base_currency
    positions, value = _book_value(book, market, rates, texts.prices)

    def to_base(amount: Decimal, currency: str) -> Decimal | None:
        rate = valuation.fx_rate(currency, base, rates)
        return None if rate is None else amount * rate

    money = wire.money
    ok = valuation.ValueStatus.OK
    # wire.money and _pct inlined for the priced rows (five amounts a holding, per
    # valuation): the same operations, without a Python call each.
    cent = wire.CENT
    ok_text = _STATUS_TEXT[ok]
    rows = []
    as_of = None  # the newest price time of the open positions, as its (sortable) ISO text
    for p, hv in zip(positions, value.holdings, strict=True):
        # Built key by key on a copy: a dict literal with ``**`` merges builds its literal keys
        # as a second dict first, and this runs per holding per valuation.
        row = texts[p.instrument].copy()  # instrument, symbol, name, price, as of, age...
        row.update(p.texts)  # quantity, cost basis, average cost, realized P&L, income
        stamp = row["price_as_of"]
        if stamp is not None and (as_of is None or stamp > as_of):
            as_of = stamp
        currency = hv.currency
        row["currency"] = currency
        # In the base currency (the common case) value and cost need no second formatting.
        same = currency == base
        if hv.status is ok:
            value_text = str(hv.market_value.quantize(cent))
            row["value"] = value_text if same else money(p.quantity * hv.price)
            row["in_total"] = True
            row["status"] = ok_text
            row["reason"] = None
            row["fx_rate"] = "1" if same else wire.dec(hv.fx_rate)
            row["value_base"] = value_text
            row["cost_base"] = p.texts["cost_basis"] if same else money(hv.cost)
            row["unrealized_pnl"] = str(hv.unrealized_pnl.quantize(cent))
            ret = hv.unrealized_return
            row["unrealized_pnl_pct"] = None if ret is None else str((ret * 100).quantize(cent))
            if same:  # no currency to move: the whole unrealized P&L is the price's
                row["price_effect"] = row["unrealized_pnl"]
                row["currency_effect"] = "0.00"
            else:
                row["price_effect"] = str(hv.price_effect.quantize(cent))
                row["currency_effect"] = str(hv.currency_effect.quantize(cent))
            change = hv.day_change
            row["day_change"] = None if change is None else str(change.quantize(cent))
            row["day_change_pct"] = texts.day_change_pct[p.instrument]
            weight = hv.weight
            row["weight_pct"] = None if weight is None else str((weight * 100).quantize(cent))
        else:  # unpriced, or no rate to the base currency: no amount in the base currency
            row["value"] = None if same else money(_times(p.quantity, hv.price))
            row["in_total"] = False
            row["status"] = _STATUS_TEXT[hv.status]
            row["reason"] = hv.reason
            row["fx_rate"] = "1" if same else wire.dec(hv.fx_rate)
            row["value_base"] = None
            row["cost_base"] = None
            row["unrealized_pnl"] = None
            row["unrealized_pnl_pct"] = None
            row["price_effect"] = None
            row["currency_effect"] = None
            row["day_change"] = None
            row["day_change_pct"] = None
            row["weight_pct"] = None
        rows.append(row)
    realized = Decimal(0)
    fx_notes = []
    for p in book.positions:  # closed positions too: their realized P&L stays
        if p.fx_note:
            fx_notes.append(f"{market[p.instrument].symbol}: {p.fx_note}")
        if p.realized_pnl_base is not None:  # each sale at its own date's rate
            realized += p.realized_pnl_base
        elif p.realized_pnl:  # most positions never sold: nothing to convert
            converted = to_base(p.realized_pnl, p.currency or market[p.instrument].quote_currency)
            realized += converted or 0
    income = Decimal(0)
    for currency, _, inc in book.cash:
        if inc:
            at_dates = book.income_base.get(currency)
            income += at_dates if at_dates is not None else (to_base(inc, currency) or 0)
    cash_rows = [
        {
            "currency": cv.currency,
            "amount": wire.money(cv.amount),
            "value_base": wire.money(cv.market_value),
            "weight_pct": _pct(cv.weight),
        }
        for cv in value.cash
    ]

    def slices(allocation: dict) -> list[dict[str, Any]]:
        return [
            {"key": str(s.key), "value": wire.money(s.value), "weight_pct": _pct(s.weight)}
            for s in allocation.values()
        ]

    return {
        "id": book.id,
        "name": book.name,
        "base_currency": base,
        "cost_basis_method": book.cost_basis_method,
        "total": wire.money(value.market_value),
        "as_of": as_of,
        "recomputed_at": wire.iso(book.recomputed_at) if book.recomputed_at else None,
        "holdings_value": wire.money(value.holdings_value),
        "cash_total": wire.money(value.cash_value),
        "cost": wire.money(value.cost),
        "unrealized_pnl": wire.money(value.unrealized_pnl),
        "unrealized_pnl_pct": _pct(value.unrealized_return),
        "realized_pnl": wire.money(realized),
        "income": wire.money(income),
        "day_change": wire.money(value.day_change),
        "day_change_pct": _pct(value.day_return),
        "complete": value.complete,
        "issues": list(value.issues),
        "fx_notes": fx_notes,
        "holdings": rows,
        "cash": cash_rows,
        "allocation": {
            "asset_class": slices(value.by_asset_class),
            "currency": slices(value.by_currency),
        },
    }


def portfolio_values(
    *, portfolio_ids: Iterable[int], rates: dict[tuple[str, str], Decimal]
) -> dict[int, valuation.PortfolioValue]:
    """Each portfolio's current market value (what a snapshot stores): four queries for all."""
    rows = Portfolio.objects.filter(id__in=list(portfolio_ids)).values_list(
        *_PORTFOLIO_FIELDS, "recomputed_at"
    )
    books = books_load(rows)
    market = market_load({p.instrument for b in books.values() for p in b.positions})
    prices = _prices(market)
    return {pid: _book_value(book, market, rates, prices)[1] for pid, book in books.items()}


def external_flows(*, portfolio: Portfolio) -> list[performance.CashFlow]:
    """Deposits (+) and withdrawals (-) in the base currency, each at its date's FX rate."""
    flows = external_flows_of(portfolios={portfolio.id: portfolio.base_currency}, rates=fx_rates())
    return flows[portfolio.id]


def external_flows_of(
    *, portfolios: dict[int, str], rates: dict[tuple[str, str], Decimal]
) -> dict[int, list[performance.CashFlow]]:
    """:func:`external_flows` of each portfolio (id -> base currency), oldest first, in one
    query. A foreign flow is converted at its UTC date's rate from the FX price history (the
    last close carried over gaps), at today's (``rates``) where there is no history; a flow in
    a currency with no rate to the base currency at all is left out."""
    flows: dict[int, list[performance.CashFlow]] = {pid: [] for pid in portfolios}
    rows = list(
        Transaction.objects.filter(
            portfolio_id__in=list(portfolios), kind__in=[TxKind.DEPOSIT, TxKind.WITHDRAWAL]
        )
        .order_by("portfolio_id", "executed_at", "id")
        .values_list("portfolio_id", "kind", "currency", "amount", "executed_at")
    )
    foreign: dict[str, set[str]] = {}  # base currency -> currencies flowing in or out
    for pid, _, currency, _, _ in rows:
        if currency != portfolios[pid]:
            foreign.setdefault(portfolios[pid], set()).add(currency)
    histories = {
        base: FxHistory(base_currency=base, currencies=currencies)
        for base, currencies in foreign.items()
    }
    for pid, kind, currency, amount, at in rows:
        base = portfolios[pid]
        rate = None
        if currency != base:
            dated = histories[base].rate_on(currency, at.astimezone(UTC).date())
            rate = dated.rate if dated is not None else None
        if rate is None:
            rate = valuation.fx_rate(currency, base, rates)
        if rate is None:
            continue
        sign = 1 if kind == TxKind.DEPOSIT else -1
        flows[pid].append(performance.CashFlow(at=at, amount=sign * amount * rate))
    return flows


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


def instrument_state(*, instrument: Instrument, user_id: int, now: datetime | None = None) -> dict:
    """Everything the instrument page draws: quote, 24 h of 1-minute bars and stats, position."""
    now = now or timezone.now()
    quote = Quote.objects.filter(instrument=instrument).first()
    bars = list(
        PriceBar.objects.filter(instrument=instrument, start__gte=now - timedelta(hours=24))
        .order_by("start")
        .values_list("start", "open", "high", "low", "close")
    )
    stats = None
    if bars:
        first_open = bars[0][1]
        last_close = quote.price if quote else bars[-1][4]
        change = last_close - first_open
        stats = {
            "open": wire.dec(first_open),
            "high": wire.dec(max(b[2] for b in bars)),
            "low": wire.dec(min(b[3] for b in bars)),
            "change": wire.dec(change),
            "change_pct": wire.dec((change / first_open * 100).quantize(Decimal("0.01"))),
        }
    positions = Holding.objects.filter(
        instrument=instrument, portfolio__owner_id=user_id
    ).select_related("portfolio")
    quantity = sum((h.quantity for h in positions), Decimal("0"))
    return {
        "instrument": {
            "id": instrument.id,
            "symbol": instrument.symbol,
            "name": instrument.name,
            "asset_class": instrument.asset_class,
            "price_decimals": instrument.price_decimals,
            "currency": instrument.quote_currency,
            "feed": instrument.feed,
        },
        "quote": _quote_state(quote, now),
        "bars": [
            {
                "start": wire.iso(start),
                "open": wire.dec(o),
                "high": wire.dec(h),
                "low": wire.dec(lo),
                "close": wire.dec(c),
            }
            for start, o, h, lo, c in bars
        ],
        "stats_24h": stats,
        "position": {
            "quantity": wire.dec(quantity),
            "value": wire.money(quantity * quote.price) if quote else None,
            "portfolios": [h.portfolio.name for h in positions],
        }
        if positions
        else None,
    }


def _quote_state(quote: Quote | None, now: datetime) -> dict | None:
    if quote is None:
        return None
    return {
        "price": wire.dec(quote.price),
        "bid": wire.dec(quote.bid),
        "ask": wire.dec(quote.ask),
        "as_of": wire.iso(quote.exchange_ts),
        "stale": quote.is_stale(now),
    }


def feed_health(*, now: datetime | None = None) -> dict[str, Any]:
    """Every feed's reported health, and every active instrument's price age and staleness."""
    now = now or timezone.now()
    feeds = [
        {
            "status": status,
            "state": status.shown_state(now),
            "alive": status.is_alive(now),
            "age": status.last_message_age(now),
        }
        for status in FeedStatus.objects.all()
    ]
    instruments = [
        {
            "instrument": instrument,
            "quote": getattr(instrument, "quote", None),
            "age": instrument.quote.age(now) if hasattr(instrument, "quote") else None,
            "stale": instrument.quote.is_stale(now) if hasattr(instrument, "quote") else True,
        }
        for instrument in Instrument.objects.filter(active=True).select_related("quote")
    ]
    return {"feeds": feeds, "instruments": instruments}


def realizations(*, portfolio: Portfolio) -> dict[int, ledger.Realization]:
    """What each sale (or covering buy) realized, with the lots it closed, by transaction id:
    the ledger replayed with the portfolio's cost-basis method."""

    result = ledger.replay(
        ledger_entries(portfolio),
        method=ledger.CostBasis(portfolio.cost_basis_method),
        allow_short=portfolio.allow_short,
    )
    return {r.ref: r for r in result.realizations}


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
            closes[ids[last[0]]].append((last[1], _trim(last[2])))
            last, at = None, 0
        while at < len(days) and days[at] < row[1]:
            if last is not None:  # the last close on or before days[at]
                closes[ids[last[0]]].append((last[1], _trim(last[2])))
                last = None
            at += 1
        if last is None or last[1] != row[1]:
            last = row
    if last is not None:
        closes[ids[last[0]]].append((last[1], _trim(last[2])))
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


def _as_entered(value: Decimal) -> Decimal:
    """Drop the column's padding zeros (3.000000000000 -> 3) so messages read like the input."""
    if value == value.to_integral_value():
        return value.quantize(Decimal(1))
    return value.normalize()


def ledger_entry(tx: Transaction, fx_rate: Decimal | None = None) -> ledger.LedgerEntry:
    """The ledger's view of a stored (or about to be stored) transaction; ``fx_rate``: base
    currency per unit of its currency on its date (see ``ledger``)."""
    return ledger.LedgerEntry(
        ref=tx.pk,
        kind=ledger.TxKind(tx.kind),
        executed_at=tx.executed_at,
        currency=tx.currency,
        # Keyed by symbol so the ledger's messages name what the user knows.
        instrument=tx.instrument.symbol if tx.instrument_id else None,
        quantity=_as_entered(tx.quantity),
        price=_as_entered(tx.price),
        fees=_as_entered(tx.fees),
        amount=_as_entered(tx.amount),
        ratio=None if tx.ratio is None else _as_entered(tx.ratio),
        fx_rate=fx_rate,
        to_amount=_as_entered(tx.to_amount),
        to_currency=tx.to_currency,
    )


def ledger_entries(portfolio: Portfolio) -> list[ledger.LedgerEntry]:
    """The portfolio's transactions as the ledger sees them (as :func:`ledger_entry` makes
    them), in the order it replays them; read as rows, not model instances (a long ledger
    is read whenever its past is valued)."""
    rows = (
        Transaction.objects.filter(portfolio=portfolio)
        .order_by("executed_at", "id")
        .values_list(
            "pk", "kind", "executed_at", "currency", "instrument__symbol", "quantity", "price",
            "fees", "amount", "ratio", "to_amount", "to_currency",
        )
    )  # fmt: skip
    return [
        ledger.LedgerEntry(
            ref=pk,
            kind=ledger.TxKind(kind),
            executed_at=executed_at,
            currency=currency,
            instrument=symbol,
            quantity=_as_entered(quantity),
            price=_as_entered(price),
            fees=_as_entered(fees),
            amount=_as_entered(amount),
            ratio=None if ratio is None else _as_entered(ratio),
            to_amount=_as_entered(to_amount),
            to_currency=to_currency,
        )
        for (
            pk, kind, executed_at, currency, symbol, quantity, price, fees, amount, ratio,
            to_amount, to_currency,
        ) in rows
    ]  # fmt: skip
