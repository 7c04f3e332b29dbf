"""A simulated exchange: geometric Brownian motion per instrument, deterministic for a seed.

Each step moves one symbol by ``exp((mu - sigma^2/2) dt + sigma sqrt(dt) Z)`` with ``dt`` a fixed
step of simulated time, so a seed and a symbol set give the same price path on every run.
Computed in Decimal (``Decimal.exp``); only the standard normal draw ``Z`` comes from ``random``.

Symbols named in :meth:`SimulatedFeed.set_order_books` trade in a simulated market instead
(:class:`SimulatedMarket`): limit orders arrive around a fair price that follows the same motion,
are cancelled, and trade when they cross, in a :class:`~streaming.feeds.matching.LimitOrderBook`.
Such a symbol's ticks, trades and books are what an exchange adapter emits: a :class:`Trade` per
fill, a :class:`Book` (top levels) after each change of the top, a :class:`Tick` at the last
trade with the best bid and ask.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext

from streaming.feeds.base import Book, Emit, Feed, Level, MarketEvent, Tick, Trade, utcnow
from streaming.feeds.matching import Fill, LimitOrderBook, Side

SECONDS_PER_YEAR = Decimal(365 * 24 * 3600)
DEFAULT_START = Decimal("100")
# The shortest sleep between wake-ups (seconds): at high rates one wake-up emits every tick owed
# by the clock, as a wake-up per tick would cost the event loop a whole turn per tick.
MIN_WAKE = 0.005


def gbm_step(price: Decimal, *, z: Decimal, mu: Decimal, sigma: Decimal, dt: Decimal) -> Decimal:
    """``price`` one step of ``dt`` years later, for the standard normal draw ``z``."""
    with localcontext() as ctx:
        ctx.prec = 28
        drift = (mu - sigma * sigma / 2) * dt
        shock = sigma * dt.sqrt() * z
        return price * (drift + shock).exp()


class SimulatedMarket:
    """One symbol's order flow: a fair price in geometric Brownian motion and the limit orders
    that traders send around it, in a :class:`LimitOrderBook`. Deterministic for its ``rng``.

    Each :meth:`event` moves the fair price one step, then sends one of: a resting limit order
    at a distance from the fair price (it trades if the fair price has moved past the other
    side's best), a cancellation (of the farther of two random resting orders, so the book
    follows the price), or an immediate-or-cancel order that takes the other side's best
    levels (buys more likely while the fair price is above the mid). A side with few orders
    gets a resting order first that does not cross, and a side swept empty gets one at once,
    so both sides of a published book always have levels.
    """

    MIN_ORDERS_PER_SIDE = 12
    MAX_ORDERS = 240
    INITIAL_ORDERS_PER_SIDE = 30

    def __init__(
        self,
        symbol: str,
        *,
        price: Decimal,
        rng: random.Random,
        sigma: Decimal,
        mu: Decimal,
        dt: Decimal,
        spread_bps: Decimal,
        depth: int = 10,
    ) -> None:
        if not price > 0:
            raise ValueError(f"{symbol}: a market needs a positive start price, got {price}")
        self.symbol = symbol
        self.fair = price
        self.rng = rng
        self.sigma, self.mu, self.dt = sigma, mu, dt
        self.depth = depth
        self.book = LimitOrderBook()
        magnitude = math.floor(math.log10(price))
        # Exchange-like increments: a price tick of about a millionth of the price (0.01 at
        # 10,000-99,999) and a size lot worth about one unit of the quote currency.
        self.tick = Decimal(1).scaleb(max(magnitude - 6, -8))
        self.lot = Decimal(1).scaleb(min(max(-magnitude - 1, -8), 0))
        self.half_spread_ratio = spread_bps / Decimal(20000)
        # Orders rest a few of the fair price's steps away, so the book keeps up with it.
        self.distance_ratio = 3 * sigma * dt.sqrt()
        self.last_price: Decimal | None = None
        self._shown: tuple[tuple[Level, ...], tuple[Level, ...]] | None = None

    # The order flow ---------------------------------------------------------------------------

    def open(self, ts: datetime) -> list[MarketEvent]:
        """The market's first book: resting orders on both sides, nothing crossing."""
        for _ in range(self.INITIAL_ORDERS_PER_SIDE):
            for side in ("buy", "sell"):
                self._rest(side, passive=True)
        return self._published([], ts)

    def event(self, ts: datetime) -> list[MarketEvent]:
        """One order-flow event at ``ts``; returns what an exchange would publish for it."""
        self._move()
        book = self.book
        sides = {"buy": 0, "sell": 0}
        for order in book.orders.values():
            sides[order.side] += 1
        thin = [side for side in ("buy", "sell") if sides[side] < self.MIN_ORDERS_PER_SIDE]
        draw = self.rng.random()
        if thin:
            fills = self._rest(thin[0], passive=True)
        elif draw < 0.5 and len(book.orders) < self.MAX_ORDERS:
            fills = self._rest(self.rng.choice(("buy", "sell")))
        elif draw < 0.82:
            self._cancel()
            fills = []
        else:
            fills = self._take()
        for side in ("buy", "sell"):  # a side swept empty gets a quote again at once
            if not book.levels(side, 1):
                self._rest(side, passive=True)
        return self._published(fills, ts)

    def _move(self) -> None:
        z = Decimal(repr(self.rng.gauss(0.0, 1.0)))
        self.fair = gbm_step(self.fair, z=z, mu=self.mu, sigma=self.sigma, dt=self.dt)

    def _distance(self) -> Decimal:
        spread = self.fair * self.half_spread_ratio
        return spread + self.fair * self.distance_ratio * Decimal(repr(self.rng.expovariate(1)))

    def _size(self) -> Decimal:
        # Order values spread log-normally around 5,000 units of the quote currency.
        value = Decimal(5000) * Decimal(repr(self.rng.lognormvariate(0.0, 1.0)))
        return max(self.lot, (value / self.fair).quantize(self.lot, rounding=ROUND_FLOOR))

    def _rest(self, side: Side, *, passive: bool = False) -> list[Fill]:
        """A limit order around the fair price; ``passive``: never crossing (a market maker
        filling a thin side), else it trades if the fair price has moved past the other side."""
        distance = self._distance()
        if side == "buy":
            price = (self.fair - distance).quantize(self.tick, rounding=ROUND_FLOOR)
            if passive and self.book.best_ask is not None:
                price = min(price, self.book.best_ask - self.tick)
        else:
            price = (self.fair + distance).quantize(self.tick, rounding=ROUND_CEILING)
            if passive and self.book.best_bid is not None:
                price = max(price, self.book.best_bid + self.tick)
        if price <= 0:
            price = self.tick
        return self.book.submit(side, price, self._size())[1]

    def _cancel(self) -> None:
        ids = list(self.book.orders)
        if not ids:
            return
        first, second = self.rng.choice(ids), self.rng.choice(ids)
        orders = self.book.orders
        farther = max(first, second, key=lambda i: (abs(orders[i].price - self.fair), i))
        self.book.cancel(farther)

    def _take(self) -> list[Fill]:
        bid, ask = self.book.best_bid, self.book.best_ask
        if bid is None or ask is None:
            return []
        lean = float((self.fair - (bid + ask) / 2) / (self.fair * self.distance_ratio))
        side: Side = "buy" if self.rng.random() < 0.5 + max(-0.4, min(0.4, lean / 2)) else "sell"
        reach = self.fair * self.distance_ratio * Decimal(repr(self.rng.expovariate(2)))
        if side == "buy":
            price = (ask + reach).quantize(self.tick, rounding=ROUND_CEILING)
        else:
            price = max(self.tick, (bid - reach).quantize(self.tick, rounding=ROUND_FLOOR))
        return self.book.submit(side, price, self._size(), immediate_or_cancel=True)[1]

    # What the exchange publishes --------------------------------------------------------------

    def top(self) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        """The best ``depth`` bids (highest first) and asks (lowest first)."""
        return self.book.levels("buy", self.depth), self.book.levels("sell", self.depth)

    def _published(self, fills: list[Fill], ts: datetime) -> list[MarketEvent]:
        events: list[MarketEvent] = [
            Trade(
                feed_symbol=self.symbol,
                price=fill.price,
                size=fill.size,
                side=fill.taker_side,
                trade_id=str(fill.trade_id),
                ts=ts,
            )
            for fill in fills
        ]
        if fills:
            self.last_price = fills[-1].price
        top = self.top()
        moved = top != self._shown
        if moved:
            self._shown = top
            events.append(Book(feed_symbol=self.symbol, bids=top[0], asks=top[1], ts=ts))
        if moved or fills:
            bid = top[0][0][0] if top[0] else None
            ask = top[1][0][0] if top[1] else None
            price = self.last_price
            if price is None:  # no trade yet: the mid, as a ticker before the first trade
                price = (bid + ask) / 2 if bid is not None and ask is not None else self.fair
            events.append(Tick(feed_symbol=self.symbol, price=price, bid=bid, ask=ask, ts=ts))
        return events


class _Pace:
    """How many events a clock-paced loop owes at a moment, at ``rate`` a second.

    Paced by the clock, not by sleeping 1/rate per event: asyncio wakes in whole milliseconds,
    so a sleep per event would cap the rate below what was asked. More than a second behind,
    the debt is dropped.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.sent = 0

    def owed(self, elapsed: float) -> int:
        owed = int(elapsed * self.rate) + 1 - self.sent
        most = max(1, int(self.rate))
        if owed > most:
            self.sent += owed - most
            owed = most
        owed = max(owed, 0)
        self.sent += owed
        return owed

    def due(self, elapsed: float) -> float:
        """Seconds until the next event is owed."""
        return self.sent / self.rate - elapsed


class SimulatedFeed(Feed):
    """Ticks ``rate`` times a second in total, each for one random symbol of the set; each
    order-book symbol's market has ``order_rate`` order events a second of its own."""

    name = "simulated"
    # Simulated history a market opens with, so its tape and book are full at once.
    WARMUP_EVENTS = 200
    WARMUP_SECONDS = 60

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
        order_rate: float = 20.0,
        book_levels: int = 10,
    ) -> None:
        super().__init__(emit=emit)
        if rate <= 0:
            raise ValueError("rate must be positive")
        if order_rate <= 0:
            raise ValueError("order_rate must be positive")
        self.rate = rate
        self.seed = seed
        self.random = random.Random(seed)
        self.sigma = sigma
        self.mu = mu
        # Simulated market seconds per real second: a demo should visibly move within seconds.
        self.dt = Decimal(str(1 / rate)) * speedup / SECONDS_PER_YEAR
        self.half_spread = spread_bps / Decimal(20000)
        self.spread_bps = spread_bps
        self.prices: dict[str, Decimal] = dict(start_prices or {})
        self.order_rate = order_rate
        self.order_dt = Decimal(str(1 / order_rate)) * speedup / SECONDS_PER_YEAR
        self.book_levels = book_levels
        self.order_books: frozenset[str] = frozenset()
        self.markets: dict[str, SimulatedMarket] = {}

    async def set_order_books(self, symbols: frozenset[str]) -> None:
        """The symbols that trade in a simulated market (the runner: crypto instruments)."""
        self.order_books = frozenset(symbols)

    def market(self, symbol: str) -> SimulatedMarket:
        """A new market for ``symbol``, its own random stream derived from the seed and the
        symbol: the same seed gives each symbol the same order flow, whatever else runs."""
        rng = random.Random(f"{self.seed}:{symbol}") if self.seed is not None else random.Random()
        return SimulatedMarket(
            symbol,
            price=self.prices.get(symbol, DEFAULT_START),
            rng=rng,
            sigma=self.sigma,
            mu=self.mu,
            dt=self.order_dt,
            spread_bps=self.spread_bps,
            depth=self.book_levels,
        )

    def open_market(self, symbol: str, now: datetime) -> SimulatedMarket:
        """Start ``symbol``'s market with a book and ``WARMUP_EVENTS`` events of history over
        the last ``WARMUP_SECONDS``, and emit what they published."""
        market = self.markets[symbol] = self.market(symbol)
        self._emit_all(market.open(now - timedelta(seconds=self.WARMUP_SECONDS)))
        step = timedelta(seconds=self.WARMUP_SECONDS) / self.WARMUP_EVENTS
        for n in range(self.WARMUP_EVENTS, 0, -1):
            self._emit_all(market.event(now - step * (n - 1)))
        return market

    def _emit_all(self, events: list[MarketEvent]) -> None:
        for event in events:
            self.stats.record_message(event.feed_symbol)
            self.emit(event)

    def _sync_markets(self, symbols: frozenset[str]) -> None:
        wanted = symbols & self.order_books
        for gone in set(self.markets) - wanted:
            market = self.markets.pop(gone)
            self.prices[gone] = market.fair
        now = utcnow()
        for symbol in sorted(wanted - set(self.markets)):
            self.open_market(symbol, now)

    def step(self, symbol: str) -> Tick:
        """Advance one symbol by one step and return its tick (deterministic for the seed)."""
        z = Decimal(repr(self.random.gauss(0.0, 1.0)))
        price = gbm_step(
            self.prices.get(symbol, DEFAULT_START), z=z, mu=self.mu, sigma=self.sigma, dt=self.dt
        )
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

    async def run(self) -> None:
        # Each wake-up emits every tick and order event owed so far (each stamped when it is
        # made), and wake-ups are at least MIN_WAKE apart.
        self.stats.set_state("connected", "simulated market open")
        started = time.monotonic()
        ticks, orders = _Pace(self.rate), _Pace(self.order_rate)
        chosen: tuple[frozenset[str], frozenset[str]] | None = None
        symbols: list[str] = []
        markets: list[SimulatedMarket] = []
        try:
            while True:
                # Once per change of the sets (compared by identity: they are replaced, never
                # changed, and a set of thousands is not compared at every wake-up).
                if (
                    chosen is None
                    or chosen[0] is not self.symbols
                    or chosen[1] is not self.order_books
                ):
                    chosen = (self.symbols, self.order_books)
                    self._sync_markets(self.symbols)
                    symbols = sorted(self.symbols - self.order_books)
                    markets = [self.markets[s] for s in sorted(self.markets)]
                elapsed = time.monotonic() - started
                owed = ticks.owed(elapsed)
                for _ in range(owed if symbols else 0):
                    tick = self.step(self.random.choice(symbols))
                    self.stats.record_message(tick.feed_symbol)
                    self.emit(tick)
                due = ticks.due(elapsed)
                owed = orders.owed(elapsed)
                for _ in range(owed if markets else 0):
                    now = utcnow()
                    for market in markets:
                        self._emit_all(market.event(now))
                if markets:
                    due = min(due, orders.due(elapsed))
                await asyncio.sleep(max(MIN_WAKE, due))
        finally:
            self.stats.set_state("stopped", "cancelled")


def _round_price(price: Decimal) -> Decimal:
    """Four decimals above 1, eight below: like the exchanges' tick sizes."""
    return price.quantize(Decimal("0.0001") if price >= 1 else Decimal("0.00000001"))
