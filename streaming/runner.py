"""Runs one feed for Django: maps feed symbols to instruments, coalesces, hands batches to ingest.

Used by ``manage.py runfeed`` (the real stack: one process per feed) and by ``manage.py demo``
(inside the server process on the embedded default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

from portfolio.models import Instrument, Quote
from streaming import protocol
from streaming.feeds.base import Coalescer, Feed, Tick, utcnow

log = logging.getLogger(__name__)

FeedFactory = Callable[..., Feed]


def feed_factory(kind: str) -> FeedFactory:
    """The adapter class for a feed kind; unknown kinds name the known ones."""
    from streaming.feeds.simulated import SimulatedFeed

    factories: dict[str, FeedFactory] = {"simulated": SimulatedFeed}
    try:
        return factories[kind]
    except KeyError:
        known = ", ".join(sorted(factories))
        raise ValueError(f"unknown feed {kind!r}; known feeds: {known}") from None


def _instrument_map(kind: str) -> dict[str, int]:
    rows = Instrument.objects.filter(feed=kind, active=True).values_list("feed_symbol", "id")
    return dict(rows)


def _latest_prices(kind: str) -> dict[str, Decimal]:
    rows = Quote.objects.filter(instrument__feed=kind).values_list(
        "instrument__feed_symbol", "price"
    )
    return dict(rows)


async def _default_sink(batch: list[dict[str, Any]]) -> None:
    from streaming.tasks import ingest_quotes

    # Eager (embedded) runs the task in Django's sync thread; otherwise this is broker I/O.
    await sync_to_async(ingest_quotes.delay)(batch)


class FeedRunner:
    def __init__(
        self,
        *,
        kind: str,
        window: float | None = None,
        refresh: float = 5.0,
        sink: Callable[[list[dict[str, Any]]], Any] | None = None,
        **feed_options: Any,
    ) -> None:
        self.kind = kind
        self.refresh = refresh
        self.sink = sink or _default_sink
        self.symbols: dict[str, int] = {}
        self.coalescer = Coalescer(
            window=window if window is not None else settings.LIVEFOLIO_COALESCE_MS / 1000,
            flush=self.flush,
        )
        self.feed_options = feed_options
        self.feed: Feed | None = None

    def on_tick(self, tick: Tick) -> None:
        if tick.feed_symbol in self.symbols:
            self.coalescer.add(tick)

    async def flush(self, ticks: list[Tick]) -> None:
        received = protocol.iso(utcnow())
        batch = [
            {
                "instrument": self.symbols[t.feed_symbol],
                "price": protocol.dec(t.price),
                "bid": protocol.dec(t.bid),
                "ask": protocol.dec(t.ask),
                "ts": t.ts.isoformat(),
                "received": protocol.iso(t.received) if t.received else received,
                "source": self.kind,
            }
            for t in ticks
            if t.feed_symbol in self.symbols
        ]
        if batch:
            await self.sink(batch)

    async def refresh_symbols(self) -> None:
        symbols = await sync_to_async(_instrument_map)(self.kind)
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
            await self.feed.set_symbols(frozenset(symbols))

    async def run(self) -> None:
        """Run until cancelled. Symbol changes in the admin are picked up every ``refresh`` s."""
        options = dict(self.feed_options)
        if self.kind == "simulated":
            options.setdefault("start_prices", await sync_to_async(_latest_prices)(self.kind))
        self.feed = feed_factory(self.kind)(emit=self.on_tick, **options)
        await self.refresh_symbols()
        log.info("feed %s: started", self.kind)
        tasks = [
            asyncio.create_task(self.feed.run(), name=f"feed-{self.kind}"),
            asyncio.create_task(self.coalescer.run(), name=f"coalesce-{self.kind}"),
        ]
        try:
            while True:
                await asyncio.sleep(self.refresh)
                try:
                    await self.refresh_symbols()
                except Exception:
                    log.exception(
                        "feed %s: reading instruments failed; keeping the old set", self.kind
                    )
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            log.info("feed %s: stopped", self.kind)
