"""The wire protocol's message shapes: the one place that knows what a frame looks like.

Every server frame is ``{"type": ..., "seq": <int per connection>, "ts": <ISO-8601 UTC>, ...}``.
The consumer adds ``seq`` and ``ts`` when it sends; the builders here make the rest. Money,
prices and quantities travel as strings of Decimal, never as JSON numbers.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from portfolio.wire import dec, iso, money

# Error codes a client can receive (also documented in docs/protocol.md).
ERROR_INVALID_JSON = "invalid_json"
ERROR_FRAME_TOO_LARGE = "frame_too_large"
ERROR_BINARY_NOT_SUPPORTED = "binary_not_supported"
ERROR_UNKNOWN_TYPE = "unknown_type"
ERROR_BAD_MESSAGE = "bad_message"
# API v1 (/ws/v1/) adds these (also documented in docs/api.md and docs/asyncapi.yaml).
ERROR_BAD_PARAMS = "bad_params"  # a request's fields are missing or of the wrong kind
ERROR_NOT_FOUND = "not_found"  # no such instrument, portfolio or subscription
ERROR_FORBIDDEN = "forbidden"  # it exists but is not yours (another user's portfolio)
ERROR_RATE_LIMITED = "rate_limited"  # more requests than the per-connection rate allows
ERROR_TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"  # the per-connection cap
ERROR_TOO_MANY_CONNECTIONS = "too_many_connections"  # the per-user cap, across servers
ERROR_AUTH_REQUIRED = "auth_required"  # a request before authenticating
ERROR_UNAUTHORIZED = "unauthorized"  # an unknown, malformed or revoked token
ERROR_AUTH_TIMEOUT = "auth_timeout"  # no authentication within the allowed time
ERROR_IDLE_TIMEOUT = "idle_timeout"  # no subscription and no request for too long
ERROR_SESSION_ENDED = "session_ended"  # logged out or expired while connected
ERROR_INTERNAL = "internal_error"  # the server failed while handling a frame; then close 4500

# WebSocket close codes the server uses.
CLOSE_UNAUTHENTICATED = 4401  # the session ended while connected (logged out, expired)
CLOSE_TOO_MANY_CONNECTIONS = 4409  # this user already holds the maximum of open sockets
CLOSE_RATE_LIMITED = 4429  # the client kept sending faster than allowed
# It left more than LIVEFOLIO_WS_SEND_BUDGET_KB of frames unread (streaming/patches/websocket.py).
CLOSE_NOT_READING = 4413
# A frame over LIVEFOLIO_MAX_FRAME_BYTES. Not RFC 6455's 1009: daphne's WebSocket library
# (autobahn) sends only 1000 and 3000-4999 on an application's behalf.
CLOSE_FRAME_TOO_LARGE = 4009
CLOSE_INTERNAL_ERROR = 4500  # the server failed while handling a frame (after internal_error)
# API v1: also 4401 after an `unauthorized` error (wrong or revoked token).
CLOSE_IDLE_TIMEOUT = 4000  # no subscription and no request within the idle timeout
CLOSE_AUTH_TIMEOUT = 4408  # not authenticated within the allowed time (like HTTP 408)

# API v1 stream names: "<kind>:<key>", e.g. "quotes:BTC-USD" or "portfolio:12".
STREAM_QUOTES = "quotes"
STREAM_TRADES = "trades"
STREAM_BOOK = "book"
STREAM_PORTFOLIO = "portfolio"
STREAM_KINDS = (STREAM_QUOTES, STREAM_TRADES, STREAM_BOOK, STREAM_PORTFOLIO)
# How a book stream is delivered: the conflated top levels (the default) or every change.
BOOK_MODE_TOP = "top"
BOOK_MODE_DIFFS = "diffs"
BOOK_MODES = (BOOK_MODE_TOP, BOOK_MODE_DIFFS)
# Book messages carry at most this many levels a side.
BOOK_DEPTH = 20
TRADE_SIDES = ("buy", "sell")

CLOSE_TRY_AGAIN_LATER = 4503  # the server lost its channel layer (Redis); reconnect

# A client frame nests objects and arrays at most this deep (every request is one or two deep).
MAX_NESTING = 32
# How much of a field's path an error message repeats.
MAX_PATH_SHOWN = 64


class FrameError(ValueError):
    """A client frame that is not a message: ``code`` (one of the error codes above) and a
    ``message`` for a person. ``frame`` is the parsed object when it was JSON at all."""

    def __init__(self, code: str, message: str, frame: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame = frame


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def clean_text(text: str) -> bool:
    """True when ``text`` holds no NUL and no unpaired surrogate: text that can be stored
    (PostgreSQL refuses NUL) and sent back in a frame (UTF-8 has no surrogates)."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _unclean_field(message: Any) -> str | None:
    """Checks nesting depth and text of a parsed frame; the error message for the first field
    that fails, None when all pass. Iterative: a frame's depth never costs stack."""
    pending: list[tuple[Any, str, int]] = [(message, "", 1)]
    while pending:
        value, path, depth = pending.pop()
        if isinstance(value, str):
            if not clean_text(value):
                shown = path[:MAX_PATH_SHOWN] or "the message"
                return (
                    f"{shown}: text must not hold NUL (U+0000) or unpaired surrogates "
                    "(U+D800 to U+DFFF)"
                )
            continue
        if isinstance(value, dict):
            children = []
            for key, item in value.items():
                if not clean_text(key):
                    shown = path[:MAX_PATH_SHOWN] or "the message"
                    return f"{shown}: a key must not hold NUL (U+0000) or unpaired surrogates"
                children.append((item, f"{path}.{key}" if path else key))
        elif isinstance(value, list):
            children = [(item, f"{path}[{index}]") for index, item in enumerate(value)]
        else:
            continue
        if depth > MAX_NESTING:
            return f"objects and arrays nest at most {MAX_NESTING} deep"
        # Reversed onto the stack: the first field of the frame is checked first.
        pending.extend((item, child, depth + 1) for item, child in reversed(children))
    return None


def parse_client_frame(text: str) -> dict[str, Any]:
    """A client's text frame as a message: a JSON object with a string ``type``, nested at most
    MAX_NESTING deep, whose text holds no NUL or unpaired surrogate. Raises FrameError."""
    try:
        message = json.loads(text, parse_constant=_not_json)
    except RecursionError:
        # Nested past the interpreter's stack: deeper than any limit, so the same answer.
        raise FrameError(
            ERROR_BAD_MESSAGE, f"objects and arrays nest at most {MAX_NESTING} deep"
        ) from None
    except ValueError as exc:
        raise FrameError(ERROR_INVALID_JSON, f"not valid JSON: {exc}") from None
    problem = _unclean_field(message)
    if problem is not None:
        raise FrameError(ERROR_BAD_MESSAGE, problem, message)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise FrameError(ERROR_BAD_MESSAGE, 'expected an object with a "type"', message)
    return message


def now_iso() -> str:
    """:func:`iso` of now. A server stamps every frame it sends (a broadcast: a thousand in a few
    milliseconds), so the text is made once per millisecond and reused within it."""
    global _now
    ms = time.time_ns() // 1_000_000
    last = _now
    if last[0] != ms:
        # exact: no float seconds to round
        last = _now = (ms, iso(_EPOCH + timedelta(milliseconds=ms)))
    return last[1]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_now: tuple[int, str] = (-1, "")


class Encoded(dict):
    """A part of a message that is already JSON text, encoded once for every socket that gets it
    (a Celery worker encodes a valuation; daphne splices it into each connection's frame). As
    a dict it holds only what consumers route and order on (a portfolio's ``id``, ``valued_at``)."""

    __slots__ = ("json",)

    def __init__(self, json: str, **fields: Any) -> None:
        super().__init__(fields)
        self.json = json


def _encode_other(value: Any) -> Any:
    if isinstance(value, Encoded):
        return orjson.Fragment(value.json)
    for kind in (str, int, float, dict, list, tuple):  # subclasses: e.g. a StrEnum, lazy text
        if isinstance(value, kind):
            return kind(value)
    raise TypeError(f"cannot encode {type(value).__name__} in a frame")


def encoded_once(value: dict[str, Any]) -> Any:
    """``value`` to put in a frame, its JSON encoded once for the sockets that send it in turn
    (one channel-layer message reaches every member socket as the same object)."""
    global _last_encoded
    if isinstance(value, Encoded):
        return value
    last = _last_encoded
    if last[0] is not value:
        last = _last_encoded = (value, orjson.Fragment(encode_utf8(value)))
    return last[1]


# The last value encoded_once() encoded, and its text; holding the value keeps its id unique.
_last_encoded: tuple[Any, Any] = (None, None)


def encode(frame: Any) -> str:
    """A frame as JSON text; :class:`Encoded` parts go in verbatim."""
    return encode_utf8(frame).decode()


def encode_utf8(frame: Any) -> bytes:
    """:func:`encode`'s text in UTF-8, as a frame goes on the wire."""
    return orjson.dumps(frame, default=_encode_other, option=orjson.OPT_PASSTHROUGH_SUBCLASS)


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
    trade_seq: int | None = None,
) -> dict[str, Any]:
    """One trade on an exchange. ``side`` is the taker's ("buy" lifted an ask).

    The exchange's time travels as ``as_of`` (as in ``quote``): ``ts`` is the envelope's send time.
    ``trade_seq`` numbers the instrument's trades as its feed process saw them (1, 2, 3, ...),
    so a trade lost on the way to a socket shows; absent on trades from elsewhere.
    """
    # None: the exchange did not say which side was the taker.
    if side is not None and side not in TRADE_SIDES:
        raise ValueError(f"side must be one of {TRADE_SIDES}, got {side!r}")
    message = {
        "type": "trade",
        "instrument": instrument_id,
        "symbol": symbol,
        "price": dec(price),
        "size": dec(size),
        "side": side,
        "trade_id": str(trade_id),
        "as_of": iso(exchange_ts),
    }
    if trade_seq is not None:
        message["trade_seq"] = trade_seq
    return message


def book(
    *,
    instrument_id: int,
    symbol: str,
    bids: list[tuple[Decimal, Decimal]],
    asks: list[tuple[Decimal, Decimal]],
    exchange_ts: datetime,
    depth: int = BOOK_DEPTH,
) -> dict[str, Any]:
    """The top ``depth`` levels of an order book, complete in itself (not a diff).

    Levels are ``[price, size]`` string pairs, bids best (highest) first, asks best (lowest) first.
    """
    return {
        "type": "book",
        "instrument": instrument_id,
        "symbol": symbol,
        "bids": [[dec(p), dec(s)] for p, s in sorted(bids, key=lambda lv: -lv[0])[:depth]],
        "asks": [[dec(p), dec(s)] for p, s in sorted(asks, key=lambda lv: lv[0])[:depth]],
        "as_of": iso(exchange_ts),
    }


def book_diff(
    *,
    instrument_id: int,
    symbol: str,
    book_seq: int,
    bids: list[tuple[Decimal, Decimal]],
    asks: list[tuple[Decimal, Decimal]],
    checksum: int,
    exchange_ts: datetime,
) -> dict[str, Any]:
    """One change of an order book: the levels that changed, ``[price, new size]`` (size
    ``"0"``: the level is gone), bids highest first, asks lowest first. ``book_seq`` numbers
    the instrument's changes; ``checksum`` is the book's after this change
    (streaming/orderbook.py, docs/api.md)."""
    return {
        "type": "book_diff",
        "instrument": instrument_id,
        "symbol": symbol,
        "book_seq": book_seq,
        "bids": [[dec(p), dec(s)] for p, s in sorted(bids, key=lambda lv: -lv[0])],
        "asks": [[dec(p), dec(s)] for p, s in sorted(asks, key=lambda lv: lv[0])],
        "checksum": checksum,
        "as_of": iso(exchange_ts),
    }


def book_levels(
    *,
    instrument_id: int,
    symbol: str,
    book_seq: int,
    bids: list[tuple[Decimal, Decimal]],
    asks: list[tuple[Decimal, Decimal]],
    checksum: int,
    exchange_ts: datetime,
) -> dict[str, Any]:
    """Every level of the book the diffs apply to, as of change ``book_seq``: the snapshot of
    a ``book`` stream in ``diffs`` mode."""
    message = book_diff(
        instrument_id=instrument_id,
        symbol=symbol,
        book_seq=book_seq,
        bids=bids,
        asks=asks,
        checksum=checksum,
        exchange_ts=exchange_ts,
    )
    message["type"] = "book_levels"
    return message


def error(*, code: str, message: str, request_id: Any = None) -> dict[str, Any]:
    """An error; API v1 echoes the request's ``id`` (null when the frame had none)."""
    frame = {"type": "error", "code": code, "message": message}
    if request_id is not None:
        frame["id"] = request_id
    return frame


def pong() -> dict[str, Any]:
    return {"type": "pong"}


# API v1 (/ws/v1/): replies to requests and stream messages.


def welcome(*, user: str | None, auth_timeout: float, heartbeat: float) -> dict[str, Any]:
    """The first frame on /ws/v1/: who the connection is (null until authenticated)."""
    return {
        "type": "welcome",
        "api": "v1",
        "user": user,
        "auth_timeout": auth_timeout,
        "heartbeat": heartbeat,
    }


def reply(*, request_id: Any, request: str, result: dict[str, Any]) -> dict[str, Any]:
    """A request succeeded; ``id`` is the client's, ``request`` names what was asked."""
    return {"type": "reply", "id": request_id, "request": request, "result": result}


def stream_snapshot(*, stream: str, stream_seq: int, data: Any) -> dict[str, Any]:
    """A stream's complete current state; the next update carries ``stream_seq`` + 1."""
    return {"type": "snapshot", "stream": stream, "stream_seq": stream_seq, "data": data}


def stream_update(*, stream: str, stream_seq: int, data: dict[str, Any]) -> dict[str, Any]:
    """A change on one stream: ``data`` is a quote, trade, book or valuation message."""
    return {"type": "update", "stream": stream, "stream_seq": stream_seq, "data": data}


def heartbeat() -> dict[str, Any]:
    return {"type": "heartbeat"}


RATE_PLACES = Decimal("1e-10")


def _rate(value: Decimal | None) -> str | None:
    return None if value is None else dec(value.quantize(RATE_PLACES))


def range_returns(
    *, period: str, start: date, end: date, returns: Any, problem: str | None
) -> dict[str, Any]:
    """One range's TWR and IRR (fractions as decimal strings: "0.16875" is 16.875 %) with the
    working: the TWR's sub-periods (cut at each day with a flow) and the IRR's flows with
    their present values. ``returns`` is a ``day_values.RangeReturns`` or None (then
    ``problem`` says why)."""
    out: dict[str, Any] = {
        "period": period,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "twr": None,
        "irr": None,
        "irr_annualized": None,
        "problem": problem,
        "working": None,
    }
    if returns is None:
        return out
    twr, irr = returns.twr, returns.irr
    out.update(
        twr=_rate(twr.cumulative),
        irr=_rate(returns.irr_rate),
        irr_annualized=returns.irr_annualized,
        problem=returns.irr_problem,
        working={
            "sub_periods": [
                {
                    "start": iso(sp.start),
                    "end": iso(sp.end),
                    "start_value": money(sp.start_value),
                    "flow": money(sp.flow),
                    "end_value": money(sp.end_value),
                    "return": _rate(sp.period_return),
                }
                for sp in twr.sub_periods
            ],
            "irr_flows": []
            if irr is None
            else [
                {
                    "day": day.isoformat(),
                    "amount": money(flow.amount),
                    "present_value": money(flow.present_value),
                }
                for flow, day in zip(irr.flows, returns.irr_days, strict=True)
            ],
        },
    )
    return out
