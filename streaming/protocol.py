"""The wire protocol's message shapes: the one place that knows what a frame looks like.

Every server frame is ``{"type": ..., "seq": <int per connection>, "ts": <ISO-8601 UTC>, ...}``.
The consumer adds ``seq`` and ``ts`` when it sends; the builders here make the rest. Money,
prices and quantities travel as strings of Decimal, never as JSON numbers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

# Error codes a client can receive (also documented in docs/protocol.md).
ERROR_INVALID_JSON = "invalid_json"
ERROR_FRAME_TOO_LARGE = "frame_too_large"
ERROR_BINARY_NOT_SUPPORTED = "binary_not_supported"
ERROR_UNKNOWN_TYPE = "unknown_type"
ERROR_BAD_MESSAGE = "bad_message"

# WebSocket close codes the server uses.
CLOSE_UNAUTHENTICATED = 4401  # sent when a session ends while connected (logged out)
CLOSE_FRAME_TOO_LARGE = 1009  # RFC 6455 "message too big"


def iso(moment: datetime) -> str:
    """ISO-8601 in UTC with a Z, millisecond precision: what the browser's Date parses."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    return iso(datetime.now(UTC))


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
    return format(amount.quantize(CENT), "f")


def envelope(payload: dict[str, Any], *, seq: int) -> dict[str, Any]:
    """Stamp a message with the connection's sequence number and the send time."""
    return {"type": payload["type"], "seq": seq, "ts": now_iso(), **payload}


def snapshot(*, portfolios: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "snapshot", "portfolios": portfolios}


def instrument_snapshot(*, state: dict[str, Any]) -> dict[str, Any]:
    """The instrument page's first frame: quote, 1-minute bars, 24 h stats, trades, book."""
    return {"type": "snapshot", **state}


def valuation(*, portfolio: dict[str, Any]) -> dict[str, Any]:
    """A portfolio's complete current valuation: a delta that is also self-sufficient."""
    return {"type": "valuation", "portfolio": portfolio}


def quote(
    *,
    instrument_id: int,
    symbol: str,
    price: Decimal,
    bid: Decimal | None,
    ask: Decimal | None,
    exchange_ts: datetime,
    received: datetime | None = None,
) -> dict[str, Any]:
    message = {
        "type": "quote",
        "instrument": instrument_id,
        "symbol": symbol,
        "price": dec(price),
        "bid": dec(bid),
        "ask": dec(ask),
        "as_of": iso(exchange_ts),
    }
    if received is not None:
        message["received"] = iso(received)
    return message


def trade(
    *,
    instrument_id: int,
    symbol: str,
    price: Decimal,
    size: Decimal,
    side: str | None,
    trade_id: str,
    exchange_ts: datetime,
) -> dict[str, Any]:
    """One executed trade on the exchange (``side`` is the taker's: buy, sell or null)."""
    return {
        "type": "trade",
        "instrument": instrument_id,
        "symbol": symbol,
        "price": dec(price),
        "size": dec(size),
        "side": side,
        "trade_id": trade_id,
        "as_of": iso(exchange_ts),
    }


def book(
    *,
    instrument_id: int,
    symbol: str,
    bids: list[tuple[Decimal, Decimal]],
    asks: list[tuple[Decimal, Decimal]],
    exchange_ts: datetime,
) -> dict[str, Any]:
    """The top of the order book: ``[price, size]`` pairs, best first."""
    return {
        "type": "book",
        "instrument": instrument_id,
        "symbol": symbol,
        "bids": [[dec(p), dec(s)] for p, s in bids],
        "asks": [[dec(p), dec(s)] for p, s in asks],
        "as_of": iso(exchange_ts),
    }


def error(*, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def pong() -> dict[str, Any]:
    return {"type": "pong"}
