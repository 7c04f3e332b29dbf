"""Display filters for Decimal money and rates (exact Decimal rounding, half-up)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from django import template

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
