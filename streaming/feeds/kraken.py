"""Kraken Spot WebSocket v2: ticker and level-2 book with CRC32 checksum verification.

Protocol (docs.kraken.com, Spot WebSocket v2: ``ticker``, ``book``, ``heartbeat``, ``status``
and the "Book checksum (WebSocket v2)" guide):

- Requests are ``{"method": "subscribe"|"unsubscribe", "params": {"channel": ..., "symbol":
  [...], "depth": n}, "req_id": n}``; replies carry ``success`` and, on failure, ``error``.
- Data frames are ``{"channel": ..., "type": "snapshot"|"update", "data": [...]}``. Prices and
  quantities are JSON numbers carrying full precision, so they are decoded straight to Decimal.
- ``heartbeat`` arrives about once a second when nothing else does; ``status`` on connect and
  whenever the trading engine's state changes.
- Book: apply every level of a message (qty 0 deletes), truncate to the subscribed depth, then
  compare the CRC32 of the top 10 asks (low to high) followed by the top 10 bids (high to low),
  each price and qty with the '.' removed and leading zeros stripped, with ``checksum``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
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


def checksum_token(value: Decimal) -> str:
    """A price or quantity as Kraken's checksum wants it: no '.', no leading zeros."""
    return format(value, "f").replace(".", "").lstrip("0")


def book_checksum(asks: Sequence[Level], bids: Sequence[Level]) -> int:
    """CRC32 (unsigned) of the top 10 asks, best first, followed by the top 10 bids."""
    text = "".join(
        checksum_token(price) + checksum_token(qty)
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

    def checksum(self) -> int:
        bids, asks = self.top(CHECKSUM_LEVELS)
        return book_checksum(asks, bids)


def _set_levels(side: dict[Decimal, Decimal], levels: Iterable[Any]) -> None:
    for level in levels:
        price, qty = to_decimal(level["price"]), to_decimal(level["qty"])
        if qty == 0:
            side.pop(price, None)
        else:
            # Delete first so a level keeps the wire's exact text (its exponent) for checksums.
            side.pop(price, None)
            side[price] = qty


class KrakenFeed(SingleConnectionFeed):
    """Ticks and order books from Kraken Spot (WebSocket v2).

    Emits a :class:`Tick` for each ``ticker`` snapshot/update (price = ``last``, with bid and
    ask) and a :class:`Book` (top ``book_levels``) after each checksum-verified ``book``
    message. A checksum mismatch resubscribes that symbol's book to get a fresh snapshot.
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
    ) -> None:
        """
        Args:
            url: WebSocket endpoint: ``wss://ws.kraken.com/v2``, the beta endpoint or a fake.
            channels: any of ``ticker`` and ``book``.
            depth: book subscription depth (Kraken's allowed values).
            stall_timeout: reconnect after this long without a frame; Kraken sends a heartbeat
                about every second, so the default is twice that.
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
        self.channels = tuple(dict.fromkeys(channels))
        self.depth = depth
        self.book_levels = book_levels
        self.books: dict[str, KrakenBook] = {}
        self.system_status: str | None = None
        self._awaiting_snapshot: set[str] = set()
        self._req_ids = itertools.count(1)

    async def on_open(self, ws: ClientConnection) -> None:
        self.books.clear()
        self._awaiting_snapshot = set(self.symbols)
        await self._request("subscribe", sorted(self.symbols))

    async def on_symbols_changed(self, added: frozenset[str], removed: frozenset[str]) -> None:
        for symbol in removed:
            self.books.pop(symbol, None)
            self._awaiting_snapshot.discard(symbol)
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
        if "method" in message:
            self.stats.record_message()
            self._on_reply(message, raw)
            return
        channel = message["channel"]
        if channel == "ticker":
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
        actual = book.checksum()
        if actual != expected:
            self.stats.checksum_failures += 1
            log.warning(
                "kraken: %s book checksum mismatch (ours %d, Kraken's %d); resubscribing",
                symbol,
                actual,
                expected,
            )
            await self._resync_book(symbol)
            return
        bids, asks = book.top(self.book_levels)
        ts = from_iso(item["timestamp"]) if "timestamp" in item else utcnow()
        self.emit(Book(feed_symbol=symbol, bids=bids, asks=asks, ts=ts))

    async def _resync_book(self, symbol: str) -> None:
        self.books.pop(symbol, None)
        self._awaiting_snapshot.add(symbol)
        await self._request("unsubscribe", [symbol], ("book",))
        await self._request("subscribe", [symbol], ("book",))
