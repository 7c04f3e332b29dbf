"""Local fake exchanges speaking each exchange's documented protocol, driven by the test.

Each fake is a real ``websockets`` server on 127.0.0.1 with a random free port. It records what
the client sent (with receive timestamps), answers subscriptions the way the exchange
documents, and lets the test push frames, drop the connection or go silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from streaming.feeds.base import Book, MarketEvent, Tick, Trade
from streaming.feeds.kraken import book_checksum


async def eventually(condition: Callable[[], Any], *, within: float = 5.0) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


class Collector:
    """Stands in for the runner: keeps every event a feed emits."""

    def __init__(self) -> None:
        self.events: list[MarketEvent] = []

    def __call__(self, event: MarketEvent) -> None:
        self.events.append(event)

    def ticks(self, symbol: str | None = None) -> list[Tick]:
        return [
            e
            for e in self.events
            if isinstance(e, Tick) and (symbol is None or e.feed_symbol == symbol)
        ]

    def trades(self) -> list[Trade]:
        return [e for e in self.events if isinstance(e, Trade)]

    def books(self, symbol: str | None = None) -> list[Book]:
        return [
            e
            for e in self.events
            if isinstance(e, Book) and (symbol is None or e.feed_symbol == symbol)
        ]


def _as_string(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


@dataclass
class Received:
    at: float  # time.monotonic() when the server read it
    text: str
    message: Any


@dataclass
class FakeClient:
    """One client connection as the fake exchange sees it."""

    ws: ServerConnection
    path: str
    received: list[Received] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    state: dict[str, Any] = field(default_factory=dict)

    def messages(self, predicate: Callable[[Any], bool] = lambda m: True) -> list[Any]:
        return [r.message for r in self.received if predicate(r.message)]


class FakeExchange:
    """The protocol-independent part: serve, record, push, drop, go silent."""

    heartbeat_interval: float | None = None

    def __init__(self, *, ping_interval: float | None = None) -> None:
        self.ping_interval = ping_interval
        self.clients: list[FakeClient] = []
        self.silent = False  # no replies, no heartbeats, nothing pushed by the fake itself
        self._server: Server | None = None
        self._new_client = asyncio.Condition()

    async def __aenter__(self) -> FakeExchange:
        self._server = await serve(
            self._handler, "127.0.0.1", 0, ping_interval=self.ping_interval, compression=None
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = next(iter(self._server.sockets)).getsockname()[:2]
        return f"ws://{host}:{port}"

    @property
    def current(self) -> FakeClient:
        return self.clients[-1]

    async def wait_clients(self, count: int, within: float = 5.0) -> FakeClient:
        """Wait until ``count`` connections have been made in total; return the newest."""
        await eventually(lambda: len(self.clients) >= count, within=within)
        return self.clients[count - 1]

    async def wait_message(
        self,
        predicate: Callable[[Any], bool],
        *,
        client: FakeClient | None = None,
        within: float = 5.0,
    ) -> Any:
        def find() -> Any:
            target = client or (self.clients[-1] if self.clients else None)
            if target is None:
                return None
            return next((m for m in target.messages(predicate)), None)

        return await eventually(find, within=within)

    async def push(self, message: Any, client: FakeClient | None = None) -> None:
        text = message if isinstance(message, str) else json.dumps(message, default=_as_string)
        await (client or self.current).ws.send(text)

    async def drop(self, client: FakeClient | None = None, code: int = 1001) -> None:
        """Close the connection from the exchange's side, like a restart or the 24 h cut-off."""
        await (client or self.current).ws.close(code)

    async def _handler(self, ws: ServerConnection) -> None:
        client = FakeClient(ws=ws, path=ws.request.path if ws.request else "")
        self.clients.append(client)
        heartbeat = asyncio.create_task(self._heartbeats(client))
        try:
            await self.on_connect(client)
            async for text in ws:
                message = json.loads(text)
                client.received.append(Received(time.monotonic(), str(text), message))
                if not self.silent:
                    await self.on_message(client, message)
        except ConnectionClosed:
            pass  # a client going away mid-send is not a test failure
        finally:
            heartbeat.cancel()
            client.closed.set()

    async def _heartbeats(self, client: FakeClient) -> None:
        if self.heartbeat_interval is None:
            return
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self.heartbeat_interval)
                if not self.silent:
                    await self.heartbeat(client)

    async def on_connect(self, client: FakeClient) -> None:
        """Protocol hook: what the exchange sends right after the handshake."""

    async def on_message(self, client: FakeClient, message: Any) -> None:
        """Protocol hook: the exchange's automatic replies."""

    async def heartbeat(self, client: FakeClient) -> None:
        """Protocol hook: one heartbeat."""


# Binance ---------------------------------------------------------------------------------


class FakeBinance(FakeExchange):
    """Binance combined streams: answers SUBSCRIBE/UNSUBSCRIBE with ``{"result": null}``."""

    def streams(self, client: FakeClient) -> set[str]:
        """The streams this connection carries now: from the URL plus live (un)subscriptions."""
        query = urllib.parse.urlparse(client.path).query
        initial = urllib.parse.parse_qs(query).get("streams", [""])[0]
        streams = {s for s in initial.split("/") if s}
        for message in client.messages():
            if message.get("method") == "SUBSCRIBE":
                streams |= set(message["params"])
            elif message.get("method") == "UNSUBSCRIBE":
                streams -= set(message["params"])
        return streams

    def __init__(self, *, ping_interval: float | None = None) -> None:
        super().__init__(ping_interval=ping_interval)
        self.reject: set[str] = set()  # streams whose SUBSCRIBE gets an error reply

    async def on_message(self, client: FakeClient, message: Any) -> None:
        if message.get("method") not in ("SUBSCRIBE", "UNSUBSCRIBE"):
            return
        if self.reject & set(message["params"]):
            # The error shape of the docs' "Error Messages" table.
            reply = {"code": 2, "msg": "Invalid request: invalid stream", "id": message["id"]}
            await self.push(reply, client)
        else:
            await self.push({"result": None, "id": message["id"]}, client)

    async def event(self, stream: str, data: dict[str, Any], client: FakeClient | None = None):
        await self.push({"stream": stream, "data": data}, client)


class FakeBinanceRest:
    """The one REST call the Binance adapter makes: ``GET /api/v3/depth``.

    ``snapshots[SYMBOL]`` is a list served in order (the last one repeats).
    """

    def __init__(self) -> None:
        self.snapshots: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeBinanceRest:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        target = request_line.split()[1]
        self.requests.append(target)
        parsed = urllib.parse.urlparse(target)
        symbol = urllib.parse.parse_qs(parsed.query).get("symbol", [""])[0]
        queue = self.snapshots.get(symbol)
        if parsed.path != "/api/v3/depth" or not queue:
            status, body = "400 Bad Request", json.dumps({"code": -1121, "msg": "Invalid symbol."})
        else:
            snapshot = queue.pop(0) if len(queue) > 1 else queue[0]
            status, body = "200 OK", json.dumps(snapshot)
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode()
        )
        await writer.drain()
        writer.close()


# Coinbase --------------------------------------------------------------------------------


class FakeCoinbase(FakeExchange):
    """Coinbase Exchange feed: subscriptions replies, per-product heartbeats with last_trade_id."""

    heartbeat_interval = 0.05

    def __init__(self) -> None:
        super().__init__()
        self.sequence: dict[str, int] = {}
        self.last_trade_id: dict[str, int] = {}

    def subscribed(self, client: FakeClient) -> set[str]:
        products: set[str] = set()
        for message in client.messages():
            if message.get("type") == "subscribe":
                products |= set(message.get("product_ids", []))
            elif message.get("type") == "unsubscribe":
                products -= set(message.get("product_ids", []))
        return products

    def next_sequence(self, product: str) -> int:
        self.sequence[product] = self.sequence.get(product, 100) + 1
        return self.sequence[product]

    async def on_message(self, client: FakeClient, message: Any) -> None:
        if message.get("type") in ("subscribe", "unsubscribe"):
            products = sorted(self.subscribed(client))
            channels = [{"name": n, "product_ids": products} for n in message["channels"]]
            await self.push({"type": "subscriptions", "channels": channels}, client)
        if message.get("type") == "subscribe" and "matches" in message["channels"]:
            for product in message["product_ids"]:
                if product in self.last_trade_id:
                    await self.push(self.match(product, self.last_trade_id[product], "last_match"))

    async def heartbeat(self, client: FakeClient) -> None:
        for product in sorted(self.subscribed(client)):
            await self.push(
                {
                    "type": "heartbeat",
                    "sequence": self.sequence.get(product, 100),
                    "last_trade_id": self.last_trade_id.get(product, 0),
                    "product_id": product,
                    "time": "2024-01-02T03:04:05.000000Z",
                },
                client,
            )

    def ticker(self, product: str, price: str, *, sequence: int | None = None) -> dict[str, Any]:
        return {
            "type": "ticker",
            "sequence": self.next_sequence(product) if sequence is None else sequence,
            "product_id": product,
            "price": price,
            "open_24h": "1310.79",
            "volume_24h": "245532.79269678",
            "low_24h": "1280.52",
            "high_24h": "1313.8",
            "volume_30d": "9788783.60117027",
            "best_bid": "1285.04",
            "best_bid_size": "0.46688654",
            "best_ask": "1285.27",
            "best_ask_size": "1.56637040",
            "side": "buy",
            "time": "2022-10-19T23:28:22.061769Z",
            "trade_id": self.last_trade_id.get(product, 0),
            "last_size": "11.4396987",
        }

    def match(self, product: str, trade_id: int, kind: str = "match") -> dict[str, Any]:
        self.last_trade_id[product] = max(trade_id, self.last_trade_id.get(product, 0))
        return {
            "type": kind,
            "trade_id": trade_id,
            "sequence": self.next_sequence(product),
            "maker_order_id": "ac928c66-ca53-498f-9c13-a110027a60e8",
            "taker_order_id": "132fb6ae-456b-4654-b4e0-d681ac05cea1",
            "time": "2014-11-07T08:19:27.028459Z",
            "product_id": product,
            "size": "5.23512",
            "price": "400.23",
            "side": "sell",
        }


# Kraken ----------------------------------------------------------------------------------


class FakeKraken(FakeExchange):
    """Kraken WebSocket v2: status on connect, subscribe acks, the ``instrument`` channel's
    pair precisions, book snapshots with checksums computed at those precisions."""

    heartbeat_interval = 0.05

    def __init__(self) -> None:
        super().__init__()
        # symbol -> (bids, asks) as lists of (price, qty) decimal strings, best first
        self.books: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {}
        self.reject: dict[str, str] = {}  # symbol -> error text for subscribe
        # symbol -> (price_precision, qty_precision), published on the instrument channel
        self.precisions: dict[str, tuple[int, int]] = {}
        self.bad_checksums = False  # every book frame carries a wrong checksum

    def precision(self, symbol: str) -> tuple[int, int]:
        return self.precisions.get(symbol, (1, 8))

    def instrument_snapshot(self) -> dict[str, Any]:
        """The shape of the docs' ``instrument`` snapshot (Spot WebSocket v2, Instruments)."""
        symbols = sorted({*self.books, *self.precisions})
        pairs = []
        for symbol in symbols:
            price_precision, qty_precision = self.precision(symbol)
            base, quote = symbol.split("/")
            pairs.append(
                {
                    "symbol": symbol,
                    "base": base,
                    "quote": quote,
                    "status": "online",
                    "qty_precision": qty_precision,
                    "qty_increment": Decimal(1).scaleb(-qty_precision),
                    "price_precision": price_precision,
                    "cost_precision": 5,
                    "marginable": False,
                    "has_index": True,
                    "cost_min": Decimal("0.5"),
                    "tick_size": Decimal(1).scaleb(-price_precision),
                    "price_increment": Decimal(1).scaleb(-price_precision),
                    "qty_min": Decimal("0.0001"),
                }
            )
        assets = [{"id": "USD", "status": "enabled", "precision": 4, "precision_display": 2}]
        return {
            "channel": "instrument",
            "type": "snapshot",
            "data": {"assets": assets, "pairs": pairs},
        }

    async def on_connect(self, client: FakeClient) -> None:
        await self.push(
            {
                "channel": "status",
                "type": "update",
                "data": [
                    {
                        "api_version": "v2",
                        "connection_id": 12393906104898154338,
                        "system": "online",
                        "version": "2.0.0",
                    }
                ],
            },
            client,
        )

    async def heartbeat(self, client: FakeClient) -> None:
        await self.push({"channel": "heartbeat"}, client)

    async def on_message(self, client: FakeClient, message: Any) -> None:
        method = message.get("method")
        if method not in ("subscribe", "unsubscribe"):
            return
        params = message["params"]
        if params["channel"] == "instrument":
            ack = {"channel": "instrument", "snapshot": True}
            await self.push({"method": method, "result": ack, "success": True}, client)
            if method == "subscribe":
                await self.push(self.instrument_snapshot(), client)
            return
        for symbol in params["symbol"]:
            if method == "subscribe" and symbol in self.reject:
                await self.push(
                    {
                        "error": self.reject[symbol],
                        "method": "subscribe",
                        "success": False,
                        "symbol": symbol,
                        "time_in": "2023-09-25T09:04:31.742599Z",
                        "time_out": "2023-09-25T09:04:31.742648Z",
                    },
                    client,
                )
                continue
            result = {"channel": params["channel"], "symbol": symbol, "snapshot": True}
            if params["channel"] == "book":
                result["depth"] = params.get("depth", 10)
            await self.push(
                {
                    "method": method,
                    "result": result,
                    "success": True,
                    "time_in": "2023-09-25T09:04:31.742599Z",
                    "time_out": "2023-09-25T09:04:31.742648Z",
                    **({"req_id": message["req_id"]} if "req_id" in message else {}),
                },
                client,
            )
            if method == "subscribe" and params["channel"] == "book" and symbol in self.books:
                await self.push(self.book_message(symbol, "snapshot"), client)

    def book_message(
        self,
        symbol: str,
        kind: str,
        *,
        bids: list[tuple[str, str]] | None = None,
        asks: list[tuple[str, str]] | None = None,
        checksum: int | None = None,
    ) -> str:
        """A book frame with prices and quantities as JSON numbers, as Kraken v2 sends them.

        For an update, ``bids``/``asks`` are the changed levels; the fake's own book is updated
        and the checksum computed over it unless ``checksum`` overrides it.
        """
        own_bids, own_asks = self.books[symbol]
        if kind == "snapshot":
            bids, asks = own_bids, own_asks
        else:
            own_bids = _merge(own_bids, bids or [], reverse=True)
            own_asks = _merge(own_asks, asks or [], reverse=False)
            self.books[symbol] = (own_bids, own_asks)
        if checksum is None:
            checksum = book_checksum(
                [(Decimal(p), Decimal(q)) for p, q in own_asks[:10]],
                [(Decimal(p), Decimal(q)) for p, q in own_bids[:10]],
                precision=self.precision(symbol),
            )
            if self.bad_checksums:
                checksum = (checksum + 1) % 2**32

        def levels(side: list[tuple[str, str]] | None) -> str:
            return "[" + ",".join(f'{{"price":{p},"qty":{q}}}' for p, q in side or []) + "]"

        return (
            f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"{symbol}",'
            f'"bids":{levels(bids)},"asks":{levels(asks)},"checksum":{checksum},'
            f'"timestamp":"2023-10-06T17:35:55.440295Z"}}]}}'
        )

    def ticker(self, symbol: str, last: str, kind: str = "update") -> str:
        return (
            f'{{"channel":"ticker","type":"{kind}","data":[{{"symbol":"{symbol}",'
            f'"bid":{last},"bid_qty":0.50000000,"ask":{last},"ask_qty":1.00000000,'
            f'"last":{last},"volume":1000.12345678,"vwap":{last},"low":{last},"high":{last},'
            f'"change":0.0,"change_pct":0.00}}]}}'
        )


def _merge(
    side: list[tuple[str, str]], changes: list[tuple[str, str]], *, reverse: bool
) -> list[tuple[str, str]]:
    levels = {Decimal(p): (p, q) for p, q in side}
    for price, qty in changes:
        if Decimal(qty) == 0:
            levels.pop(Decimal(price), None)
        else:
            levels[Decimal(price)] = (price, qty)
    return [levels[k] for k in sorted(levels, reverse=reverse)][:10]


@contextlib.asynccontextmanager
async def running(feed: Any) -> Any:
    """Run ``feed.run()`` for the block; on exit it must stop promptly when cancelled."""
    task = asyncio.create_task(feed.run())
    try:
        yield task
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=3)
        assert done, "feed.run() did not exit within 3 s of being cancelled"
        assert feed.stats.state == "stopped"
