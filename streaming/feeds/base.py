"""What every market-data feed speaks: ticks out, symbols in, and a coalescing window.

A feed adapter (simulated, replay, one per exchange) is an asyncio object that connects to its
source, reconnects by itself, and calls ``emit(tick)`` for every price it sees. It knows nothing
of Django: the feed runner maps its ``feed_symbol`` strings to instruments and hands coalesced
batches to the ingest task.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import ClassVar

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Tick:
    """One observed price of one instrument on one feed, as the exchange stamped it."""

    feed_symbol: str
    price: Decimal
    ts: datetime  # exchange timestamp, timezone-aware UTC
    bid: Decimal | None = None
    ask: Decimal | None = None
    # When the feed process saw it (stamped by the runner, used for tick->client latency).
    received: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.price, Decimal):
            raise TypeError(f"Tick.price must be Decimal, got {type(self.price).__name__}")
        if self.ts.tzinfo is None:
            raise ValueError("Tick.ts must be timezone-aware")


Emit = Callable[[Tick], None]


class Feed(abc.ABC):
    """A source of ticks. Subclasses implement :meth:`run`; it must never return on its own."""

    name: ClassVar[str]

    def __init__(self, *, emit: Emit) -> None:
        self.emit = emit
        self.symbols: frozenset[str] = frozenset()

    async def set_symbols(self, symbols: frozenset[str]) -> None:
        """Called by the runner at start and whenever instruments change in the admin."""
        self.symbols = frozenset(symbols)

    @abc.abstractmethod
    async def run(self) -> None:
        """Stream until cancelled, reconnecting with backoff on any failure."""


class Coalescer:
    """Keeps only the newest tick per symbol and flushes them as one batch every ``window``.

    Coalescing bounds ingest work by instruments x windows, not by raw tick rate: a symbol that
    ticks 50 times in a window costs one row update and one valuation.
    """

    def __init__(self, *, window: float, flush: Callable[[list[Tick]], Awaitable[None]]):
        if window <= 0:
            raise ValueError("coalescing window must be positive")
        self.window = window
        self._flush = flush
        self._pending: dict[str, Tick] = {}

    def add(self, tick: Tick) -> None:
        current = self._pending.get(tick.feed_symbol)
        if current is None or tick.ts >= current.ts:
            self._pending[tick.feed_symbol] = tick

    def take(self) -> list[Tick]:
        batch, self._pending = list(self._pending.values()), {}
        return batch

    async def run(self) -> None:
        """Flush every window until cancelled; a failing flush is logged, never fatal."""
        while True:
            await asyncio.sleep(self.window)
            batch = self.take()
            if not batch:
                continue
            try:
                await self._flush(batch)
            except Exception:
                log.exception("feed: flush of %d ticks failed", len(batch))


def utcnow() -> datetime:
    return datetime.now(UTC)
