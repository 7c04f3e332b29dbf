"""Turning the values exchanges put on the wire into Decimals and aware datetimes.

Exchanges send prices as strings (Binance, Coinbase) or as JSON numbers that we decode with
``parse_float=Decimal`` (Kraken v2). Either way no price ever passes through a float.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any


def loads(raw: str | bytes) -> Any:
    """Decode a JSON frame keeping every non-integer number as an exact Decimal."""
    return json.loads(raw, parse_float=Decimal)


def to_decimal(value: object) -> Decimal:
    """A finite Decimal from an exchange value; floats and booleans are refused, not rounded."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise TypeError(f"expected a decimal string or number, got {type(value).__name__}")
    number = Decimal(value)  # raises decimal.InvalidOperation (an ArithmeticError) on junk
    if not number.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return number


def from_millis(value: object) -> datetime:
    """An aware UTC datetime from epoch milliseconds (Binance's timestamps)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected integer milliseconds, got {value!r}")
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def from_iso(value: object) -> datetime:
    """An aware UTC datetime from an RFC 3339 / ISO-8601 string (Coinbase, Kraken).

    A timestamp without an offset is taken as UTC, which is what these feeds document.
    """
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO-8601 string, got {value!r}")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
