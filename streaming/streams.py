"""API v1 streams: parse a stream name, check the user may see it, read its snapshot.

Stream names are ``<kind>:<key>``: ``quotes:<symbol>``, ``trades:<symbol>``, ``book:<symbol>``
(public market data, group ``instrument.<id>``) and ``portfolio:<id>`` (the user's own portfolio
only, group ``user.<id>``). Synchronous (ORM, Redis): consumers call these through a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from portfolio.models import Instrument, Portfolio, Quote
from portfolio.selectors import live_states, past_values
from streaming import events, marketdata, protocol

MAX_STREAM_NAME = 100

# Which channel-layer message feeds which stream kind.
KIND_OF_EVENT = {
    "quote": protocol.STREAM_QUOTES,
    "trade": protocol.STREAM_TRADES,
    "book": protocol.STREAM_BOOK,
    "book_diff": protocol.STREAM_BOOK,  # what a book stream in diffs mode delivers
    "valuation": protocol.STREAM_PORTFOLIO,
}


class StreamError(Exception):
    """A stream a client may not subscribe to; ``code`` is one of protocol's error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Stream:
    name: str  # canonical, e.g. "quotes:BTC-USD" (the instrument's own spelling)
    kind: str
    source_id: int  # the instrument id, or the portfolio id
    group: str  # the channel-layer group its deltas come from

    @property
    def source(self) -> tuple[str, int]:
        """What a channel-layer message names: (stream kind, instrument or portfolio id)."""
        return (self.kind, self.source_id)


def stream_resolve(*, name: Any, user_id: int) -> Stream:
    """The stream called ``name`` if ``user_id`` may subscribe to it; raises StreamError."""
    if not isinstance(name, str) or not name or len(name) > MAX_STREAM_NAME:
        raise StreamError(
            protocol.ERROR_BAD_PARAMS,
            f"stream: a string like 'quotes:BTC-USD', at most {MAX_STREAM_NAME} characters",
        )
    kind, sep, key = name.partition(":")
    if not sep or kind not in protocol.STREAM_KINDS or not key:
        kinds = ", ".join(
            f"{k}:<{'id' if k == 'portfolio' else 'symbol'}>" for k in protocol.STREAM_KINDS
        )
        raise StreamError(
            protocol.ERROR_BAD_PARAMS, f"stream: expected one of {kinds}, got {name!r}"
        )
    if kind == protocol.STREAM_PORTFOLIO:
        if not key.isascii() or not key.isdigit():
            raise StreamError(
                protocol.ERROR_BAD_PARAMS, f"stream: portfolio id must be a number, got {key!r}"
            )
        _own_portfolio(portfolio_id=int(key), user_id=user_id)
        return Stream(f"{kind}:{int(key)}", kind, int(key), events.user_group(user_id))
    # The symbol as spelled; any case if that names no instrument (symbols are unique as
    # spelled, so "btc-usd" and "BTC-USD" may both exist: each is reached by its own spelling).
    instrument = Instrument.objects.filter(symbol=key).values_list("id", "symbol").first()
    if instrument is None:
        instrument = (
            Instrument.objects.filter(symbol__iexact=key).values_list("id", "symbol").first()
        )
    if instrument is None:
        raise StreamError(protocol.ERROR_NOT_FOUND, f"no instrument with symbol {key!r}")
    instrument_id, symbol = instrument
    return Stream(f"{kind}:{symbol}", kind, instrument_id, events.instrument_group(instrument_id))


def stream_state(stream: Stream, *, mode: str = protocol.BOOK_MODE_TOP) -> Any:
    """A stream's current state, the ``data`` of its snapshot.

    quotes: the latest ``quote`` message or null; trades: ``{"trades": [recent trades]}``;
    book: the latest ``book`` message or null, in ``diffs`` mode the ``book_levels`` the next
    diff applies to or null; portfolio: the portfolio state.
    """
    if stream.kind == protocol.STREAM_PORTFOLIO:
        states = live_states.portfolio_states(portfolio_ids=[stream.source_id])
        return states[0] if states else None
    if stream.kind == protocol.STREAM_TRADES:
        return {"trades": marketdata.recent_trades(stream.source_id)}
    if stream.kind == protocol.STREAM_BOOK:
        if mode == protocol.BOOK_MODE_DIFFS:
            return marketdata.latest_book_levels(stream.source_id)
        return marketdata.latest_book(stream.source_id)
    quote = (
        Quote.objects.select_related("instrument").filter(instrument_id=stream.source_id).first()
    )
    if quote is None:
        return None
    return protocol.quote(
        instrument_id=quote.instrument_id,
        symbol=quote.instrument.symbol,
        price=quote.price,
        bid=quote.bid,
        ask=quote.ask,
        exchange_ts=quote.exchange_ts,
    )


def event_source(payload: dict[str, Any]) -> tuple[tuple[str, int], Any] | None:
    """Which stream a channel-layer message belongs to, and the update's data; None if none."""
    kind = KIND_OF_EVENT.get(payload.get("type"))
    if kind is None:
        return None
    if kind == protocol.STREAM_PORTFOLIO:
        state = payload.get("portfolio") or {}
        return ((kind, state.get("id")), state)
    return ((kind, payload.get("instrument")), payload)


def portfolios_of(*, user_id: int) -> list[dict[str, Any]]:
    """The user's portfolios, to pick ``portfolio:<id>`` streams from."""
    return [
        {"id": pid, "name": name, "base_currency": currency}
        for pid, name, currency in Portfolio.objects.filter(owner_id=user_id)
        .order_by("id")
        .values_list("id", "name", "base_currency")
    ]


def _own_portfolio(*, portfolio_id: int, user_id: int) -> Portfolio:
    portfolio = Portfolio.objects.filter(id=portfolio_id).first()
    if portfolio is None:
        raise StreamError(protocol.ERROR_NOT_FOUND, f"no portfolio {portfolio_id}")
    if portfolio.owner_id != user_id:
        raise StreamError(protocol.ERROR_FORBIDDEN, f"portfolio {portfolio_id} is not yours")
    return portfolio


def _day(message: dict[str, Any], field: str) -> date | None:
    raw = message.get(field)
    if raw is None:
        return None
    try:
        if not isinstance(raw, str) or len(raw) != 10:
            raise ValueError
        return date.fromisoformat(raw)
    except ValueError:
        raise StreamError(
            protocol.ERROR_BAD_PARAMS, f"{field}: a day like 2026-03-01, got {raw!r}"
        ) from None


def portfolio_returns(*, message: dict[str, Any], user_id: int) -> dict[str, Any]:
    """The ``returns`` request's result: TWR and IRR of the user's portfolio over 1D … Max and,
    with ``from`` and ``to`` (UTC days), over that range, from the ledger and the daily price
    history, each with its working. Raises StreamError naming a bad field."""
    portfolio_id = message.get("portfolio")
    if isinstance(portfolio_id, bool) or not isinstance(portfolio_id, int):
        raise StreamError(protocol.ERROR_BAD_PARAMS, "portfolio: a portfolio id, an integer")
    portfolio = _own_portfolio(portfolio_id=portfolio_id, user_id=user_id)
    start, end = _day(message, "from"), _day(message, "to")
    if (start is None) != (end is None):
        raise StreamError(protocol.ERROR_BAD_PARAMS, "from and to: give both days, or neither")
    custom = None if start is None else (start, end)
    results = past_values.period_returns(portfolio=portfolio, custom=custom)
    return {
        "portfolio": portfolio.id,
        "base_currency": portfolio.base_currency,
        "ranges": [
            protocol.range_returns(
                period=r.period, start=r.start, end=r.end, returns=r.returns, problem=r.problem
            )
            for r in results
        ],
    }
