"""A limit order book with price-time priority: the market the simulated exchange runs per symbol.

Pure bookkeeping in Decimal, no I/O and no clock. Orders rest at a price; an order that reaches
the other side's best price trades against the resting orders there, best price first and, at
one price, oldest first, each fill at the resting (maker) order's price. What is left of a
limit order rests; what is left of an immediate-or-cancel order is dropped. So after every
call the best bid is below the best ask, every level holds a positive size, and a level whose
size reaches zero is gone.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from streaming.orderbook import Level

Side = Literal["buy", "sell"]


@dataclass(slots=True)
class Order:
    """A resting order; ``size`` is what is still open."""

    order_id: int
    side: Side
    price: Decimal
    size: Decimal


@dataclass(frozen=True, slots=True)
class Fill:
    """One trade: ``size`` at the maker's ``price``; ``taker_side`` is the incoming order's."""

    trade_id: int
    price: Decimal
    size: Decimal
    taker_side: Side
    maker_order_id: int
    taker_order_id: int


class LimitOrderBook:
    """Resting orders by side and price; trade ids count up from 1, order ids likewise."""

    def __init__(self) -> None:
        self.orders: dict[int, Order] = {}
        # Per side: price -> the ids of the orders resting there, oldest first ...
        self._queues: dict[Side, dict[Decimal, deque[int]]] = {"buy": {}, "sell": {}}
        # ... and price -> the total open size there (the level a market-data feed shows).
        self._sizes: dict[Side, dict[Decimal, Decimal]] = {"buy": {}, "sell": {}}
        self._next_order_id = 1
        self._next_trade_id = 1

    @property
    def best_bid(self) -> Decimal | None:
        return max(self._sizes["buy"], default=None)

    @property
    def best_ask(self) -> Decimal | None:
        return min(self._sizes["sell"], default=None)

    def levels(self, side: Side, depth: int | None = None) -> tuple[Level, ...]:
        """The side's levels, best first (bids highest, asks lowest); all of them by default."""
        sizes = self._sizes[side]
        count = len(sizes) if depth is None else depth
        pick = heapq.nlargest if side == "buy" else heapq.nsmallest
        return tuple(pick(count, sizes.items()))

    def submit(
        self, side: Side, price: Decimal, size: Decimal, *, immediate_or_cancel: bool = False
    ) -> tuple[int, list[Fill]]:
        """Enter an order; returns its id and the fills it made, in the order they happened."""
        if side not in ("buy", "sell"):
            raise ValueError(f"side must be 'buy' or 'sell', got {side!r}")
        if not price > 0 or not size > 0:
            raise ValueError(f"an order needs a positive price and size, got {price} x {size}")
        order_id = self._next_order_id
        self._next_order_id += 1
        fills: list[Fill] = []
        other: Side = "sell" if side == "buy" else "buy"
        left = size
        while left > 0:
            best = self.best_ask if side == "buy" else self.best_bid
            if best is None or (price < best if side == "buy" else price > best):
                break
            queue = self._queues[other][best]
            maker = self.orders[queue[0]]
            traded = min(left, maker.size)
            fills.append(
                Fill(
                    trade_id=self._next_trade_id,
                    price=best,
                    size=traded,
                    taker_side=side,
                    maker_order_id=maker.order_id,
                    taker_order_id=order_id,
                )
            )
            self._next_trade_id += 1
            left -= traded
            maker.size -= traded
            if maker.size == 0:
                queue.popleft()
                del self.orders[maker.order_id]
            self._resize(other, best, -traded)
        if left > 0 and not immediate_or_cancel:
            self.orders[order_id] = Order(order_id, side, price, left)
            self._queues[side].setdefault(price, deque()).append(order_id)
            self._resize(side, price, left)
        return order_id, fills

    def cancel(self, order_id: int) -> Order | None:
        """Remove a resting order; returns it, or None if it is not resting (filled, unknown)."""
        order = self.orders.pop(order_id, None)
        if order is None:
            return None
        self._queues[order.side][order.price].remove(order_id)
        self._resize(order.side, order.price, -order.size)
        return order

    def _resize(self, side: Side, price: Decimal, change: Decimal) -> None:
        size = self._sizes[side].get(price, Decimal(0)) + change
        if size > 0:
            self._sizes[side][price] = size
        else:  # the level's last order went: no level of size zero is ever shown
            del self._sizes[side][price]
            del self._queues[side][price]
