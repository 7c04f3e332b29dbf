"""How numbers and times are written as text on the wire (JSON frames, JSON views): Decimal
amounts as plain strings, never JSON numbers; money to the cent; instants as ISO-8601 UTC.
The domain's selectors and streaming's message builders (streaming/protocol.py) share it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal


def iso(moment: datetime) -> str:
    """ISO-8601 in UTC with a Z, millisecond precision: what the browser's Date parses."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dec(value: Decimal | None) -> str | None:
    """A Decimal as a plain string without exponent; None stays None."""
    if value is None:
        return None
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


CENT = Decimal("0.01")


def money(amount: Decimal | None) -> str | None:
    """A money amount in its currency, to the cent, as a string ("100000.20")."""
    if amount is None:
        return None
    # str() of a Decimal with exponent -2 is never scientific, and cheaper than format().
    return str(amount.quantize(CENT))
