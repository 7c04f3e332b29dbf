"""A simulated exchange: geometric Brownian motion per instrument, deterministic for a seed.

Each step moves one symbol by ``exp((mu - sigma^2/2) dt + sigma sqrt(dt) Z)`` with ``dt`` a fixed
step of simulated time, so a seed and a symbol set give the same price path on every run.
Computed in Decimal (``Decimal.exp``); only the standard normal draw ``Z`` comes from ``random``.
"""

from __future__ import annotations

import asyncio
import random
import time
from decimal import Decimal, localcontext

from streaming.feeds.base import Emit, Feed, Tick, utcnow

SECONDS_PER_YEAR = Decimal(365 * 24 * 3600)
DEFAULT_START = Decimal("100")
# The shortest sleep between wake-ups (seconds): at high rates one wake-up emits every tick owed
# by the clock, as a wake-up per tick would cost the event loop a whole turn per tick.
MIN_WAKE = 0.005


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
    ) -> None:
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
                for _ in range(owed if symbols else 0):
                    tick = self.step(self.random.choice(symbols))
                    self.stats.record_message(tick.feed_symbol)
                    self.emit(tick)
                sent += max(owed, 0)
                due = sent / self.rate - (time.monotonic() - started)
                await asyncio.sleep(max(MIN_WAKE, due))
        finally:
            self.stats.set_state("stopped", "cancelled")


def _round_price(price: Decimal) -> Decimal:
    """Four decimals above 1, eight below: like the exchanges' tick sizes."""
    return price.quantize(Decimal("0.0001") if price >= 1 else Decimal("0.00000001"))
