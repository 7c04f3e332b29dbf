"""Binance Spot market data over WebSocket streams, with a local order book per symbol.

Protocol (Binance Spot "WebSocket Streams" docs, binance/binance-spot-api-docs
web-socket-streams.md):

- Combined streams at ``/stream?streams=a/b/c``; every event arrives wrapped as
  ``{"stream": "<name>", "data": <payload>}``; stream names use lowercase symbols.
- Live ``SUBSCRIBE`` / ``UNSUBSCRIBE`` requests carry an ``id``; success is
  ``{"result": null, "id": n}``.
- Limits per connection: 5 incoming messages per second (pings, pongs and JSON control
  messages all count) and 1024 streams. We shard symbols across connections and throttle.
- The server pings every 20 s and expects a pong (websockets answers pings by itself); a
  connection lives at most 24 h and a ``serverShutdown`` event announces a restart. Both end in a
  prompt reconnect here. A ping proves the socket, not the streams: only data frames count as
  life, so a connection that answers pings but carries no stream data is a stall.
- Local order book: buffer ``depthUpdate`` events, fetch ``GET /api/v3/depth`` and follow the
  documented ``U``/``u``/``lastUpdateId`` rules; a hole in the update ids means a resync.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal

from websockets.asyncio.client import ClientConnection

from .base import Backoff, Book, Emit, Feed, Level, Tick, Trade, utcnow
from .connection import FeedConnection, ReconnectNow, truncate
from .values import from_millis, loads, to_decimal

log = logging.getLogger(__name__)

CHANNELS = ("trade", "bookTicker", "miniTicker", "depth")
SyncResult = Literal["buffered", "waiting", "applied", "ignored", "gap", "refetch"]


class ControlThrottle:
    """Spaces outgoing control messages so no 1-second window holds more than ``per_second``.

    Binance disconnects a connection that sends more than 5 messages a second and counts our
    automatic pongs among them, so the default leaves one of the 5 free for a pong.
    """

    def __init__(self, *, per_second: int, window: float = 1.0) -> None:
        if per_second < 1:
            raise ValueError("per_second must be at least 1")
        self.per_second = per_second
        self.window = window
        self._sent: deque[float] = deque(maxlen=per_second)
        self._lock = asyncio.Lock()

    async def wait_turn(self) -> None:
        """Return when one more message may be sent; call it right before each send."""
        async with self._lock:
            if len(self._sent) == self.per_second:
                # A little margin so the receiver's clock also sees a full window.
                wait = self._sent[0] + self.window + 0.02 - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            self._sent.append(time.monotonic())


class DepthBook:
    """One symbol's local order book, following Binance's "manage a local order book" steps.

    Pure bookkeeping with no I/O: the feed calls :meth:`on_event` for each ``depthUpdate`` and
    :meth:`on_snapshot` with the REST snapshot, and acts on what they return.
    """

    MAX_BUFFER = 10_000  # events kept while waiting for a snapshot

    def __init__(self) -> None:
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.reset()

    def reset(self) -> None:
        """Forget everything and start buffering again (after a gap, a reconnect, a new symbol)."""
        self.synced = False
        self.update_id: int | None = None
        self.first_event_start: int | None = None
        self.buffer: list[dict[str, Any]] = []
        self.snapshot: tuple[int, list[Any], list[Any]] | None = None
        self.bids.clear()
        self.asks.clear()

    def on_event(self, event: dict[str, Any]) -> SyncResult:
        """Buffer or apply one diff event."""
        if not isinstance(event["U"], int) or not isinstance(event["u"], int):
            raise TypeError("depthUpdate U/u must be integers")
        if self.synced:
            return self._apply(event)
        if self.first_event_start is None:
            self.first_event_start = event["U"]
        self.buffer.append(event)
        if len(self.buffer) > self.MAX_BUFFER:
            self.reset()
            return "refetch"
        return self._try_sync() if self.snapshot is not None else "buffered"

    def on_snapshot(self, last_update_id: int, bids: list[Any], asks: list[Any]) -> SyncResult:
        """Take the REST snapshot; it is applied once a buffered event shows where it fits."""
        if not isinstance(last_update_id, int):
            raise TypeError("lastUpdateId must be an integer")
        self.snapshot = (last_update_id, bids, asks)
        return "waiting" if self.first_event_start is None else self._try_sync()

    def top(self, levels: int) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        """The best ``levels`` bids (highest first) and asks (lowest first)."""
        bids = tuple(heapq.nlargest(levels, self.bids.items()))
        asks = tuple(heapq.nsmallest(levels, self.asks.items()))
        return bids, asks

    def _try_sync(self) -> SyncResult:
        assert self.snapshot is not None and self.first_event_start is not None
        last_update_id, bids, asks = self.snapshot
        if last_update_id < self.first_event_start:
            # Step 4: the snapshot predates the first event we buffered; fetch another.
            self.snapshot = None
            return "refetch"
        self.bids.clear()
        self.asks.clear()
        _set_levels(self.bids, bids)
        _set_levels(self.asks, asks)
        self.update_id = last_update_id
        self.synced = True
        buffered, self.buffer, self.snapshot = self.buffer, [], None
        result: SyncResult = "ignored"
        for event in buffered:
            if event["u"] <= last_update_id:
                continue  # step 5: already contained in the snapshot
            outcome = self._apply(event)
            if outcome == "gap":
                return "gap"
            result = outcome
        return result

    def _apply(self, event: dict[str, Any]) -> SyncResult:
        assert self.update_id is not None
        if event["u"] <= self.update_id:
            return "ignored"  # older than the book
        if event["U"] > self.update_id + 1:
            self.reset()  # something was missed; the book cannot be trusted any more
            return "gap"
        _set_levels(self.bids, event["b"])
        _set_levels(self.asks, event["a"])
        self.update_id = event["u"]
        return "applied"


def _set_levels(side: dict[Decimal, Decimal], levels: Iterable[Any]) -> None:
    """Apply absolute quantities; zero removes the level (removing an unknown one is normal)."""
    for price_raw, qty_raw in levels:
        price, qty = to_decimal(price_raw), to_decimal(qty_raw)
        if qty == 0:
            side.pop(price, None)
        else:
            side[price] = qty


def _http_get_json(url: str, timeout: float) -> Any:
    request = urllib.request.Request(  # the scheme comes from our configuration
        url, headers={"Accept": "application/json", "User-Agent": "livefolio-feed"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return loads(response.read(8 * 2**20))


async def fetch_depth_snapshot(
    *, rest_url: str, symbol: str, limit: int, request_timeout: float
) -> dict[str, Any]:
    """``GET /api/v3/depth`` with a timeout (urllib in a thread: websockets has no HTTP client)."""
    query = urllib.parse.urlencode({"symbol": symbol.upper(), "limit": limit})
    url = f"{rest_url.rstrip('/')}/api/v3/depth?{query}"
    # The socket timeout bounds each read; the outer one bounds the whole call.
    async with asyncio.timeout(request_timeout * 2):  # not wait_for: FeedConnection.send_json
        data = await asyncio.to_thread(_http_get_json, url, request_timeout)
    if not isinstance(data, dict):
        raise TypeError(f"depth snapshot is not an object: {truncate(json.dumps(data))}")
    return data


class _Shard:
    """One Binance connection and the symbols whose streams it carries."""

    def __init__(self, feed: BinanceFeed, index: int) -> None:
        self.feed = feed
        self.index = index
        self.symbols: set[str] = set()  # lowercase
        self.throttle = ControlThrottle(per_second=feed.control_messages_per_s)
        self.connection = FeedConnection(
            label=f"conn{index}",
            stats=feed.stats,
            url=self.url,
            on_open=self.on_open,
            on_message=self.on_message,
            stall_timeout=feed.stall_timeout,
            backoff=Backoff(base=feed.backoff_base, cap=feed.backoff_cap),
            open_timeout=feed.open_timeout,
            send_timeout=feed.send_timeout,
            close_timeout=feed.close_timeout,
            # Binance pings us; our own pings would only eat into the 5 messages/s budget.
            ping_interval=None,
            max_connection_age=feed.max_connection_age,
            # Throttled SUBSCRIBE requests for a full shard take a while; allow for them.
            subscribe_timeout=feed.open_timeout + feed.subscribe_seconds(),
        )
        self.task: asyncio.Task[None] | None = None

    def streams(self, symbols: Iterable[str] | None = None) -> list[str]:
        return [
            f"{symbol}@{self.feed.stream_suffix(channel)}"
            for symbol in sorted(self.symbols if symbols is None else symbols)
            for channel in self.feed.channels
        ]

    def url(self) -> str:
        first = self.streams()[: self.feed.url_max_streams]
        return f"{self.feed.url.rstrip('/')}/stream?streams={'/'.join(first)}"

    async def on_open(self, ws: ClientConnection) -> None:
        for symbol in self.symbols:
            self.feed.restart_book(symbol)
        rest = self.streams()[self.feed.url_max_streams :]
        await self.control("SUBSCRIBE", rest)

    async def control(self, method: str, streams: Sequence[str]) -> None:
        """Send SUBSCRIBE/UNSUBSCRIBE in chunks, throttled; a no-op while disconnected."""
        chunk = self.feed.subscribe_chunk
        for start in range(0, len(streams), chunk):
            if not self.connection.connected:
                return  # on_open resubscribes everything after the reconnect
            await self.throttle.wait_turn()
            request_id = next(self.feed.request_ids)
            if len(self.feed.pending) > 1000:  # replies lost with a dropped connection
                self.feed.pending.pop(next(iter(self.feed.pending)))
            self.feed.pending[request_id] = method
            params = list(streams[start : start + chunk])
            await self.connection.send_json({"method": method, "params": params, "id": request_id})

    async def on_message(self, raw: str | bytes) -> None:
        message = loads(raw)
        if not isinstance(message, dict):
            raise TypeError("frame is not a JSON object")
        if _is_server_shutdown(message):
            raise ReconnectNow("serverShutdown announced")
        if "stream" in message:
            self.feed.on_stream_event(message["stream"], message["data"])
        elif "id" in message:
            self.feed.on_response(message, raw)
        else:
            log.debug("binance: ignoring unknown message %s", truncate(raw))


def _is_server_shutdown(message: dict[str, Any]) -> bool:
    # The streams docs name the event but show no payload; the WebSocket API documents it as
    # {"event": {"e": "serverShutdown", ...}}. Accept that and the plain/combined event shapes.
    for candidate in (message.get("event"), message.get("data"), message):
        if isinstance(candidate, dict) and candidate.get("e") == "serverShutdown":
            return True
    return False


class BinanceFeed(Feed):
    """Ticks, trades and order books from Binance Spot.

    Emits, per subscribed symbol and depending on ``channels``:

    - ``trade`` -> a :class:`Trade` and a :class:`Tick` at the trade price;
    - ``miniTicker`` -> a :class:`Tick` at the 24 h ticker's last (close) price;
    - ``bookTicker`` -> a :class:`Tick` with the new best bid/ask; its price is the last trade
      price when one was seen, otherwise the mid (the event carries no timestamp, so ``ts`` is
      the receive time);
    - ``depth`` -> a :class:`Book` (top ``book_levels``) after every applied diff.

    ``depth`` costs one REST snapshot per symbol per (re)sync, which Binance rate-limits by
    weight, so it is opt-in: run a second feed with ``channels=("depth", "trade")`` for the few
    symbols that need a book.
    """

    name: ClassVar[str] = "binance"

    def __init__(
        self,
        *,
        emit: Emit,
        url: str = "wss://stream.binance.com:9443",
        rest_url: str = "https://api.binance.com",
        channels: Sequence[str] = ("miniTicker", "bookTicker", "trade"),
        depth_speed: Literal["100ms", "1000ms"] = "100ms",
        depth_limit: int = 100,
        book_levels: int = 10,
        max_streams_per_connection: int = 1024,
        url_max_streams: int = 200,
        subscribe_chunk: int = 200,
        control_messages_per_s: int = 4,
        stall_timeout: float = 40.0,
        max_connection_age: float | None = 23.5 * 3600,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        open_timeout: float = 10.0,
        send_timeout: float = 5.0,
        close_timeout: float = 2.0,
        rest_timeout: float = 10.0,
        max_snapshot_fetches: int = 2,
    ) -> None:
        """
        Args:
            url: WebSocket base, e.g. ``wss://stream.binance.com:9443``, the testnet's
                ``wss://stream.testnet.binance.vision`` or a local fake.
            rest_url: REST base for depth snapshots, e.g. ``https://api.binance.com``.
            channels: per-symbol streams to subscribe, any of ``trade``, ``bookTicker``,
                ``miniTicker``, ``depth``.
            depth_limit: levels in the REST snapshot (Binance weights larger limits more).
            book_levels: levels per side in each emitted :class:`Book`.
            url_max_streams: streams put in the connect URL; the rest are sent as SUBSCRIBE
                requests of ``subscribe_chunk`` streams each, which keeps the URL short.
            control_messages_per_s: our JSON control messages per second per connection
                (Binance allows 5 messages of any kind, pongs included).
            stall_timeout: reconnect after this long without a data frame (pings do not
                count); ``bookTicker`` and ``miniTicker`` keep a traded symbol well inside it.
            max_connection_age: reconnect before Binance's 24 h cut-off; ``None`` to wait for it.
        """
        super().__init__(emit=emit)
        unknown = set(channels) - set(CHANNELS)
        if unknown or not channels:
            raise ValueError(f"channels must be a non-empty subset of {CHANNELS}, got {channels}")
        if len(channels) > max_streams_per_connection:
            raise ValueError("max_streams_per_connection is smaller than one symbol's streams")
        self.url = url
        self.rest_url = rest_url
        self.channels = tuple(dict.fromkeys(channels))
        self.depth_speed = depth_speed
        self.depth_limit = depth_limit
        self.book_levels = book_levels
        self.max_streams_per_connection = max_streams_per_connection
        self.url_max_streams = url_max_streams
        self.subscribe_chunk = subscribe_chunk
        self.control_messages_per_s = control_messages_per_s
        self.stall_timeout = stall_timeout
        self.max_connection_age = max_connection_age
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.open_timeout = open_timeout
        self.send_timeout = send_timeout
        self.close_timeout = close_timeout
        self.rest_timeout = rest_timeout
        self.request_ids = itertools.count(1)
        self.pending: dict[int, str] = {}
        self.shards: list[_Shard] = []
        self._shard_index = itertools.count()
        self._by_lower: dict[str, str] = {}  # stream symbol -> the feed_symbol we were given
        self._books: dict[str, DepthBook] = {}
        self._snapshot_tasks: dict[str, asyncio.Task[None]] = {}
        self._snapshot_slots = asyncio.Semaphore(max_snapshot_fetches)
        self._last_price: dict[str, Decimal] = {}
        self._best: dict[str, tuple[Decimal, Decimal]] = {}
        self._running = False

    @property
    def symbols_per_connection(self) -> int:
        return self.max_streams_per_connection // len(self.channels)

    def subscribe_seconds(self) -> float:
        """How long the throttled SUBSCRIBE requests of a full connection take at most."""
        beyond_url = max(0, self.max_streams_per_connection - self.url_max_streams)
        requests = -(-beyond_url // self.subscribe_chunk)
        return requests / self.control_messages_per_s + 1

    def stream_suffix(self, channel: str) -> str:
        if channel == "depth":
            return "depth@100ms" if self.depth_speed == "100ms" else "depth"
        return channel

    async def set_symbols(self, symbols: frozenset[str]) -> None:
        """Subscribe new symbols and unsubscribe dropped ones, live, shard by shard."""
        await super().set_symbols(symbols)
        wanted = {symbol.lower(): symbol for symbol in self.symbols}
        current = {symbol for shard in self.shards for symbol in shard.symbols}
        removed = current - wanted.keys()
        added = sorted(wanted.keys() - current)
        self._by_lower.update(wanted)
        sends = []
        for shard in self.shards:
            gone = shard.symbols & removed
            if gone:
                shard.symbols -= gone
                sends.append(shard.control("UNSUBSCRIBE", shard.streams(gone)))
        for symbol in removed:
            self._forget(symbol)
        for shard in [s for s in self.shards if not s.symbols]:
            await self._stop_shard(shard)
        fresh: dict[_Shard, list[str]] = {}
        for symbol in added:
            shard = next(
                (s for s in self.shards if len(s.symbols) < self.symbols_per_connection), None
            )
            if shard is None:
                shard = _Shard(self, next(self._shard_index))
                self.shards.append(shard)
                if self._running:
                    self._start_shard(shard)
            shard.symbols.add(symbol)
            fresh.setdefault(shard, []).append(symbol)
        for shard, symbols in fresh.items():
            if shard.connection.connected:
                for symbol in symbols:
                    self.restart_book(symbol)
                sends.append(shard.control("SUBSCRIBE", shard.streams(symbols)))
        # Shards have independent budgets, so their control messages go out concurrently.
        results = await asyncio.gather(*sends, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.warning("binance: (un)subscribe failed; resubscribing on reconnect: %s", result)
        for lower in removed:
            self._by_lower.pop(lower, None)

    async def run(self) -> None:
        """Run every shard's connection until cancelled."""
        self._running = True
        for shard in self.shards:
            self._start_shard(shard)
        try:
            await asyncio.Event().wait()  # shards run in their own tasks; we wait to be cancelled
        finally:
            self._running = False
            for shard in list(self.shards):
                await self._stop_shard(shard, forget=False)
            for task in self._snapshot_tasks.values():
                task.cancel()
            await asyncio.gather(*self._snapshot_tasks.values(), return_exceptions=True)
            self._snapshot_tasks.clear()
            self.stats.set_state("stopped")

    def _start_shard(self, shard: _Shard) -> None:
        shard.task = asyncio.create_task(shard.connection.run(), name=f"binance-{shard.index}")

    async def _stop_shard(self, shard: _Shard, *, forget: bool = True) -> None:
        if forget:
            self.shards.remove(shard)
        if shard.task is not None:
            shard.task.cancel()
            await asyncio.gather(shard.task, return_exceptions=True)
            shard.task = None

    def _forget(self, symbol: str) -> None:
        self._books.pop(symbol, None)
        self._last_price.pop(symbol, None)
        self._best.pop(symbol, None)
        task = self._snapshot_tasks.pop(symbol, None)
        if task is not None:
            task.cancel()

    # Order books -------------------------------------------------------------------------

    def restart_book(self, symbol: str) -> None:
        """Start (or restart) syncing ``symbol``'s book: buffer diffs and fetch a snapshot."""
        if "depth" not in self.channels:
            return
        self._books.setdefault(symbol, DepthBook()).reset()
        self._fetch_snapshot(symbol)

    def _fetch_snapshot(self, symbol: str) -> None:
        task = self._snapshot_tasks.get(symbol)
        if task is None or task.done():
            self._snapshot_tasks[symbol] = asyncio.create_task(self._snapshot_loop(symbol))

    async def _snapshot_loop(self, symbol: str) -> None:
        backoff = Backoff(base=self.backoff_base, cap=self.backoff_cap)
        while True:
            book = self._books.get(symbol)
            if book is None or book.synced:
                return
            try:
                async with self._snapshot_slots:
                    data = await fetch_depth_snapshot(
                        rest_url=self.rest_url,
                        symbol=self._by_lower.get(symbol, symbol),
                        limit=self.depth_limit,
                        request_timeout=self.rest_timeout,
                    )
                result = book.on_snapshot(data["lastUpdateId"], data["bids"], data["asks"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.errors += 1
                delay = backoff.next_delay()
                log.warning(
                    "binance: depth snapshot for %s failed (%s: %s); retry in %.2fs",
                    symbol,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            if result in ("applied", "ignored"):
                self._emit_book(symbol, utcnow())
                return
            if result == "gap":
                self._count_gap(symbol, "buffered events do not continue the snapshot")
                continue
            if result == "refetch":
                await asyncio.sleep(backoff.next_delay())
                continue
            return  # "waiting": the next diff event completes the sync

    def _count_gap(self, symbol: str, why: str) -> None:
        self.stats.gaps += 1
        log.warning("binance: order book gap for %s (%s); resyncing", symbol, why)

    def _on_depth(self, symbol: str, data: dict[str, Any]) -> None:
        book = self._books.get(symbol)
        if book is None:
            return
        was_synced = book.synced
        result = book.on_event(data)
        if book.synced and (result == "applied" or not was_synced):
            self._emit_book(symbol, from_millis(data["E"]))
        elif result == "gap":
            self._count_gap(symbol, f"event U={data['U']} after update id {book.update_id}")
            self.restart_book(symbol)
        elif result == "refetch":
            self._fetch_snapshot(symbol)

    def _emit_book(self, symbol: str, ts: datetime) -> None:
        book = self._books[symbol]
        bids, asks = book.top(self.book_levels)
        self.emit(Book(feed_symbol=self._by_lower[symbol], bids=bids, asks=asks, ts=ts))

    # Stream events -----------------------------------------------------------------------

    def on_stream_event(self, stream: str, data: dict[str, Any]) -> None:
        symbol, _, kind = stream.partition("@")
        feed_symbol = self._by_lower.get(symbol)
        if feed_symbol is None:
            return  # a late event for a symbol we just unsubscribed
        self.stats.record_message(feed_symbol)
        if kind == "trade":
            self._on_trade(symbol, feed_symbol, data)
        elif kind == "bookTicker":
            self._on_book_ticker(symbol, feed_symbol, data)
        elif kind == "miniTicker":
            price = to_decimal(data["c"])
            self._last_price[symbol] = price
            self._emit_tick(symbol, feed_symbol, price, from_millis(data["E"]))
        elif kind.startswith("depth"):
            self._on_depth(symbol, data)
        else:
            raise ValueError(f"unexpected stream {stream!r}")

    def _on_trade(self, symbol: str, feed_symbol: str, data: dict[str, Any]) -> None:
        price, size = to_decimal(data["p"]), to_decimal(data["q"])
        ts = from_millis(data["T"])
        if not isinstance(data["m"], bool):
            raise TypeError("trade 'm' must be a boolean")
        trade = Trade(
            feed_symbol=feed_symbol,
            price=price,
            size=size,
            side="sell" if data["m"] else "buy",  # buyer is maker -> the taker sold
            trade_id=str(data["t"]),
            ts=ts,
        )
        self._last_price[symbol] = price
        self.emit(trade)
        self._emit_tick(symbol, feed_symbol, price, ts)

    def _on_book_ticker(self, symbol: str, feed_symbol: str, data: dict[str, Any]) -> None:
        bid, ask = to_decimal(data["b"]), to_decimal(data["a"])
        self._best[symbol] = (bid, ask)
        price = self._last_price.get(symbol, (bid + ask) / 2)
        self._emit_tick(symbol, feed_symbol, price, utcnow())

    def _emit_tick(self, symbol: str, feed_symbol: str, price: Decimal, ts: datetime) -> None:
        bid, ask = self._best.get(symbol, (None, None))
        self.emit(Tick(feed_symbol=feed_symbol, price=price, ts=ts, bid=bid, ask=ask))

    def on_response(self, message: dict[str, Any], raw: str | bytes) -> None:
        method = self.pending.pop(message["id"], "request") if "id" in message else "request"
        error = message.get("error")
        if error is None and "code" in message:
            error = message
        if error is not None:
            self.stats.errors += 1
            log.warning("binance: %s rejected: %s", method, truncate(raw))
