"""Kraken Spot WebSocket v2: ticker and level-2 book with CRC32 checksum verification.

Protocol (docs.kraken.com, Spot WebSocket v2: ``ticker``, ``book``, ``heartbeat``, ``status``
and the "Book checksum (WebSocket v2)" guide):

- Requests are ``{"method": "subscribe"|"unsubscribe", "params": {"channel": ..., "symbol":
  [...], "depth": n}, "req_id": n}``; replies carry ``success`` and, on failure, ``error``.
- Data frames are ``{"channel": ..., "type": "snapshot"|"update", "data": [...]}``. Prices and
  quantities are JSON numbers carrying full precision, so they are decoded straight to Decimal.
- ``heartbeat`` arrives about once a second when nothing else does; ``status`` on connect and
  whenever the trading engine's state changes.
- ``instrument`` publishes every pair's ``price_precision`` and ``qty_precision`` (a snapshot
  on subscribe, updates when they change); the book checksum needs them.
- Book: apply every level of a message (qty 0 deletes), truncate to the subscribed depth, then
  compare the CRC32 of the top 10 asks (low to high) followed by the top 10 bids (high to low),
  each price and qty formatted at the pair's precision, with the '.' removed and leading zeros
  stripped, with ``checksum``. A JSON number's own text is not that format (``0.566`` for a
  quantity whose precision is 8 is ``0.56600000``); a pair missing from the instrument channel
  falls back to the number's own digits.
- A checksum mismatch resubscribes the pair's book for a fresh snapshot, at once the first
  time and then with capped exponential backoff, so a book that keeps failing costs a few
  requests a minute, not one per frame.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import time
import zlib
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any, ClassVar, Literal

from websockets.asyncio.client import ClientConnection

from .base import Book, Emit, Level, Tick, utcnow
from .connection import SingleConnectionFeed, truncate
from .values import from_iso, loads, to_decimal

log = logging.getLogger(__name__)

CHANNELS = ("ticker", "book")
CHECKSUM_LEVELS = 10  # Kraken checksums the top 10 levels whatever the subscribed depth

Precision = tuple[int, int]  # (price_precision, qty_precision) of one pair


def checksum_token(value: Decimal, places: int | None = None) -> str:
    """A price or quantity as Kraken's checksum wants it: formatted with ``places`` decimals
    (the value's own digits when ``None``), then no '.' and no leading zeros."""
    if places is not None:
        value = value.quantize(Decimal(1).scaleb(-places))
    return format(value, "f").replace(".", "").lstrip("0")


def book_checksum(
    asks: Sequence[Level], bids: Sequence[Level], *, precision: Precision | None = None
) -> int:
    """CRC32 (unsigned) of the top 10 asks, best first, followed by the top 10 bids, each level
    formatted at the pair's ``precision`` (price, qty)."""
    price_places, qty_places = precision if precision is not None else (None, None)
    text = "".join(
        checksum_token(price, price_places) + checksum_token(qty, qty_places)
        for side in (asks[:CHECKSUM_LEVELS], bids[:CHECKSUM_LEVELS])
        for price, qty in side
    )
    return zlib.crc32(text.encode("ascii")) & 0xFFFFFFFF


class KrakenBook:
    """One symbol's level-2 book, truncated to the subscribed depth after every message."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}

    def apply(self, bids: Iterable[Any], asks: Iterable[Any], *, snapshot: bool) -> None:
        if snapshot:
            self.bids.clear()
            self.asks.clear()
        _set_levels(self.bids, bids)
        _set_levels(self.asks, asks)
        # Levels pushed out of the subscribed depth get no "qty": 0 of their own.
        self.bids = dict(heapq.nlargest(self.depth, self.bids.items()))
        self.asks = dict(heapq.nsmallest(self.depth, self.asks.items()))

    def top(self, levels: int) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        bids = tuple(heapq.nlargest(levels, self.bids.items()))
        asks = tuple(heapq.nsmallest(levels, self.asks.items()))
        return bids, asks

    def checksum(self, precision: Precision | None) -> int:
        bids, asks = self.top(CHECKSUM_LEVELS)
        return book_checksum(asks, bids, precision=precision)


def _set_levels(side: dict[Decimal, Decimal], levels: Iterable[Any]) -> None:
    for level in levels:
        price, qty = to_decimal(level["price"]), to_decimal(level["qty"])
        if qty == 0:
            side.pop(price, None)
        else:
            # Delete first so a level keeps the wire's exact text (its exponent): the checksum
            # falls back to it for a pair whose precision is not known.
            side.pop(price, None)
            side[price] = qty


class KrakenFeed(SingleConnectionFeed):
    """Ticks and order books from Kraken Spot (WebSocket v2).

    Emits a :class:`Tick` for each ``ticker`` snapshot/update (price = ``last``, with bid and
    ask) and a :class:`Book` (top ``book_levels``) after each checksum-verified ``book``
    message. A checksum mismatch resubscribes that symbol's book to get a fresh snapshot, with
    backoff when it keeps failing.
    """

    name: ClassVar[str] = "kraken"

    def __init__(
        self,
        *,
        emit: Emit,
        url: str = "wss://ws.kraken.com/v2",
        channels: Sequence[str] = CHANNELS,
        depth: Literal[10, 25, 100, 500, 1000] = 10,
        book_levels: int = 10,
        stall_timeout: float = 2.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        open_timeout: float = 10.0,
        send_timeout: float = 5.0,
        close_timeout: float = 2.0,
        ping_interval: float | None = 20.0,
        resync_backoff_base: float = 1.0,
        resync_backoff_cap: float = 60.0,
        resync_healthy_after: float = 60.0,
    ) -> None:
        """
        Args:
            url: WebSocket endpoint: ``wss://ws.kraken.com/v2``, the beta endpoint or a fake.
            channels: any of ``ticker`` and ``book``.
            depth: book subscription depth (Kraken's allowed values).
            stall_timeout: reconnect after this long without a frame; Kraken sends a heartbeat
                about every second, so the default is twice that.
            resync_backoff_base, resync_backoff_cap: a book's second resync in a row waits
                about ``base`` seconds, each further one twice as long up to ``cap``.
            resync_healthy_after: a book that verifies this long starts the backoff afresh.
        """
        super().__init__(
            emit=emit,
            url=url,
            stall_timeout=stall_timeout,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            open_timeout=open_timeout,
            send_timeout=send_timeout,
            close_timeout=close_timeout,
            ping_interval=ping_interval,
        )
        unknown = set(channels) - set(CHANNELS)
        if unknown or not channels:
            raise ValueError(f"channels must be a non-empty subset of {CHANNELS}, got {channels}")
        if resync_backoff_base <= 0 or resync_backoff_cap < resync_backoff_base:
            raise ValueError("resync backoff needs 0 < resync_backoff_base <= resync_backoff_cap")
        self.channels = tuple(dict.fromkeys(channels))
        self.depth = depth
        self.book_levels = book_levels
        self.resync_backoff_base = resync_backoff_base
        self.resync_backoff_cap = resync_backoff_cap
        self.resync_healthy_after = resync_healthy_after
        self.books: dict[str, KrakenBook] = {}
        # symbol -> (price_precision, qty_precision), from the instrument channel.
        self.precisions: dict[str, Precision] = {}
        self.system_status: str | None = None
        self._awaiting_snapshot: set[str] = set()
        self._req_ids = itertools.count(1)
        # Per book: resyncs since it last verified for resync_healthy_after, the time it
        # started verifying, and when a backed-off resync is due (time.monotonic()).
        self._resyncs: dict[str, int] = {}
        self._verified_since: dict[str, float] = {}
        self._resync_due: dict[str, float] = {}

    async def on_open(self, ws: ClientConnection) -> None:
        self.books.clear()
        self._awaiting_snapshot = set(self.symbols)
        self._resync_due.clear()  # the fresh subscriptions below are the resync
        if "book" in self.channels:
            # First, so the precisions usually arrive before the first book snapshot.
            await self.connection.send_json(
                {
                    "method": "subscribe",
                    "params": {"channel": "instrument"},
                    "req_id": next(self._req_ids),
                }
            )
        await self._request("subscribe", sorted(self.symbols))

    async def on_symbols_changed(self, added: frozenset[str], removed: frozenset[str]) -> None:
        for symbol in removed:
            self.books.pop(symbol, None)
            self._awaiting_snapshot.discard(symbol)
            self._resyncs.pop(symbol, None)
            self._verified_since.pop(symbol, None)
            self._resync_due.pop(symbol, None)
        if removed:
            await self._request("unsubscribe", sorted(removed))
        if added:
            self._awaiting_snapshot |= added
            await self._request("subscribe", sorted(added))

    async def _request(
        self, method: str, symbols: list[str], channels: Sequence[str] | None = None
    ) -> None:
        for channel in channels or self.channels:
            params: dict[str, Any] = {"channel": channel, "symbol": symbols}
            if channel == "book":
                params["depth"] = self.depth
            message = {"method": method, "params": params, "req_id": next(self._req_ids)}
            await self.connection.send_json(message)

    async def on_message(self, raw: str | bytes) -> None:
        message = loads(raw)
        if not isinstance(message, dict):
            raise TypeError("frame is not a JSON object")
        if self._resync_due:
            await self._resync_due_books()
        if "method" in message:
            self.stats.record_message()
            self._on_reply(message, raw)
            return
        channel = message["channel"]
        if channel == "instrument":
            self.stats.record_message()
            self._on_instrument(message["data"])
        elif channel == "ticker":
            for item in message["data"]:
                self._on_ticker(item)
        elif channel == "book":
            for item in message["data"]:
                await self._on_book(item, snapshot=message["type"] == "snapshot")
        elif channel == "heartbeat":
            self.stats.record_message()
        elif channel == "status":
            self.stats.record_message()
            for item in message["data"]:
                self._on_status(item)
        else:
            self.stats.record_message()  # other channels are not ours to handle

    def _on_reply(self, message: dict[str, Any], raw: str | bytes) -> None:
        if message.get("success") is False:
            # The symbol stays unsubscribed until the next reconnect or symbol change.
            self.stats.errors += 1
            log.warning("kraken: %s rejected: %s", message.get("method"), truncate(raw))

    def _on_instrument(self, data: dict[str, Any]) -> None:
        for pair in data.get("pairs", []):
            precision = (pair["price_precision"], pair["qty_precision"])
            if not all(isinstance(p, int) and 0 <= p <= 18 for p in precision):
                raise ValueError(f"bad precisions for {pair.get('symbol')!r}: {precision}")
            self.precisions[pair["symbol"]] = precision

    def _on_status(self, item: dict[str, Any]) -> None:
        system = item["system"]
        if system != self.system_status:
            level = logging.INFO if system == "online" else logging.WARNING
            log.log(level, "kraken: trading engine %s (api %s)", system, item.get("api_version"))
            self.system_status = system

    def _on_ticker(self, item: dict[str, Any]) -> None:
        symbol = item["symbol"]
        self.stats.record_message(symbol)
        if symbol not in self.symbols:
            return
        ts = from_iso(item["timestamp"]) if "timestamp" in item else utcnow()
        tick = Tick(
            feed_symbol=symbol,
            price=to_decimal(item["last"]),
            ts=ts,
            bid=to_decimal(item["bid"]),
            ask=to_decimal(item["ask"]),
        )
        self.emit(tick)

    async def _on_book(self, item: dict[str, Any], *, snapshot: bool) -> None:
        symbol = item["symbol"]
        self.stats.record_message(symbol)
        if symbol not in self.symbols:
            return
        if snapshot:
            self._awaiting_snapshot.discard(symbol)
        elif symbol in self._awaiting_snapshot:
            return  # updates for a book we are resyncing; the snapshot will replace it
        book = self.books.setdefault(symbol, KrakenBook(self.depth))
        book.apply(item.get("bids", []), item.get("asks", []), snapshot=snapshot)
        expected = item["checksum"]
        if not isinstance(expected, int):
            raise TypeError("book checksum must be an integer")
        actual = book.checksum(self.precisions.get(symbol))
        if actual != expected:
            self.stats.checksum_failures += 1
            await self._on_mismatch(symbol, actual, expected)
            return
        self._on_verified(symbol)
        bids, asks = book.top(self.book_levels)
        ts = from_iso(item["timestamp"]) if "timestamp" in item else utcnow()
        self.emit(Book(feed_symbol=symbol, bids=bids, asks=asks, ts=ts))

    def _on_verified(self, symbol: str) -> None:
        if symbol not in self._resyncs:
            return
        now = time.monotonic()
        since = self._verified_since.setdefault(symbol, now)
        if now - since >= self.resync_healthy_after:
            del self._resyncs[symbol]
            del self._verified_since[symbol]

    async def _on_mismatch(self, symbol: str, actual: int, expected: int) -> None:
        """Drop the book and resubscribe it: at once after a healthy spell, else backed off."""
        self.books.pop(symbol, None)
        self._awaiting_snapshot.add(symbol)  # updates are ignored until the fresh snapshot
        self._verified_since.pop(symbol, None)
        attempt = self._resyncs.get(symbol, 0)
        self._resyncs[symbol] = attempt + 1
        if attempt == 0:
            delay = 0.0
        else:
            ceiling = min(self.resync_backoff_cap, self.resync_backoff_base * 2 ** (attempt - 1))
            # Equal jitter: never less than half the ceiling, so the rate stays bounded.
            delay = ceiling * (0.5 + 0.5 * random.random())
        log.warning(
            "kraken: %s book checksum mismatch (ours %d, Kraken's %d); resubscribing in %.1fs",
            symbol,
            actual,
            expected,
            delay,
        )
        if delay == 0:
            await self._resync_book(symbol)
        else:
            self._resync_due[symbol] = time.monotonic() + delay

    async def _resync_due_books(self) -> None:
        """Send the backed-off resyncs whose time has come; every frame (heartbeats arrive
        about once a second) gives them a chance."""
        now = time.monotonic()
        for symbol in [s for s, due in self._resync_due.items() if due <= now]:
            del self._resync_due[symbol]
            await self._resync_book(symbol)

    async def _resync_book(self, symbol: str) -> None:
        await self._request("unsubscribe", [symbol], ("book",))
        await self._request("subscribe", [symbol], ("book",))
