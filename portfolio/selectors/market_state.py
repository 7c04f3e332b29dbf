"""Market data as pages show it: an instrument's state and the feeds' health."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from portfolio import wire
from portfolio.models import (
    FeedStatus,
    Holding,
    Instrument,
    PriceBar,
    Quote,
)


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
