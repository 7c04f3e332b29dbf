"""A simulated exchange: geometric Brownian motion per instrument, deterministic for a seed.

Each step moves one symbol by ``exp((mu - sigma^2/2) dt + sigma sqrt(dt) Z)`` with ``dt`` a fixed
step of simulated time, so a seed and a symbol set give the same price path on every run.
Computed in Decimal (``Decimal.exp``); only the standard normal draw ``Z`` comes from ``random``.

Symbols in ``book_symbols`` (the runner puts crypto instruments there) also have an order book:
each step, limit orders arrive around the GBM price and rest, some are cancelled, and orders that
cross the other side trade against its best levels, price-time as an exchange matches them. The
tick then reports the last trade and the book's best bid and ask, and the feed emits the trades
and the book's top levels, so a demo has a tape and a book that always agree.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from decimal import Decimal, localcontext
from typing import Literal

from streaming.feeds.base import Book, Emit, Feed, Level, Tick, Trade, utcnow

SECONDS_PER_YEAR = Decimal(365 * 24 * 3600)
DEFAULT_START = Decimal("100")
# The shortest sleep between wake-ups (seconds): at high rates one wake-up emits every tick owed
# by the clock, as a wake-up per tick would cost the event loop a whole turn per tick.
MIN_WAKE = 0.005
BOOK_LEVELS = 10  # levels per side in each emitted Book
BOOK_DEPTH = 20  # levels per side the simulated book keeps filled
ORDERS_PER_STEP = 3  # order-book events per step of a book symbol

Side = Literal["buy", "sell"]


class SimulatedBook:
    """One symbol's limit order book: price levels with their resting quantity.

    Invariants after every call: every level's quantity is positive, and the best bid is
    below the best ask (an order that would cross trades instead of resting).
    """

    def __init__(self, tick_size: Decimal) -> None:
        self.tick_size = tick_size
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}

    def best_bid(self) -> Decimal | None:
        return max(self.bids) if self.bids else None

    def best_ask(self) -> Decimal | None:
        return min(self.asks) if self.asks else None

    def limit(self, side: Side, price: Decimal, qty: Decimal) -> list[tuple[Decimal, Decimal]]:
        """Place a limit order: it trades against the other side's levels it crosses, best
        first, and the rest rests at ``price``. Returns the fills as (price, qty)."""
        fills = self._take(side, qty, limit=price)
        left = qty - sum((q for _, q in fills), Decimal(0))
        if left > 0:
            own = self.bids if side == "buy" else self.asks
            own[price] = own.get(price, Decimal(0)) + left
        return fills

    def market(self, side: Side, qty: Decimal) -> list[tuple[Decimal, Decimal]]:
        """A market order: takes the other side's best levels until filled or the side is
        empty (what is left unfilled is dropped, as an exchange cancels it)."""
        return self._take(side, qty, limit=None)

    def cancel(self, side: Side, price: Decimal, qty: Decimal) -> None:
        own = self.bids if side == "buy" else self.asks
        left = own.get(price, Decimal(0)) - qty
        if left > 0:
            own[price] = left
        else:
            own.pop(price, None)

    def top(self, levels: int) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        bids = tuple(heapq.nlargest(levels, self.bids.items()))
        asks = tuple(heapq.nsmallest(levels, self.asks.items()))
        return bids, asks

    def _take(
        self, side: Side, qty: Decimal, *, limit: Decimal | None
    ) -> list[tuple[Decimal, Decimal]]:
        other = self.asks if side == "buy" else self.bids
        fills = []
        while qty > 0 and other:
            best = min(other) if side == "buy" else max(other)
            if limit is not None and (best > limit if side == "buy" else best < limit):
                break
            traded = min(qty, other[best])
            fills.append((best, traded))
            qty -= traded
            if traded == other[best]:
                del other[best]
            else:
                other[best] -= traded
        return fills


class SimulatedFeed(Feed):
    """Ticks ``rate`` times a second in total, each for one random symbol of the set."""

    name = "simulated"

    def __init__(
        self,
        *,
        emit: Emit,
        seed: int | None = None,
        rate: float = 10.0,
        sigma: Decimal = Decimal("0.8"),
        mu: Decimal = Decimal("0"),
        speedup: Decimal = Decimal("600"),
        spread_bps: Decimal = Decimal("2"),
        start_prices: dict[str, Decimal] | None = None,
        book_symbols: frozenset[str] = frozenset(),
    ) -> None:
        """
        Args:
            book_symbols: symbols that also get a simulated order book, trades and a tape.
        """
        super().__init__(emit=emit)
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.random = random.Random(seed)
        self.sigma = sigma
        self.mu = mu
        # Simulated market seconds per real second: a demo should visibly move within seconds.
        self.dt = Decimal(str(1 / rate)) * speedup / SECONDS_PER_YEAR
        self.half_spread = spread_bps / Decimal(20000)
        self.prices: dict[str, Decimal] = dict(start_prices or {})
        self.book_symbols = frozenset(book_symbols)
        self.books: dict[str, SimulatedBook] = {}
        self.last_trade: dict[str, Decimal] = {}
        self._trade_ids: dict[str, int] = {}

    def step(self, symbol: str) -> Tick:
        """Advance one symbol by one step and return its tick (deterministic for the seed)."""
        z = Decimal(repr(self.random.gauss(0.0, 1.0)))
        with localcontext() as ctx:
            ctx.prec = 28
            drift = (self.mu - self.sigma * self.sigma / 2) * self.dt
            shock = self.sigma * self.dt.sqrt() * z
            price = self.prices.get(symbol, DEFAULT_START) * (drift + shock).exp()
        self.prices[symbol] = price
        shown = _round_price(price)
        spread = _round_price(price * self.half_spread)
        return Tick(
            feed_symbol=symbol,
            price=shown,
            bid=shown - spread,
            ask=shown + spread,
            ts=utcnow(),
        )

    def book_step(self, symbol: str) -> list[Tick | Trade | Book]:
        """Advance a book symbol: its GBM price moves, then a few orders arrive around it.

        Returns the step's trades, the book's top levels and a tick of the last trade price
        with the best bid and ask (deterministic for the seed, like :meth:`step`)."""
        fair = self.step(symbol).price
        book = self.books.get(symbol)
        if book is None:
            book = self.books[symbol] = self._new_book(fair)
        now = utcnow()
        events: list[Tick | Trade | Book] = []
        for _ in range(ORDERS_PER_STEP):
            side: Side = "buy" if self.random.random() < 0.5 else "sell"
            kind = self.random.random()
            if kind < 0.55:  # a limit order a few ticks from the fair price (may cross)
                offset = book.tick_size * self.random.randint(-2, 8)
                price = fair - offset if side == "buy" else fair + offset
                fills = book.limit(side, _on_tick(price, book.tick_size), self._size(fair))
            elif kind < 0.85:  # a cancellation of part or all of a resting level
                own = book.bids if side == "buy" else book.asks
                if own:
                    price = self.random.choice(sorted(own))
                    book.cancel(side, price, _quantity(own[price] * self._fraction()))
                fills = []
            else:  # a market order
                fills = book.market(side, self._size(fair))
            for price, qty in fills:
                self._trade_ids[symbol] = self._trade_ids.get(symbol, 0) + 1
                self.last_trade[symbol] = price
                events.append(
                    Trade(
                        feed_symbol=symbol,
                        price=price,
                        size=qty,
                        side=side,
                        trade_id=str(self._trade_ids[symbol]),
                        ts=now,
                    )
                )
        self._refill(book, fair)
        bids, asks = book.top(BOOK_LEVELS)
        events.append(Book(feed_symbol=symbol, bids=bids, asks=asks, ts=now))
        events.append(
            Tick(
                feed_symbol=symbol,
                price=self.last_trade.get(symbol, fair),
                bid=book.best_bid(),
                ask=book.best_ask(),
                ts=now,
            )
        )
        return events

    def initial_book(self, symbol: str) -> Book:
        """The book a symbol starts with, so a page has one from the first second."""
        fair = _round_price(self.prices.get(symbol, DEFAULT_START))
        book = self.books.get(symbol)
        if book is None:
            book = self.books[symbol] = self._new_book(fair)
        bids, asks = book.top(BOOK_LEVELS)
        return Book(feed_symbol=symbol, bids=bids, asks=asks, ts=utcnow())

    def _new_book(self, fair: Decimal) -> SimulatedBook:
        book = SimulatedBook(tick_size=_tick_size(fair))
        self._refill(book, fair)
        return book

    def _refill(self, book: SimulatedBook, fair: Decimal) -> None:
        """Keep BOOK_DEPTH levels a side: new liquidity beyond each side's worst level (or next
        to the fair price on an empty side)."""
        for side, own in (("buy", book.bids), ("sell", book.asks)):
            while len(own) < BOOK_DEPTH:
                if own:
                    worst = min(own) if side == "buy" else max(own)
                else:
                    other = book.best_ask() if side == "buy" else book.best_bid()
                    start = _on_tick(fair, book.tick_size) if other is None else other
                    worst = start
                step = book.tick_size * self.random.randint(1, 3)
                price = _on_tick(worst - step if side == "buy" else worst + step, book.tick_size)
                if price <= 0:
                    break
                own[price] = self._size(fair)

    def _size(self, fair: Decimal) -> Decimal:
        """An order's quantity: about 1,000 in quote currency, log-uniformly spread."""
        with localcontext() as ctx:
            ctx.prec = 28
            notional = Decimal(repr(10 ** self.random.uniform(2, 4)))
            return max(_quantity(notional / fair), Decimal("0.0001"))

    def _fraction(self) -> Decimal:
        return Decimal(repr(self.random.uniform(0.2, 1.0)))

    async def run(self) -> None:
        # Paced by the clock, not by sleeping 1/rate per tick: asyncio wakes in whole
        # milliseconds, which capped the feed near 800 ticks/s whatever the rate. Each wake-up
        # emits every tick owed so far (each stamped when it is made), and wake-ups are at
        # least MIN_WAKE apart; more than a second behind, the debt is dropped.
        self.stats.set_state("connected", "simulated market open")
        started = time.monotonic()
        sent = 0
        chosen: frozenset[str] | None = None
        symbols: list[str] = []
        try:
            while True:
                owed = int((time.monotonic() - started) * self.rate) + 1 - sent
                most = max(1, int(self.rate))
                if owed > most:
                    sent += owed - most
                    owed = most
                if self.symbols is not chosen:  # sorted once per change of the set
                    chosen, symbols = self.symbols, sorted(self.symbols)
                    for symbol in sorted(self.book_symbols & self.symbols - set(self.books)):
                        self.emit(self.initial_book(symbol))
                for _ in range(owed if symbols else 0):
                    symbol = self.random.choice(symbols)
                    self.stats.record_message(symbol)
                    if symbol in self.book_symbols:
                        for event in self.book_step(symbol):
                            self.emit(event)
                    else:
                        self.emit(self.step(symbol))
                sent += max(owed, 0)
                due = sent / self.rate - (time.monotonic() - started)
                await asyncio.sleep(max(MIN_WAKE, due))
        finally:
            self.stats.set_state("stopped", "cancelled")


def _tick_size(price: Decimal) -> Decimal:
    """About a basis point of the price, a power of ten (0.01 at 100, 1 at 97,000)."""
    return Decimal(1).scaleb((price / 10000).adjusted()) if price > 0 else Decimal("0.00000001")


def _on_tick(price: Decimal, tick_size: Decimal) -> Decimal:
    """``price`` rounded to a multiple of ``tick_size``, written with the tick's decimals."""
    return ((price / tick_size).to_integral_value() * tick_size).quantize(tick_size)


def _quantity(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.0001"))


def _round_price(price: Decimal) -> Decimal:
    """Four decimals above 1, eight below: like the exchanges' tick sizes."""
    return price.quantize(Decimal("0.0001") if price >= 1 else Decimal("0.00000001"))
