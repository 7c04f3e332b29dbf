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
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import ClassVar, Literal

from streaming.orderbook import Level

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


class Feed(abc.ABC):
    """A source of ticks. Subclasses implement :meth:`run`; it must never return on its own."""

    name: ClassVar[str]

    def __init__(self, *, emit: Emit) -> None:
        self.emit = emit
        self.symbols: frozenset[str] = frozenset()
        self.stats = FeedStats(feed=getattr(self, "name", type(self).__name__))

    async def set_symbols(self, symbols: frozenset[str]) -> None:
        """Called by the runner at start and whenever instruments change in the admin."""
        self.symbols = frozenset(symbols)

    @abc.abstractmethod
    async def run(self) -> None:
        """Stream until cancelled, reconnecting with backoff on any failure."""


# How often a held window asks whether the consumer is free again (seconds), unless the consumer
# says so first (``wake``: a Celery worker's notice as its task ends, which ends nearly every
# hold). The poll is the fallback for a missed notice, one Redis round trip each: polling
# faster would cost the feed more CPU than it saves the worker.
HOLD_POLL = 0.02


class Coalescer:
    """Keeps only the newest tick per symbol and flushes them as one batch every ``window``.

    Coalescing bounds ingest work by instruments x windows, not by raw tick rate: a symbol that
    ticks 50 times in a window costs one row update and one valuation.
    """

    def __init__(
        self,
        *,
        window: float,
        flush: Callable[[list[Tick]], Awaitable[None]],
        hold: Callable[[], Awaitable[bool]] | None = None,
        max_hold: float = 1.0,
        hold_poll: float = HOLD_POLL,
        wake: Callable[[float], Awaitable[bool]] | None = None,
    ):
        if window <= 0:
            raise ValueError("coalescing window must be positive")
        if hold_poll <= 0:
            raise ValueError("hold_poll must be positive")
        self.window = window
        self._flush = flush
        # Backpressure: while ``hold()`` says the consumer is behind, windows merge (newest
        # tick per symbol) instead of queueing behind it; never longer than ``max_hold``.
        # A held window asks again every ``hold_poll`` (not every window): the batch goes out
        # as soon as the consumer is free, not up to a window later.
        self._hold = hold
        self.max_hold = max_hold
        self.hold_poll = min(hold_poll, window)
        # ``wake(seconds)``: waits at most that long for the consumer to say it is free (True),
        # so a held window goes out at once instead of at the next poll.
        self._wake = wake
        self._pending: dict[str, Tick] = {}

    def add(self, tick: Tick) -> None:
        current = self._pending.get(tick.feed_symbol)
        if current is None or tick.ts >= current.ts:
            self._pending[tick.feed_symbol] = tick

    def take(self) -> list[Tick]:
        batch, self._pending = list(self._pending.values()), {}
        return batch

    async def run(self) -> None:
        """Flush every window until cancelled, an empty window too (the flush decides what it
        is worth); a failing flush is logged, never fatal. While ``hold()`` is true the window
        stays open (up to ``max_hold``): its ticks go out, newest per symbol, once it is not."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.window)
            # By the clock: a slow check (Redis busy) must not stretch the hold past max_hold.
            held_since = loop.time()
            while loop.time() - held_since < self.max_hold:
                if not await self._holding():
                    break
                poll = min(self.hold_poll, self.max_hold - (loop.time() - held_since))
                if await self._woken(max(poll, 0.0)):
                    break
            batch = self.take()
            try:
                await self._flush(batch)
            except Exception:
                log.exception("feed: flush of %d ticks failed", len(batch))

    async def _woken(self, seconds: float) -> bool:
        if self._wake is not None:
            try:
                return await self._wake(seconds)
            except Exception:  # the poll still ends the hold
                log.warning("feed: waiting for the consumer failed; polling", exc_info=True)
        await asyncio.sleep(seconds)
        return False

    async def _holding(self) -> bool:
        if self._hold is None:
            return False
        try:
            return await self._hold()
        except Exception:  # not knowing is no reason to hold ticks back
            log.warning("feed: backpressure check failed; flushing", exc_info=True)
            return False


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Trade:
    """One executed trade, as the exchange reported it.

    ``side`` is the taker's (aggressor's) side, ``"buy"`` or ``"sell"``, normalised across
    exchanges (Coinbase reports the maker's side, Binance a buyer-is-maker flag).
    """

    feed_symbol: str
    price: Decimal
    size: Decimal
    side: Literal["buy", "sell"] | None
    trade_id: str
    ts: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.price, Decimal) or not isinstance(self.size, Decimal):
            raise TypeError("Trade.price and Trade.size must be Decimal")
        if self.ts.tzinfo is None:
            raise ValueError("Trade.ts must be timezone-aware")


@dataclass(frozen=True, slots=True)
class Book:
    """The top of a locally maintained order book after an update: best levels first."""

    feed_symbol: str
    bids: tuple[Level, ...]  # highest price first
    asks: tuple[Level, ...]  # lowest price first
    ts: datetime

    def __post_init__(self) -> None:
        if self.ts.tzinfo is None:
            raise ValueError("Book.ts must be timezone-aware")


MarketEvent = Tick | Trade | Book
# What a feed hands to the runner: every kind of market event, one call each.
Emit = Callable[[MarketEvent], None]

FeedState = Literal["connecting", "connected", "backoff", "stopped"]


@dataclass
class FeedStats:
    """Health of one feed, read by the runner and shown to operators.

    A feed with several connections (Binance shards) reports each connection's state in
    ``connections``; ``state`` is then the worst of them, so "connected" means all are.
    """

    feed: str
    state: FeedState = "stopped"
    connected_since: datetime | None = None
    last_message_at: datetime | None = None
    messages: int = 0
    reconnects: int = 0
    gaps: int = 0
    checksum_failures: int = 0
    malformed_frames: int = 0
    out_of_order: int = 0  # duplicates and late messages dropped by sequence checks
    errors: int = 0  # error replies from the exchange
    symbol_last_message: dict[str, datetime] = field(default_factory=dict)
    connections: dict[str, FeedState] = field(default_factory=dict)
    # (whole second, count) buckets for messages_per_s; a short window keeps it cheap.
    _buckets: deque[list[int]] = field(default_factory=lambda: deque(maxlen=11), repr=False)

    _SEVERITY: ClassVar[dict[str, int]] = {
        "stopped": 3,
        "backoff": 2,
        "connecting": 1,
        "connected": 0,
    }

    def record_message(self, feed_symbol: str | None = None) -> None:
        """Count one message from the exchange (and stamp its symbol, if it has one)."""
        now = utcnow()
        self.messages += 1
        self.last_message_at = now
        if feed_symbol is not None:
            self.symbol_last_message[feed_symbol] = now
        second = int(time.monotonic())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += 1
        else:
            self._buckets.append([second, 1])

    @property
    def messages_per_s(self) -> float:
        """Average message rate over the last 10 complete seconds."""
        current = int(time.monotonic())
        total = sum(n for second, n in self._buckets if current - 10 <= second < current)
        return total / 10

    def set_state(self, state: FeedState, reason: str = "", *, connection: str = "") -> None:
        """Record a state change and log it once; repeated calls with the same state are silent."""
        if connection:
            if self.connections.get(connection) == state:
                return
            self.connections[connection] = state
            if state == "stopped":
                del self.connections[connection]
            overall: FeedState = (
                max(self.connections.values(), key=self._SEVERITY.__getitem__)
                if self.connections
                else "stopped"
            )
            log.info(
                "feed %s[%s]: %s%s (feed %s)",
                self.feed,
                connection,
                state,
                f" ({reason})" if reason else "",
                overall,
            )
            self._set_overall(overall)
            return
        if state == self.state:
            return
        suffix = f" ({reason})" if reason else ""
        log.info("feed %s: %s -> %s%s", self.feed, self.state, state, suffix)
        self._set_overall(state)

    def _set_overall(self, state: FeedState) -> None:
        if state == "connected" and self.state != "connected":
            self.connected_since = utcnow()
        elif state != "connected":
            self.connected_since = None
        self.state = state

    def as_dict(self) -> dict[str, object]:
        """A JSON-friendly snapshot for the runner, the admin and the health endpoint."""
        return {
            "feed": self.feed,
            "state": self.state,
            "connected_since": self.connected_since.isoformat() if self.connected_since else None,
            "last_message_at": self.last_message_at.isoformat() if self.last_message_at else None,
            "messages": self.messages,
            "messages_per_s": self.messages_per_s,
            "reconnects": self.reconnects,
            "gaps": self.gaps,
            "checksum_failures": self.checksum_failures,
            "malformed_frames": self.malformed_frames,
            "out_of_order": self.out_of_order,
            "errors": self.errors,
            "connections": dict(self.connections),
            "symbol_last_message": {k: v.isoformat() for k, v in self.symbol_last_message.items()},
        }


class Backoff:
    """Exponential backoff with full jitter, capped, reset once a connection has been healthy.

    Full jitter (a uniform delay between 0 and the exponential ceiling) spreads reconnects of
    many clients after an exchange outage instead of having them arrive in synchronized waves.
    """

    def __init__(
        self,
        *,
        base: float = 0.5,
        cap: float = 30.0,
        healthy_after: float = 30.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.healthy_after = healthy_after
        self.attempt = 0
        self._rng = rng
        self._connected_at: float | None = None

    def ceiling(self) -> float:
        """The largest delay the next attempt may wait."""
        return min(self.cap, self.base * 2**self.attempt)

    def next_delay(self) -> float:
        """The delay before the next attempt; each call raises the ceiling until the cap."""
        if self._connected_at is not None:
            if time.monotonic() - self._connected_at >= self.healthy_after:
                self.attempt = 0
            self._connected_at = None
        delay = self._rng() * self.ceiling()
        self.attempt = min(self.attempt + 1, 62)  # 2**62 is far past any cap
        return delay

    def connected(self) -> None:
        """Note a successful connection; if it stays up ``healthy_after`` s, the backoff resets."""
        self._connected_at = time.monotonic()

    def reset(self) -> None:
        self.attempt = 0
        self._connected_at = None
