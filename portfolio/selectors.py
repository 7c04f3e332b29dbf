"""Reads: what a page or a stream needs, in as few queries as possible."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from portfolio.models import FeedStatus, Holding, Instrument, Portfolio, PriceBar, Quote
from streaming import marketdata, protocol


def portfolio_states(*, portfolio_ids: Iterable[int]) -> list[dict[str, Any]]:
    """The current valuation of each portfolio, as the wire protocol's portfolio shape.

    One query for the portfolios, one for all their holdings with instruments and quotes.
    """
    portfolios = {p.id: p for p in Portfolio.objects.filter(id__in=list(portfolio_ids))}
    holdings: dict[int, list[Holding]] = defaultdict(list)
    rows = Holding.objects.filter(portfolio_id__in=portfolios).select_related(
        "instrument", "instrument__quote"
    )
    for holding in rows:
        holdings[holding.portfolio_id].append(holding)
    return [_state(portfolios[pid], holdings[pid]) for pid in sorted(portfolios)]


def portfolio_states_for_user(*, user_id: int) -> list[dict[str, Any]]:
    ids = Portfolio.objects.filter(owner_id=user_id).values_list("id", flat=True)
    return portfolio_states(portfolio_ids=ids)


def portfolios_holding(*, instrument_ids: Iterable[int]) -> list[tuple[int, int]]:
    """(portfolio id, owner id) of every portfolio that holds any of these instruments."""
    return list(
        Portfolio.objects.filter(holdings__instrument_id__in=list(instrument_ids))
        .values_list("id", "owner_id")
        .distinct()
    )


def _state(portfolio: Portfolio, holdings: list[Holding]) -> dict[str, Any]:
    total = Decimal("0")
    as_of = None
    rows = []
    for holding in holdings:
        instrument = holding.instrument
        quote = getattr(instrument, "quote", None)
        price = quote.price if quote else None
        value = holding.quantity * price if price is not None else None
        # Until FX conversion lands, a holding in another currency is shown but not summed.
        in_base = instrument.quote_currency == portfolio.base_currency
        if value is not None and in_base:
            total += value
        if quote and (as_of is None or quote.exchange_ts > as_of):
            as_of = quote.exchange_ts
        rows.append(
            {
                "instrument": instrument.id,
                "symbol": instrument.symbol,
                "name": instrument.name,
                "asset_class": instrument.asset_class,
                "currency": instrument.quote_currency,
                "quantity": protocol.dec(holding.quantity),
                "price": protocol.dec(price),
                "value": protocol.money(value),
                "price_as_of": protocol.iso(quote.exchange_ts) if quote else None,
                "in_total": value is not None and in_base,
            }
        )
    return {
        "id": portfolio.id,
        "name": portfolio.name,
        "base_currency": portfolio.base_currency,
        "total": protocol.money(total),
        "as_of": protocol.iso(as_of) if as_of else None,
        "holdings": rows,
    }


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
            "open": protocol.dec(first_open),
            "high": protocol.dec(max(b[2] for b in bars)),
            "low": protocol.dec(min(b[3] for b in bars)),
            "change": protocol.dec(change),
            "change_pct": protocol.dec((change / first_open * 100).quantize(Decimal("0.01"))),
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
            "currency": instrument.quote_currency,
            "feed": instrument.feed,
        },
        "quote": _quote_state(quote, now),
        "bars": [
            {
                "start": protocol.iso(start),
                "open": protocol.dec(o),
                "high": protocol.dec(h),
                "low": protocol.dec(lo),
                "close": protocol.dec(c),
            }
            for start, o, h, lo, c in bars
        ],
        "stats_24h": stats,
        "position": {
            "quantity": protocol.dec(quantity),
            "value": protocol.money(quantity * quote.price) if quote else None,
            "portfolios": [h.portfolio.name for h in positions],
        }
        if positions
        else None,
        "trades": marketdata.recent_trades(instrument.id),
        "book": marketdata.latest_book(instrument.id),
    }


def _quote_state(quote: Quote | None, now: datetime) -> dict | None:
    if quote is None:
        return None
    return {
        "price": protocol.dec(quote.price),
        "bid": protocol.dec(quote.bid),
        "ask": protocol.dec(quote.ask),
        "as_of": protocol.iso(quote.exchange_ts),
        "stale": quote.is_stale(now),
    }


def feed_health(*, now: datetime | None = None) -> dict[str, Any]:
    """Every feed's reported health, and every active instrument's price age and staleness."""
    now = now or timezone.now()
    feeds = [
        {"status": status, "alive": status.is_alive(now), "age": status.last_message_age(now)}
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
