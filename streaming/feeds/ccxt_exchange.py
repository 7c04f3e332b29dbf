"""Any exchange ccxt supports, over ccxt's async WebSocket API (``ccxt.pro``).

ccxt (MIT, https://github.com/ccxt/ccxt) speaks each exchange's own protocol: its market list
(a REST call at start), subscriptions, pings, and its order-book rules (snapshots, sequence
numbers, checksums). This adapter turns its unified structures into the runner's ticks, trades
and books, and owns what Livefolio owns for every feed: the health it reports, a data-stall
watchdog, and reconnects with capped full-jitter backoff.

Per symbol, one watcher per channel loops on ``watch_ticker``, ``watch_trades`` or
``watch_order_book``. ccxt opens the exchange's socket on the first watch and again on the next
watch after it dropped; a watch that fails waits out this feed's backoff before it asks again.
ccxt reports numbers as floats parsed from the exchange's decimal strings; ``str(float)`` is the
shortest text that reads back as the same float, which is that decimal string whenever it has at
most 15 significant digits (every price and size an exchange quotes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import ccxt
import ccxt.pro

from .base import Backoff, Book, Emit, Feed, Level, Tick, Trade, utcnow
from .values import from_millis

log = logging.getLogger(__name__)

CHANNELS = ("ticker", "trades", "book")
# ccxt's call that ends a channel's subscription on the exchange, and the ``has`` key saying
# whether this exchange implements it.
UNWATCH = {
    "ticker": ("un_watch_ticker", "unWatchTicker"),
    "trades": ("un_watch_trades", "unWatchTrades"),
    "book": ("un_watch_order_book", "unWatchOrderBook"),
}


def exchange_ids() -> list[str]:
    """The exchanges ccxt streams from: those with a WebSocket implementation in ccxt.pro."""
    return list(ccxt.pro.exchanges)


def to_decimal(value: Any) -> Decimal:
    """A ccxt number as a Decimal (see the module docstring); refuses a missing or non-finite
    value."""
    if value is None or isinstance(value, bool):
        raise TypeError(f"expected a number, got {value!r}")
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    if not number.is_finite():
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def _optional_decimal(value: Any) -> Decimal | None:
    return None if value is None else to_decimal(value)


def _when(millis: Any) -> datetime:
    return from_millis(millis) if isinstance(millis, int) and millis > 0 else utcnow()


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def make_exchange(exchange: str, *, urls: dict[str, Any], timeout: float) -> Any:
    """A ``ccxt.pro`` exchange instance, its endpoints overridden by ``urls`` (merged into
    ccxt's own); raises ValueError for an id ccxt.pro does not know."""
    if exchange not in ccxt.pro.exchanges:
        raise ValueError(f"unknown ccxt exchange {exchange!r} (not in ccxt.pro.exchanges)")
    cls = getattr(ccxt.pro, exchange)
    merged = _deep_merge(cls().describe()["urls"], urls) if urls else None
    config: dict[str, Any] = {"enableRateLimit": True, "timeout": int(timeout * 1000)}
    if merged is not None:
        config["urls"] = merged
    return cls(config)


class CcxtFeed(Feed):
    """Ticks, trades and order books from one exchange through ccxt.

    Emits, per subscribed symbol (a ccxt market symbol such as ``BTC/USDT``):

    - ``ticker`` -> a :class:`Tick` at the ticker's last price with its best bid/ask;
    - ``trades`` -> a :class:`Trade` for each new trade and a :class:`Tick` at its price;
    - ``book`` -> a :class:`Book` (top ``book_levels``) after every book update ccxt applied.

    ccxt checks the exchange's sequence numbers and checksums; a gap (``InvalidNonce``) or a
    checksum mismatch (``ChecksumError``) is counted in the feed's health and the next watch
    starts the book again from a snapshot.
    """

    def __init__(
        self,
        *,
        emit: Emit,
        exchange: str,
        urls: dict[str, Any] | None = None,
        channels: Sequence[str] = CHANNELS,
        book_levels: int = 10,
        stall_timeout: float = 30.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        request_timeout: float = 10.0,
        exchange_factory: Callable[[], Any] | None = None,
    ) -> None:
        """
        Args:
            exchange: a ccxt exchange id (``ccxt.pro.exchanges``), e.g. ``okx``.
            urls: merged into the exchange's ccxt ``urls`` (REST and WebSocket endpoints).
            channels: any of ``ticker``, ``trades``, ``book``.
            stall_timeout: reconnect after this long without market data while subscribed.
            request_timeout: bound on each REST call (the market list) and on closing sockets.
        """
        self.name = f"ccxt:{exchange}"
        super().__init__(emit=emit)
        unknown = set(channels) - set(CHANNELS)
        if unknown:
            raise ValueError(f"unknown ccxt channels {sorted(unknown)}; known: {CHANNELS}")
        if stall_timeout <= 0:
            raise ValueError("stall_timeout must be positive")
        self.exchange_id = exchange
        self.channels = tuple(channels)
        self.book_levels = book_levels
        self.stall_timeout = stall_timeout
        self.request_timeout = request_timeout
        self.backoff = Backoff(base=backoff_base, cap=backoff_cap)
        self._factory = exchange_factory or (
            lambda: make_exchange(exchange, urls=urls or {}, timeout=request_timeout)
        )
        if exchange_factory is None and exchange not in ccxt.pro.exchanges:
            raise ValueError(f"unknown ccxt exchange {exchange!r} (not in ccxt.pro.exchanges)")
        self.exchange: Any = None
        self.listed_markets: list[str] = []  # the exchange's market symbols, once loaded
        self._watchers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._best: dict[str, tuple[Decimal | None, Decimal | None]] = {}
        self._last_data = time.monotonic()
        self._lost = False  # the connection failed and no data has come since
        self._ready = asyncio.Event()  # markets loaded: watchers may start

    # -- symbols -------------------------------------------------------------------------

    async def set_symbols(self, symbols: frozenset[str]) -> None:
        """Start and stop watchers to follow the admin's instruments."""
        before = self.symbols
        await super().set_symbols(symbols)
        if not before and self.symbols:
            self._last_data = time.monotonic()  # the stall clock starts with the first symbol
        if self._ready.is_set():
            await self._sync_watchers()

    def _wanted(self) -> set[tuple[str, str]]:
        markets = set(self.listed_markets)
        wanted = set()
        for symbol in self.symbols:
            if symbol not in markets:
                continue  # logged once by _sync_watchers
            wanted.update((symbol, channel) for channel in self.channels)
        return wanted

    async def _sync_watchers(self) -> None:
        missing = sorted(s for s in self.symbols if s not in set(self.listed_markets))
        for symbol in missing:
            if not any(key[0] == symbol for key in self._watchers):
                log.warning(
                    "feed %s: %s is not a market on %s", self.name, symbol, self.exchange_id
                )
        wanted = self._wanted()
        for key in set(self._watchers) - wanted:
            task = self._watchers.pop(key)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await self._unsubscribe(*key)
        for key in wanted - set(self._watchers):
            symbol, channel = key
            self._watchers[key] = asyncio.create_task(
                self._watch(symbol, channel), name=f"{self.name}-{channel}-{symbol}"
            )
        if not self._watchers:
            self.stats.set_state("stopped", "no symbols")
        elif self.stats.state == "stopped":
            self.stats.set_state("connecting")

    async def _unsubscribe(self, symbol: str, channel: str) -> None:
        """Tell the exchange to stop sending a channel nobody watches any more, where ccxt can
        (otherwise its frames keep coming and are dropped until the next reconnect)."""
        method, capability = UNWATCH[channel]
        if not self.exchange.has.get(capability):
            return
        try:
            async with asyncio.timeout(self.request_timeout):
                await getattr(self.exchange, method)(symbol)
        except (ccxt.BaseError, TimeoutError, OSError) as exc:
            log.info("feed %s: unsubscribing %s %s failed (%s)", self.name, symbol, channel, exc)

    async def _stop_watchers(self) -> None:
        tasks = list(self._watchers.values())
        self._watchers.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Load the markets (retrying with backoff), then watch until cancelled."""
        self.exchange = self._factory()
        try:
            await self._load_markets()
            self._ready.set()
            await self._sync_watchers()
            await self._watchdog()
        finally:
            self._ready.clear()
            await self._stop_watchers()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.request_timeout):
                    await self.exchange.close()
            self.stats.set_state("stopped")

    async def _load_markets(self) -> None:
        while True:
            self.stats.set_state("connecting", "loading markets")
            try:
                async with asyncio.timeout(self.request_timeout * 2):
                    markets = await self.exchange.load_markets()
            except (ccxt.BaseError, TimeoutError, OSError) as exc:
                self.stats.errors += 1
                delay = self.backoff.next_delay()
                self.stats.set_state(
                    "backoff",
                    f"loading markets: {type(exc).__name__}: {exc}; retry in {delay:.2f}s",
                )
                await asyncio.sleep(delay)
                continue
            self.listed_markets = sorted(markets)
            self.backoff.reset()
            log.info("feed %s: %d markets", self.name, len(self.listed_markets))
            return

    async def _watchdog(self) -> None:
        """Close the exchange's sockets when subscribed symbols bring no data for
        ``stall_timeout``: every watcher then reconnects and resubscribes."""
        check_every = min(1.0, self.stall_timeout / 4)
        while True:
            await asyncio.sleep(check_every)
            quiet = time.monotonic() - self._last_data
            if not self._watchers or quiet <= self.stall_timeout:
                continue
            self.stats.reconnects += 1
            self._lost = True
            self.stats.set_state("backoff", f"stalled: nothing for {quiet:.1f}s; reconnecting")
            await self._stop_watchers()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.request_timeout):
                    await self.exchange.close_ws_clients()
            await asyncio.sleep(self.backoff.next_delay())
            self._last_data = time.monotonic()
            self.stats.set_state("connecting", "after a stall")
            await self._sync_watchers()

    async def _watch(self, symbol: str, channel: str) -> None:
        while True:
            try:
                if channel == "ticker":
                    self._on_ticker(symbol, await self.exchange.watch_ticker(symbol))
                elif channel == "trades":
                    self._on_trades(symbol, await self.exchange.watch_trades(symbol))
                else:
                    self._on_book(symbol, await self.exchange.watch_order_book(symbol))
            except asyncio.CancelledError:
                raise
            except ccxt.ChecksumError as exc:
                self.stats.checksum_failures += 1
                log.warning("feed %s: %s book checksum mismatch (%s)", self.name, symbol, exc)
            except ccxt.InvalidNonce as exc:
                self.stats.gaps += 1
                log.warning("feed %s: %s book sequence gap (%s)", self.name, symbol, exc)
            except ccxt.NetworkError as exc:
                self._connection_failed(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(self.backoff.next_delay())
            except ccxt.BadSymbol as exc:
                self.stats.errors += 1
                log.warning("feed %s: %s refused (%s); not watching it", self.name, symbol, exc)
                return
            except ccxt.BaseError as exc:
                self.stats.errors += 1
                log.warning("feed %s: %s %s: %s", self.name, symbol, channel, exc)
                await asyncio.sleep(self.backoff.next_delay())
            except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
                self.stats.malformed_frames += 1
                log.warning("feed %s: unusable %s for %s (%s)", self.name, channel, symbol, exc)

    def _connection_failed(self, reason: str) -> None:
        if not self._lost:
            self._lost = True
            self.stats.reconnects += 1
        self.stats.set_state("backoff", reason)

    def _data(self, symbol: str) -> None:
        self._last_data = time.monotonic()
        if self._lost or self.stats.state != "connected":
            self._lost = False
            self.backoff.connected()
            self.stats.set_state("connected")
        self.stats.record_message(symbol)

    # -- ccxt's unified structures -> the runner's events ------------------------------------

    def _on_ticker(self, symbol: str, ticker: dict[str, Any]) -> None:
        self._data(symbol)
        bid, ask = _optional_decimal(ticker.get("bid")), _optional_decimal(ticker.get("ask"))
        if bid is not None and ask is not None and bid > ask:
            bid = ask = None  # a crossed quote is no quote
        self._best[symbol] = (bid, ask)
        last = ticker.get("last")
        if last is None:
            if bid is None or ask is None:
                return
            price = (bid + ask) / 2
        else:
            price = to_decimal(last)
        self.emit(
            Tick(
                feed_symbol=symbol, price=price, ts=_when(ticker.get("timestamp")), bid=bid, ask=ask
            )
        )

    def _on_trades(self, symbol: str, trades: list[dict[str, Any]]) -> None:
        self._data(symbol)
        for raw in trades:
            side = raw.get("side")
            trade = Trade(
                feed_symbol=symbol,
                price=to_decimal(raw["price"]),
                size=to_decimal(raw["amount"]),
                side=side if side in ("buy", "sell") else None,
                trade_id=str(raw.get("id") or ""),
                ts=_when(raw.get("timestamp")),
            )
            self.emit(trade)
            bid, ask = self._best.get(symbol, (None, None))
            self.emit(Tick(feed_symbol=symbol, price=trade.price, ts=trade.ts, bid=bid, ask=ask))

    def _on_book(self, symbol: str, book: dict[str, Any]) -> None:
        self._data(symbol)
        self.emit(
            Book(
                feed_symbol=symbol,
                bids=self._levels(book["bids"]),
                asks=self._levels(book["asks"]),
                ts=_when(book.get("timestamp")),
            )
        )

    def _levels(self, side: Sequence[Sequence[Any]]) -> tuple[Level, ...]:
        return tuple((to_decimal(p), to_decimal(q)) for p, q, *_ in side[: self.book_levels])
