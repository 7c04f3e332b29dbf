"""Display filters: Decimal money, prices, quantities and rates (exact Decimal rounding, half-up),
and relative times. static/js/format.js follows the same rules in the browser."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django import template
from django.utils import timezone

register = template.Library()


@register.filter
def percent(rate: Decimal | None) -> str:
    """A fraction as a percentage to 2 places: Decimal("0.16875") -> "16.88%"."""
    if rate is None:
        return "—"
    return f"{(rate * 100).quantize(Decimal('0.01'), rounding=ROUND_HALF_UP)}%"


@register.filter
def money(amount: Decimal | None) -> str:
    """An amount to 2 places with thousands separators: "1,234.50"."""
    if amount is None:
        return "—"
    return f"{amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"


def price_decimals(value: Decimal, asset_class: str = "", fixed: int | None = None) -> int:
    """Decimals an instrument's price is shown with (static/js/format.js priceDecimals is the
    same rule): the instrument's own (``fixed``, set in the admin) when it has them; else FX to
    the pipette (5, or 3 from 10 up, e.g. USDJPY), other prices in cents, more decimals only
    below 1 so a small price keeps four significant digits."""
    if fixed is not None:
        return fixed
    size = abs(value)
    if asset_class == "fx":
        return 3 if size >= 10 else 5
    if size >= 1 or size == 0:
        return 2
    return 4 if size >= Decimal("0.01") else 8


@register.filter
def price(value: Decimal | None, instrument: Any = "") -> str:
    """A price at its instrument's precision with thousands separators: "97,117.56".
    ``instrument``: the Instrument (its own decimals, else its asset class), or an asset class."""
    if value is None:
        return "—"
    if isinstance(instrument, str):
        decimals = price_decimals(value, instrument)
    else:
        decimals = price_decimals(value, instrument.asset_class, instrument.price_decimals)
    step = Decimal(1).scaleb(-decimals)
    return f"{value.quantize(step, rounding=ROUND_HALF_UP):,}"


@register.filter
def quantity(value: Decimal | None) -> str:
    """A quantity with thousands separators and no trailing zeros: "1,200", "0.5"; empty for
    None (a row without one)."""
    if value is None:
        return ""
    text = f"{value:,f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


@register.filter
def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """How long ago, in the largest whole unit: "just now", "12 s ago", "3 min ago", "2 h ago",
    "4 days ago" (never "0 minutes ago")."""
    if moment is None:
        return "never"
    seconds = int(((now or timezone.now()) - moment).total_seconds())
    if seconds < 1:
        return "just now"
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count = seconds // size
            label = f"{unit}s" if unit == "day" and count != 1 else unit
            return f"{count} {label} ago"
    return f"{seconds} s ago"


@register.filter
def plain(value: Decimal | None) -> str:
    """A Decimal without exponent or trailing zeros ("66000", "0.5"); empty for 0 or None."""
    if not value:
        return ""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@register.filter
def zip_dates(items: tuple, dates: tuple) -> list[tuple]:
    """Pairs each item with its date (the IRR's flows with their real dates)."""
    return list(zip(items, dates, strict=True))
