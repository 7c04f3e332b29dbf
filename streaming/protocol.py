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
ERROR_RATE_LIMITED = "rate_limited"
ERROR_TOO_MANY_CONNECTIONS = "too_many_connections"
ERROR_SESSION_ENDED = "session_ended"

# WebSocket close codes the server uses.
CLOSE_UNAUTHENTICATED = 4401  # the session ended while connected (logged out, expired)
CLOSE_TOO_MANY_CONNECTIONS = 4409  # this user already holds the maximum of open sockets
CLOSE_RATE_LIMITED = 4429  # the client kept sending faster than allowed
CLOSE_FRAME_TOO_LARGE = 1009  # RFC 6455 "message too big"
CLOSE_TRY_AGAIN_LATER = 4503  # the server lost its channel layer (Redis); reconnect


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


def error(*, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def pong() -> dict[str, Any]:
    return {"type": "pong"}
