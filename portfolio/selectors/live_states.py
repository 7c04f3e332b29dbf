"""Live valuation states: each portfolio's holdings valued at the latest prices, as the
portfolio page, the API and the ingest task send them, in as few queries as possible."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Context, Decimal
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from portfolio import valuation, wire
from portfolio.models import (
    AssetClass,
    CashBalance,
    Holding,
    Instrument,
    Portfolio,
    Quote,
)
from portfolio.price_history import fx_pair


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
            rates[pair] = trim_scale(quote.price)
    return rates


# Wider than any column (30 digits): trimming never rounds.
_WIDE = Context(prec=60)


def trim_scale(value: Decimal | None) -> Decimal | None:
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
                instrument, trim_scale(quantity), trim_scale(cost_basis), currency,
                trim_scale(realized), trim_scale(income),
                position_texts(quantity, cost_basis, realized, income), None,
                trim_scale(base[0]), trim_scale(base[1]), base[2],
            )
        )  # fmt: skip
    cash = CashBalance.objects.filter(portfolio_id__in=list(books)).values_list(
        "portfolio_id", "currency", "amount", "income", "income_base"
    )
    for pid, currency, amount, income, income_base in cash:
        books[pid].cash.append((currency, trim_scale(amount), trim_scale(income)))
        books[pid].income_base[currency] = trim_scale(income_base)
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
        i: Market(
            symbol,
            name,
            asset_class,
            currency,
            trim_scale(price),
            trim_scale(reference),
            ts,
            places,
        )
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
