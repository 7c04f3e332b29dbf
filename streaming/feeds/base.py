"""What every market-data feed speaks: ticks out, symbols in, and the newest tick per symbol.

A feed adapter (simulated, replay, one per exchange) is an asyncio object that connects to its
source, reconnects by itself, and calls ``emit(tick)`` for every price it sees. It knows nothing
of Django: the feed runner maps its ``feed_symbol`` strings to instruments and hands the newest
tick of each to ingest.
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


class Coalescer:
    """Keeps only the newest tick per symbol and hands them on as soon as it can: one flush at
    a time, and the ticks that arrive while one is on its way go out together in the next.

    No window to wait for: a lone tick goes out at once, and a busy consumer (a slow flush)
    gets one tick per symbol for all the ticks that came meanwhile, however many.
    """

    def __init__(self, *, flush: Callable[[list[Tick]], Awaitable[None]]):
        self._flush = flush
        self._pending: dict[str, Tick] = {}
        self._waiting = asyncio.Event()  # set when there may be something to flush

    def add(self, tick: Tick) -> None:
        current = self._pending.get(tick.feed_symbol)
        if current is None or tick.ts >= current.ts:
            self._pending[tick.feed_symbol] = tick
        self._waiting.set()

    def wake(self) -> None:
        """Flush now even without new ticks (the flush may hold some of its own)."""
        self._waiting.set()

    def take(self) -> list[Tick]:
        batch, self._pending = list(self._pending.values()), {}
        return batch

    async def run(self) -> None:
        """Flush whenever woken, until cancelled; a failing flush is logged, never fatal."""
        while True:
            await self._waiting.wait()
            self._waiting.clear()
            await asyncio.sleep(0)  # the ticks of this turn of the event loop go together
            batch = self.take()
            try:
                await self._flush(batch)
            except Exception:
                log.exception("feed: flush of %d ticks failed", len(batch))


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
