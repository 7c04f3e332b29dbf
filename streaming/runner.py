"""Runs one feed for Django: maps feed symbols to instruments, hands ticks on to ingest.

Ticks go to the ingest mailbox (streaming/mailbox.py) as they come, the newest per instrument
of those that came while the previous post was on its way; a Celery worker stores, values and
publishes them. Trades and order books are market data that nothing stores in the database: they
are published straight to the instrument's group, never waiting for the ingest path. Every
trade and every change of a book (a diff with its checksum, streaming/orderbook.py) goes out as
soon as it arrives; the complete top of each book goes out conflated, at most once per
``LIVEFOLIO_BOOK_INTERVAL_MS``.

Used by ``manage.py runfeed`` (the real stack: one process per feed) and by ``manage.py demo``
(inside the server process on the embedded default).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings

from portfolio import services, wire
from portfolio.models import AssetClass, Instrument, Quote
from streaming import events, mailbox, marketdata, protocol
from streaming.feeds.base import Backoff, Book, Coalescer, Feed, MarketEvent, Tick, Trade, utcnow
from streaming.orderbook import LevelBook

log = logging.getLogger(__name__)

FEEDS = ("simulated", "replay", "binance", "coinbase", "kraken", "ccxt")
# The longest wait between two tries of a database call that keeps failing (seconds).
DATABASE_RETRY_CAP = 30.0
# Tries to hand on ticks while the broker refuses them: the first after up to SEND_RETRY_BASE,
# doubling to SEND_RETRY_CAP (seconds), full jitter.
SEND_RETRY_BASE = 0.5
SEND_RETRY_CAP = 5.0


def build_feed(kind: str, *, emit: Callable[[MarketEvent], None], **options: Any) -> Feed:
    """The adapter for a feed kind, configured from settings; options override them."""
    if kind == "simulated":
        from streaming.feeds.simulated import SimulatedFeed

        return SimulatedFeed(emit=emit, **options)
    if kind == "replay":
        from streaming.feeds.replay import ReplayFeed

        return ReplayFeed(emit=emit, **options)
    if kind == "binance":
        from streaming.feeds.binance import BinanceFeed

        options.setdefault("url", settings.BINANCE_WS_URL)
        options.setdefault("rest_url", settings.BINANCE_REST_URL)
        options.setdefault("channels", tuple(settings.BINANCE_CHANNELS))
        return BinanceFeed(emit=emit, **options)
    if kind == "coinbase":
        from streaming.feeds.coinbase import CoinbaseFeed

        options.setdefault("url", settings.COINBASE_WS_URL)
        return CoinbaseFeed(emit=emit, **options)
    if kind == "kraken":
        from streaming.feeds.kraken import KrakenFeed

        options.setdefault("url", settings.KRAKEN_WS_URL)
        return KrakenFeed(emit=emit, **options)
    if kind == "ccxt":
        from streaming.feeds.ccxt_exchange import CcxtFeed

        if not options.get("exchange"):
            raise ValueError("the ccxt feed needs an exchange id (runfeed ccxt --exchange okx)")
        options.setdefault("urls", settings.LIVEFOLIO_CCXT_URLS.get(options["exchange"], {}))
        return CcxtFeed(emit=emit, **options)
    raise ValueError(f"unknown feed {kind!r}; known feeds: {', '.join(FEEDS)}")


@dataclass(frozen=True, slots=True)
class Target:
    """The instrument a feed symbol stands for."""

    instrument_id: int
    symbol: str
    crypto: bool = False  # the simulated feed can run an order book for it


def _instruments(kind: str, exchange: str):
    """The active instruments a feed process streams (ccxt: those on its exchange)."""
    rows = Instrument.objects.filter(feed=kind, active=True)
    return rows.filter(exchange=exchange) if kind == "ccxt" else rows


def _instrument_map(kind: str, exchange: str = "") -> dict[str, Target]:
    rows = _instruments(kind, exchange).values_list("feed_symbol", "id", "symbol", "asset_class")
    return {
        feed_symbol: Target(pk, symbol, asset_class == AssetClass.CRYPTO)
        for feed_symbol, pk, symbol, asset_class in rows
    }


def _levels(pairs: list[list[str]]) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(price), Decimal(size)) for price, size in pairs]


def _latest_prices(kind: str) -> dict[str, Decimal]:
    rows = Quote.objects.filter(instrument__feed=kind).values_list(
        "instrument__feed_symbol", "price"
    )
    return dict(rows)


async def _ingest_in_process(batch: list[dict[str, Any]]) -> None:
    """The embedded default's ingest (no broker, no Redis): the task, in Django's sync thread."""
    from streaming.tasks import ingest_quotes

    await sync_to_async(ingest_quotes)(batch)


async def cancel_and_wait(tasks: list[asyncio.Task], *, again_every: float = 0.5) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again what still runs.

    A cancellation can be lost: asgiref's ``sync_to_async`` waits for its thread and returns
    the result when the call was already running, and Python 3.11's ``asyncio.wait_for``
    returns a result that completed as it was cancelled. A task that loops around such a call
    would run on, and awaiting it once would hang the feed's shutdown (seen: killed after 10 s).
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_every)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.warning("feed: %s ended with %r", task.get_name(), task.exception())


class DatabaseRetry:
    """When to try a failing database call of the feed again, and what to log.

    The calls themselves go through ``database_sync_to_async``, which applies Django's request
    rules around each: a connection a failed statement left broken (a PostgreSQL restart) is
    closed and the next call opens a new one, and a kept connection is checked before reuse
    (CONN_HEALTH_CHECKS); plain ``sync_to_async`` would keep a connection broken outside a
    transaction, and every later call on it would fail. Tries are spaced by a backoff with
    full jitter (``base`` doubling to ``DATABASE_RETRY_CAP``), so many feeds do not reconnect
    in step; the first failure logs its traceback, the next ones a line each, and the first
    success after them says the database is back.
    """

    def __init__(self, feed: str, what: str, *, base: float) -> None:
        self.feed = feed
        self.what = what
        self.backoff = Backoff(base=base, cap=max(base, DATABASE_RETRY_CAP))
        self.failures = 0

    def failed(self, consequence: str = "") -> float:
        """Log the failure being handled; returns the seconds to wait before the next try."""
        delay = self.backoff.next_delay()
        self.failures += 1
        then = f"{'; ' + consequence if consequence else ''}; trying again in {delay:.1f} s"
        if self.failures == 1:
            log.exception("feed %s: %s failed%s", self.feed, self.what, then)
        else:
            error = sys.exception()
            log.warning(
                "feed %s: %s failed (%d in a row: %s)%s",
                self.feed,
                self.what,
                self.failures,
                f"{type(error).__name__}: {error}".splitlines()[0],
                then,
            )
        return delay

    def succeeded(self) -> None:
        if self.failures:
            log.info(
                "feed %s: %s works again after %d failures", self.feed, self.what, self.failures
            )
        self.failures = 0
        self.backoff.reset()


class FeedRunner:
    def __init__(
        self,
        *,
        kind: str,
        refresh: float = 5.0,
        sink: Callable[[list[dict[str, Any]]], Any] | None = None,
        order_books: bool = False,
        exchange: str = "",
        **feed_options: Any,
    ) -> None:
        if kind not in FEEDS:
            raise ValueError(f"unknown feed {kind!r}; known feeds: {', '.join(FEEDS)}")
        if order_books and kind != "simulated":
            raise ValueError("order_books: only the simulated feed simulates order books")
        # Simulated: crypto instruments trade in a simulated market with an order book.
        self.order_books = order_books
        if (kind == "ccxt") != bool(exchange):
            raise ValueError("an exchange id goes with the ccxt feed, and only with it")
        self.kind = kind
        self.exchange = exchange
        self.markets_recorded: list[str] | None = None
        self.refresh = refresh
        eager = settings.CELERY_TASK_ALWAYS_EAGER  # the embedded default: no broker, no Redis
        self.sink = sink or (_ingest_in_process if eager else mailbox.post)
        self.symbols: dict[str, Target] = {}
        self.coalescer = Coalescer(flush=self.flush)
        self.book_interval = settings.LIVEFOLIO_BOOK_INTERVAL_MS / 1000
        # Trades and book reports in arrival order, published at once (every one of them).
        self.live: list[Trade | Book] = []
        self.live_waiting = asyncio.Event()  # set when one arrives
        self.books: dict[str, Book] = {}  # the newest book per symbol, for the conflated view
        self.level_books: dict[str, LevelBook] = {}  # what the diffs so far add up to
        self.trade_seqs: dict[str, int] = {}  # the last trade_seq given, per feed symbol
        self.feed_options = feed_options
        self.feed: Feed | None = None
        self.clock = time.monotonic
        # Set by stop(): the run ends even if a cancellation is lost (see cancel_and_wait).
        self.stopping = False
        # Ticks a failed send left (the broker down), the newest per feed symbol, so at most
        # one per instrument of this feed: they go with the first send that works, older
        # ticks of the same instrument giving way to newer ones meanwhile.
        self.unsent: dict[str, Tick] = {}
        self.send_retry = Backoff(base=SEND_RETRY_BASE, cap=SEND_RETRY_CAP)
        self.send_retry_at = 0.0  # clock time before which no send is tried
        self.send_failures = 0

    def on_event(self, event: MarketEvent) -> None:
        if event.feed_symbol not in self.symbols:
            return
        if isinstance(event, Tick):
            self.coalescer.add(event)
        elif isinstance(event, Trade):
            self.live.append(event)
            self.live_waiting.set()
        elif isinstance(event, Book):
            self.books[event.feed_symbol] = event  # only the newest book per interval matters
            self.live.append(event)  # and every change, as a diff
            self.live_waiting.set()

    async def flush(self, ticks: list[Tick]) -> None:
        """Hand ticks on to ingest (with any a failed send left). When the send fails they are
        kept, newest per instrument, and tried again after a backoff."""
        stamped = utcnow()
        if self.unsent:
            ticks = self._with_unsent(ticks)
        now = self.clock()
        if now < self.send_retry_at:
            self._keep_unsent(ticks, stamped)
            return
        received = wire.iso(stamped)
        batch = [
            {
                "instrument": self.symbols[t.feed_symbol].instrument_id,
                "price": wire.dec(t.price),
                "bid": wire.dec(t.bid),
                "ask": wire.dec(t.ask),
                "ts": t.ts.isoformat(),
                "received": wire.iso(t.received) if t.received else received,
                "source": self.kind,
            }
            for t in ticks
            if t.feed_symbol in self.symbols
        ]
        if not batch:
            return
        try:
            await self.sink(batch)
        except Exception:
            self._keep_unsent(ticks, stamped)
            delay = self.send_retry.next_delay()
            self.send_retry_at = self.clock() + delay
            # The kept ticks go with the next flush: one comes then, ticks or not.
            asyncio.get_running_loop().call_later(delay, self.coalescer.wake)
            self.send_failures += 1
            kept = (
                f"keeping the newest of {len(self.unsent)} instruments, next try in {delay:.1f} s"
            )
            if self.send_failures == 1:
                log.exception("feed %s: sending %d ticks failed; %s", self.kind, len(batch), kept)
            else:
                error = sys.exception()
                log.warning(
                    "feed %s: sending failed (%d in a row: %s); %s",
                    self.kind,
                    self.send_failures,
                    f"{type(error).__name__}: {error}".splitlines()[0],
                    kept,
                )
            return
        if self.send_failures:
            log.info(
                "feed %s: sending works again after %d failures (%d ticks sent)",
                self.kind,
                self.send_failures,
                len(batch),
            )
            self.send_failures = 0
            self.send_retry.reset()

    def _with_unsent(self, ticks: list[Tick]) -> list[Tick]:
        """``ticks`` with the unsent ones of other instruments, and an unsent one in place of
        a tick it is newer than; the unsent set is empty after."""
        merged, self.unsent = self.unsent, {}
        for tick in ticks:
            kept = merged.get(tick.feed_symbol)
            if kept is None or tick.ts >= kept.ts:
                merged[tick.feed_symbol] = tick
        return list(merged.values())

    def _keep_unsent(self, ticks: list[Tick], stamped: datetime) -> None:
        """Keep ``ticks`` for the next send, newest per instrument, each stamped with when the
        runner first had it (the lag it reports includes the wait). Instruments no longer
        streamed are dropped."""
        for tick in ticks:
            if tick.feed_symbol not in self.symbols:
                continue
            kept = self.unsent.get(tick.feed_symbol)
            if kept is None or tick.ts >= kept.ts:
                if tick.received is None:
                    tick = dataclasses.replace(tick, received=stamped)
                self.unsent[tick.feed_symbol] = tick

    async def live_messages(self, live: list[Trade | Book]) -> list[tuple[str, dict[str, Any]]]:
        """Every trade and every book change (a ``book_diff``), in arrival order, kept in the
        market-data cache for snapshots (recent trades; each book as of its last diff) in one
        round trip; returns the messages to publish. On the loop, no thread: a trade waits for
        nothing else the process does (the Celery send, health writes)."""
        messages, trades, levels = [], [], {}
        for event in live:
            target = self.symbols.get(event.feed_symbol)
            if not target:
                continue
            if isinstance(event, Trade):
                payload = protocol.trade(
                    instrument_id=target.instrument_id,
                    symbol=target.symbol,
                    price=event.price,
                    size=event.size,
                    side=event.side,
                    trade_id=event.trade_id,
                    exchange_ts=event.ts,
                    trade_seq=await self._next_trade_seq(event.feed_symbol, target),
                )
                trades.append(payload)
            else:
                payload = await self._book_diff(event, target)
                if payload is None:
                    continue  # the report changed nothing
                levels[target.instrument_id] = (event, target)
            messages.append((events.instrument_group(target.instrument_id), payload))
        await marketdata.arecord_live(
            trades=trades,
            levels=[self._book_levels(event, target) for event, target in levels.values()],
        )
        return messages

    async def _next_trade_seq(self, feed_symbol: str, target: Target) -> int:
        seq = self.trade_seqs.get(feed_symbol)
        if seq is None:
            # Numbered on from the cached recent trades: a restarted feed repeats no number.
            seq = await marketdata.alast_trade_seq(target.instrument_id)
        self.trade_seqs[feed_symbol] = seq + 1
        return seq + 1

    async def _book_diff(self, book: Book, target: Target) -> dict[str, Any] | None:
        level_book = self.level_books.get(book.feed_symbol)
        if level_book is None:
            # Numbered on from, and diffed against, the cached book clients hold: a restarted
            # feed never repeats a book_seq and its first diff applies to their snapshot.
            level_book = LevelBook()
            cached = await marketdata.alatest_book_levels(target.instrument_id)
            if cached:
                level_book.seq = cached["book_seq"]
                level_book.update_to(_levels(cached["bids"]), _levels(cached["asks"]))
                level_book.seq = cached["book_seq"]
            self.level_books[book.feed_symbol] = level_book
        bids, asks = level_book.update_to(book.bids, book.asks)
        if not bids and not asks:
            return None
        return protocol.book_diff(
            instrument_id=target.instrument_id,
            symbol=target.symbol,
            book_seq=level_book.seq,
            bids=bids,
            asks=asks,
            checksum=level_book.checksum(),
            exchange_ts=book.ts,
        )

    def _book_levels(self, book: Book, target: Target) -> dict[str, Any]:
        level_book = self.level_books[book.feed_symbol]
        return protocol.book_levels(
            instrument_id=target.instrument_id,
            symbol=target.symbol,
            book_seq=level_book.seq,
            bids=list(level_book.bids.items()),
            asks=list(level_book.asks.items()),
            checksum=level_book.checksum(),
            exchange_ts=book.ts,
        )

    def market_messages(self, books: dict[str, Book]) -> list[tuple[str, dict[str, Any]]]:
        """Books (the newest per instrument), kept in the market-data cache for snapshots;
        returns the messages to publish."""
        messages = []
        for b in books.values():
            target = self.symbols.get(b.feed_symbol)
            if target:
                payload = marketdata.book_store(
                    instrument_id=target.instrument_id,
                    symbol=target.symbol,
                    bids=list(b.bids),
                    asks=list(b.asks),
                    exchange_ts=b.ts,
                )
                messages.append((events.instrument_group(target.instrument_id), payload))
        return messages

    async def publish_live(self) -> None:
        """Every trade and book change as soon as it arrives, never held for the books'
        interval; what arrives while one publish is under way goes out together in the next."""
        while True:
            await self.live_waiting.wait()
            self.live_waiting.clear()
            # Taken here, on the loop, so nothing arriving meanwhile is lost.
            live, self.live = self.live, []
            try:
                messages = await self.live_messages(live)
            except Exception:
                log.exception("feed %s: caching trades and book diffs failed", self.kind)
                continue
            await self._send(messages)

    async def publish_books(self) -> None:
        """The newest book per instrument, at most once per ``LIVEFOLIO_BOOK_INTERVAL_MS``."""
        while True:
            await asyncio.sleep(self.book_interval)
            if not self.books:
                continue
            books, self.books = self.books, {}
            try:
                messages = await sync_to_async(self.market_messages)(books)
            except Exception:
                log.exception("feed %s: caching market data failed", self.kind)
                continue
            await self._send(messages)

    async def _send(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        if messages:
            try:
                await events.apublish(messages)
            except Exception:
                log.exception(
                    "feed %s: publishing %d market messages failed", self.kind, len(messages)
                )

    def record_status(self) -> None:
        """Write this process's health row; a ccxt feed's market list when it changed."""
        markets = getattr(self.feed, "listed_markets", None) or None  # a ccxt feed's
        if markets == self.markets_recorded:
            markets = None
        services.feed_status_record(stats=self.feed.stats.as_dict(), markets=markets)
        if markets is not None:
            self.markets_recorded = markets

    async def record_health(self) -> None:
        """Write the feed's health row every LIVEFOLIO_FEED_HEARTBEAT_SECONDS; while the database
        fails, try again after a backoff with full jitter."""
        beat = settings.LIVEFOLIO_FEED_HEARTBEAT_SECONDS
        retry = DatabaseRetry(self.kind, "writing feed health", base=beat)
        while True:
            try:
                await database_sync_to_async(self.record_status)()
            except Exception:
                await asyncio.sleep(retry.failed())
            else:
                retry.succeeded()
                await asyncio.sleep(beat)

    async def refresh_symbols(self) -> None:
        symbols = await database_sync_to_async(_instrument_map)(self.kind, self.exchange)
        if symbols != self.symbols:
            added = set(symbols) - set(self.symbols)
            removed = set(self.symbols) - set(symbols)
            log.info(
                "feed %s: %d instruments (+%d -%d)",
                self.kind,
                len(symbols),
                len(added),
                len(removed),
            )
            self.symbols = symbols
            if self.order_books:
                books = frozenset(s for s, target in symbols.items() if target.crypto)
                await self.feed.set_order_books(books)
            await self.feed.set_symbols(frozenset(symbols))

    async def run(self) -> None:
        """Run until cancelled. Symbol changes in the admin are picked up every ``refresh`` s."""
        options = dict(self.feed_options)
        if self.exchange:
            options["exchange"] = self.exchange
        if self.kind == "simulated":
            prices = await database_sync_to_async(_latest_prices)(self.kind)
            options.setdefault("start_prices", prices)
        self.feed = build_feed(self.kind, emit=self.on_event, **options)
        await self.refresh_symbols()
        log.info("feed %s: started", self.kind)
        tasks = [
            asyncio.create_task(self.feed.run(), name=f"feed-{self.kind}"),
            asyncio.create_task(self.coalescer.run(), name=f"coalesce-{self.kind}"),
            asyncio.create_task(self.publish_live(), name=f"live-{self.kind}"),
            asyncio.create_task(self.publish_books(), name=f"books-{self.kind}"),
            asyncio.create_task(self.record_health(), name=f"health-{self.kind}"),
        ]
        retry = DatabaseRetry(self.kind, "reading instruments", base=self.refresh)
        wait = self.refresh
        try:
            while not self.stopping:
                await asyncio.sleep(wait)
                for task in tasks:
                    if task.done() and not task.cancelled() and task.exception():
                        raise task.exception()
                try:
                    await self.refresh_symbols()
                except Exception:
                    wait = retry.failed("keeping the old set")
                else:
                    retry.succeeded()
                    wait = self.refresh
        finally:
            await cancel_and_wait(tasks)
            await self.settle()
            with contextlib.suppress(Exception):
                await database_sync_to_async(self.record_status)()
            log.info("feed %s: stopped", self.kind)

    def stop(self, task: asyncio.Task) -> None:
        """End ``task``, the one running :meth:`run` (a signal handler's call)."""
        self.stopping = True
        task.cancel()

    async def settle(self) -> None:
        """On the way out: hand on the last ticks, so no price waits for a feed that has gone."""
        try:
            await self.flush(self.coalescer.take())
        except Exception:
            log.exception("feed %s: handing on the last ticks failed", self.kind)
