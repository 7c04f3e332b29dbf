"""Reads: what a page or a stream needs, in as few queries as possible."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from portfolio.models import Holding, Portfolio
from streaming import protocol


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
                # No price, or none for LIVEFOLIO_STALE_SECONDS (the feed is down or lagging).
                "stale": quote is None or quote.is_stale(),
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
