"""Coinbase Exchange WebSocket feed: ``ticker``, ``matches`` and ``heartbeat`` channels.

Protocol (docs.cdp.coinbase.com, Exchange WebSocket "Overview" and "Channels"):

- Send ``{"type": "subscribe", "product_ids": [...], "channels": [...]}`` within 5 s of
  connecting; the server answers with a ``subscriptions`` message, or an ``error`` message
  (``message`` and ``reason``). ``unsubscribe`` has the same shape.
- Most messages carry a per-product ``sequence``, shared by all of a product's channels: the
  ``ticker`` of a trade and its ``match`` carry the same number. Order is therefore checked per
  product *and* channel: a sequence lower than (or equal to) the last one seen on the same
  channel is a late or duplicate message and is dropped. Each channel sees only some of the
  product's sequence numbers (and the ticker channel batches), so a skip alone is not a loss.
- Missed trades are judged by ``trade_id``, consecutive per product: a match whose id skips
  counts a gap, and so does a once-a-second ``heartbeat`` whose ``last_trade_id`` is beyond the
  last match we saw (matches lost while none followed: we resubscribe).
- ``match`` reports the maker's side; we emit the taker's side, like the other adapters.
- Unknown message types are ignored, as the docs ask of clients.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from websockets.asyncio.client import ClientConnection

from .base import Emit, Tick, Trade
from .connection import ReconnectNow, SingleConnectionFeed, truncate
from .values import from_iso, loads, to_decimal

log = logging.getLogger(__name__)

CHANNELS = ("ticker", "heartbeat", "matches")
# A match's side is the maker order's side; the taker traded the other way.
TAKER_SIDE: dict[str, Literal["buy", "sell"]] = {"buy": "sell", "sell": "buy"}


class CoinbaseFeed(SingleConnectionFeed):
    """Ticks and trades from the Coinbase Exchange market data feed.

    Emits a :class:`Tick` per ``ticker`` message (price, best bid, best ask, exchange time) and
    a :class:`Trade` per ``match``. ``feed_symbol`` is the product id, e.g. ``BTC-USD``.
    """

    name: ClassVar[str] = "coinbase"

    def __init__(
        self,
        *,
        emit: Emit,
        url: str = "wss://ws-feed.exchange.coinbase.com",
        channels: Sequence[str] = CHANNELS,
        stall_timeout: float = 2.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        open_timeout: float = 10.0,
        send_timeout: float = 5.0,
        close_timeout: float = 2.0,
        ping_interval: float | None = 20.0,
    ) -> None:
        """
        Args:
            url: ``wss://ws-feed.exchange.coinbase.com``, the sandbox
                ``wss://ws-feed-public.sandbox.exchange.coinbase.com`` or a local fake.
            channels: any of ``ticker``, ``heartbeat``, ``matches``; keep ``heartbeat``, it is
                what the stall detection and the missed-match check listen to.
            stall_timeout: reconnect after this long without a message (2x the 1 s heartbeat).
        """
        super().__init__(
            emit=emit,
            url=url,
            stall_timeout=stall_timeout,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            open_timeout=open_timeout,
            send_timeout=send_timeout,
            close_timeout=close_timeout,
            ping_interval=ping_interval,
        )
        unknown = set(channels) - set(CHANNELS)
        if unknown or not channels:
            raise ValueError(f"channels must be a non-empty subset of {CHANNELS}, got {channels}")
        self.channels = tuple(dict.fromkeys(channels))
        self.rejected: set[str] = set()  # products Coinbase refused; not resubscribed
        self._sequence: dict[tuple[str, str], int] = {}  # (product, message type) -> last
        self._last_trade_id: dict[str, int] = {}

    def subscribable(self) -> list[str]:
        return sorted(self.symbols - self.rejected)

    async def on_open(self, ws: ClientConnection) -> None:
        # Sequence state is per connection: after a reconnect nothing old is in flight.
        self._sequence.clear()
        self._last_trade_id.clear()
        await self._send("subscribe", self.subscribable())

    async def on_symbols_changed(self, added: frozenset[str], removed: frozenset[str]) -> None:
        self.rejected -= removed
        for product in removed:
            for kind in ("ticker", "match"):
                self._sequence.pop((product, kind), None)
            self._last_trade_id.pop(product, None)
        if removed:
            await self._send("unsubscribe", sorted(removed))
        if added:
            await self._send("subscribe", sorted(added))

    async def _send(self, kind: str, products: list[str]) -> None:
        if products:
            message = {"type": kind, "product_ids": products, "channels": list(self.channels)}
            await self.connection.send_json(message)

    async def on_message(self, raw: str | bytes) -> None:
        message = loads(raw)
        if not isinstance(message, dict):
            raise TypeError("frame is not a JSON object")
        kind = message["type"]
        if kind == "error":
            self.stats.record_message()
            await self._on_error(message, raw)
            return
        product = message.get("product_id")
        self.stats.record_message(product)
        if kind == "heartbeat":
            await self._on_heartbeat(product, message)
        elif kind == "last_match":
            # The latest match before we subscribed: a baseline for the heartbeat check, not news.
            self._last_trade_id[product] = _integer(message["trade_id"])
        elif kind in ("ticker", "match"):
            if product not in self.symbols or not self._in_sequence(product, kind, message):
                return
            if kind == "ticker":
                self._on_ticker(product, message)
            else:
                self._on_match(product, message)

    def _in_sequence(self, product: str, kind: str, message: dict[str, Any]) -> bool:
        sequence = _integer(message["sequence"])
        last = self._sequence.get((product, kind))
        if last is not None and sequence <= last:
            self.stats.out_of_order += 1
            return False
        self._sequence[(product, kind)] = sequence
        return True

    def _on_ticker(self, product: str, message: dict[str, Any]) -> None:
        tick = Tick(
            feed_symbol=product,
            price=to_decimal(message["price"]),
            ts=from_iso(message["time"]),
            bid=to_decimal(message["best_bid"]) if message.get("best_bid") else None,
            ask=to_decimal(message["best_ask"]) if message.get("best_ask") else None,
        )
        self.emit(tick)

    def _on_match(self, product: str, message: dict[str, Any]) -> None:
        trade_id = _integer(message["trade_id"])
        seen = self._last_trade_id.get(product)
        if seen is not None and trade_id > seen + 1:
            self.stats.gaps += 1
            log.warning("coinbase: %s missed matches %d..%d", product, seen + 1, trade_id - 1)
        self._last_trade_id[product] = max(trade_id, seen or 0)
        trade = Trade(
            feed_symbol=product,
            price=to_decimal(message["price"]),
            size=to_decimal(message["size"]),
            side=TAKER_SIDE.get(message["side"]),
            trade_id=str(trade_id),
            ts=from_iso(message["time"]),
        )
        self.emit(trade)

    async def _on_heartbeat(self, product: str, message: dict[str, Any]) -> None:
        last_trade_id = _integer(message["last_trade_id"])
        if "matches" not in self.channels or product not in self.symbols or last_trade_id == 0:
            return  # 0 means "unknown": Coinbase has been seen sending it (go-coinbasepro #89)
        seen = self._last_trade_id.get(product)
        self._last_trade_id[product] = max(last_trade_id, seen or 0)
        if seen is None or last_trade_id <= seen:
            return  # first baseline, or nothing missed
        self.stats.gaps += 1
        log.warning(
            "coinbase: %s missed matches %d..%d (heartbeat); resubscribing",
            product,
            seen + 1,
            last_trade_id,
        )
        # The missed trades are gone from the stream; a fresh subscription at least gets a
        # clean server-side state and a new last_match.
        await self._send("unsubscribe", [product])
        await self._send("subscribe", [product])

    async def _on_error(self, message: dict[str, Any], raw: str | bytes) -> None:
        self.stats.errors += 1
        reason = str(message.get("reason", ""))
        log.warning("coinbase: error from exchange: %s", truncate(raw))
        if message.get("message") == "Failed to subscribe":
            # A rejected subscribe rejects all its products; drop the ones the reason names
            # (e.g. "GIBBERISH-USD is not a valid product") and subscribe the rest again.
            named = {product for product in self.symbols if product in reason}
            if named:
                self.rejected |= named
                log.error("coinbase: not subscribing rejected products %s", sorted(named))
                await self._send("subscribe", self.subscribable())
                return
        raise ReconnectNow(f"exchange error: {message.get('message')} {reason}".strip())


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value
