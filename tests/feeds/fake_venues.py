"""Local fakes of two exchanges Livefolio streams through ccxt: OKX v5 and Bybit v5 public.

Each fake is one aiohttp server on 127.0.0.1 (a random free port) serving the REST call ccxt's
``load_markets`` makes and the public WebSocket ccxt's watchers subscribe on, answering the way
each exchange documents (every frame below is the exchange's own documented example):

- OKX API v5, https://www.okx.com/docs-v5/en/ — "Get instruments"
  (#public-data-rest-api-get-instruments; the SPOT example as ccxt's okx.py quotes it),
  WebSocket "Subscribe" (#overview-websocket-subscribe), "Tickers channel"
  (#order-book-trading-market-data-ws-tickers-channel), "Trades channel"
  (#order-book-trading-market-data-ws-trades-channel), "Order book channel"
  (#order-book-trading-market-data-ws-order-book-channel: the "Full Snapshot" and "Incremental
  Data" push examples and the "Sequence ID" rules), and the text ping/pong (#overview-websocket).
- Bybit API v5, https://github.com/bybit-exchange/docs (docs/v5/...): market/instrument.mdx
  (the Spot response example), websocket/wss-authentication.mdx (the Public Spot subscribe
  reply and the Spot pong), websocket/public/ticker.mdx (Spot), trade.mdx and orderbook.mdx.

The test drives them: push frames, drop every connection, or go silent (no data, no replies).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.feeds.fakes import eventually

# -- OKX's documented examples -----------------------------------------------------------------

OKX_SPOT_INSTRUMENT = {
    "alias": "",
    "baseCcy": "BTC",
    "category": "1",
    "ctMult": "",
    "ctType": "",
    "ctVal": "",
    "ctValCcy": "",
    "expTime": "",
    "instId": "BTC-USDT",
    "instType": "SPOT",
    "lever": "10",
    "listTime": "1548133413000",
    "lotSz": "0.00000001",
    "minSz": "0.00001",
    "optType": "",
    "quoteCcy": "USDT",
    "settleCcy": "",
    "state": "live",
    "stk": "",
    "tickSz": "0.1",
    "uly": "",
}
OKX_TICKER = {
    "arg": {"channel": "tickers", "instId": "BTC-USDT"},
    "data": [
        {
            "instType": "SPOT",
            "instId": "BTC-USDT",
            "last": "9999.99",
            "lastSz": "0.1",
            "askPx": "9999.99",
            "askSz": "11",
            "bidPx": "8888.88",
            "bidSz": "5",
            "open24h": "9000",
            "high24h": "10000",
            "low24h": "8888.88",
            "volCcy24h": "2222",
            "vol24h": "2222",
            "sodUtc0": "2222",
            "sodUtc8": "2222",
            "ts": "1597026383085",
        }
    ],
}
OKX_TRADE = {
    "arg": {"channel": "trades", "instId": "BTC-USDT"},
    "data": [
        {
            "instId": "BTC-USDT",
            "tradeId": "130639474",
            "px": "42219.9",
            "sz": "0.12060306",
            "side": "buy",
            "ts": "1630048897897",
            "count": "3",
            "source": "0",
            "seqId": 1234,
        }
    ],
}
_OKX_ASKS = [
    ["8476.98", "415", "0", "13"],
    ["8477", "7", "0", "2"],
    ["8477.34", "85", "0", "1"],
    ["8477.56", "1", "0", "1"],
    ["8505.84", "8", "0", "1"],
    ["8506.37", "85", "0", "1"],
    ["8506.49", "2", "0", "1"],
    ["8506.96", "100", "0", "2"],
]
_OKX_BIDS = [
    ["8476.97", "256", "0", "12"],
    ["8475.55", "101", "0", "1"],
    ["8475.54", "100", "0", "1"],
    ["8475.3", "1", "0", "1"],
    ["8447.32", "6", "0", "1"],
    ["8447.02", "246", "0", "1"],
    ["8446.83", "24", "0", "1"],
    ["8446", "95", "0", "3"],
]
OKX_BOOK_SNAPSHOT = {
    "arg": {"channel": "books", "instId": "BTC-USDT"},
    "action": "snapshot",
    "data": [
        {
            "asks": _OKX_ASKS,
            "bids": _OKX_BIDS,
            "ts": "1597026383085",
            "checksum": -855196043,
            "prevSeqId": -1,
            "seqId": 123456,
        }
    ],
}
OKX_BOOK_UPDATE = {
    "arg": {"channel": "books", "instId": "BTC-USDT"},
    "action": "update",
    "data": [
        {
            "asks": _OKX_ASKS,
            "bids": _OKX_BIDS,
            "ts": "1597026383085",
            "checksum": -855196043,
            "prevSeqId": 123456,
            "seqId": 123457,
        }
    ],
}

# -- Bybit's documented examples ---------------------------------------------------------------

BYBIT_SPOT_INSTRUMENTS = {
    "retCode": 0,
    "retMsg": "OK",
    "result": {
        "category": "spot",
        "list": [
            {
                "symbolId": 9,
                "symbol": "BTCUSDT",
                "baseCoin": "BTC",
                "quoteCoin": "USDT",
                "innovation": "0",
                "status": "Trading",
                "marginTrading": "utaOnly",
                "stTag": "0",
                "lotSizeFilter": {
                    "basePrecision": "0.000001",
                    "quotePrecision": "0.0000001",
                    "minOrderQty": "0.000011",
                    "maxOrderQty": "83",
                    "minOrderAmt": "5",
                    "maxOrderAmt": "8000000",
                    "maxLimitOrderQty": "83",
                    "maxMarketOrderQty": "41.5",
                    "postOnlyMaxLimitOrderSize": "60000",
                },
                "priceFilter": {"tickSize": "0.1"},
                "riskParameters": {"priceLimitRatioX": "0.005", "priceLimitRatioY": "0.01"},
                "symbolType": "",
            }
        ],
    },
    "retExtInfo": {},
    "time": 1760027412300,
}
BYBIT_TICKER = {
    "topic": "tickers.BTCUSDT",
    "ts": 1672305380595,
    "type": "snapshot",
    "cs": 496622841,
    "data": {
        "symbol": "BTCUSDT",
        "lastPrice": "16363.78",
        "highPrice24h": "16566.64",
        "lowPrice24h": "16009.19",
        "prevPrice24h": "16443.66",
        "volume24h": "5865.470182",
        "turnover24h": "95949815.680875",
        "price24hPcnt": "-0.0049",
    },
}
BYBIT_TRADE = {
    "topic": "publicTrade.BTCUSDT",
    "type": "snapshot",
    "ts": 1672304486868,
    "data": [
        {
            "T": 1672304486865,
            "s": "BTCUSDT",
            "S": "Buy",
            "v": "0.001",
            "p": "16578.50",
            "L": "PlusTick",
            "i": "20f43950-d8dd-5b31-9112-a178eb6023af",
            "BT": False,
            "seq": 1783284617,
        }
    ],
}
# The documented snapshot elides its middle levels ("..."); these are the levels it shows.
BYBIT_BOOK_SNAPSHOT = {
    "topic": "orderbook.50.BTCUSDT",
    "type": "snapshot",
    "ts": 1672304484978,
    "data": {
        "s": "BTCUSDT",
        "b": [["16493.50", "0.006"], ["16493.00", "0.100"]],
        "a": [["16611.00", "0.029"], ["16612.00", "0.213"]],
        "u": 18521288,
        "seq": 7961638724,
    },
    "cts": 1672304484976,
}


def frame(example: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of a documented example with some fields of its (first) data record changed."""
    message = copy.deepcopy(example)
    data = message["data"]
    record = data[0] if isinstance(data, list) else data
    record.update(changes)
    return message


def now_ms() -> str:
    return str(int(time.time() * 1000))


@dataclass
class VenueClient:
    ws: web.WebSocketResponse
    path: str
    received: list[Any] = field(default_factory=list)


class FakeVenue:
    """One exchange: its market-list REST call and its public WebSocket, on one port."""

    ws_path = "/"

    def __init__(self) -> None:
        self.clients: list[VenueClient] = []
        self.rest_requests: list[str] = []
        self.silent = False
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> FakeVenue:
        app = web.Application()
        app.router.add_get(self.ws_path, self._websocket)
        app.router.add_get("/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def ccxt_urls(self) -> dict[str, Any]:
        """The ``urls`` entries that point ccxt at this fake."""
        raise NotImplementedError

    # -- REST ---------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.Response:
        self.rest_requests.append(request.path_qs)
        body = self.rest(request.path, dict(request.query))
        if body is None:
            return web.json_response({"error": f"not served: {request.path}"}, status=404)
        return web.json_response(body)

    def rest(self, path: str, query: dict[str, str]) -> Any:
        raise NotImplementedError

    # -- WebSocket ----------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        client = VenueClient(ws=ws, path=request.path)
        self.clients.append(client)
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            text = message.data
            try:
                parsed: Any = json.loads(text)
            except ValueError:
                parsed = text
            client.received.append(parsed)
            if not self.silent:
                await self.answer(client, parsed)
        return ws

    async def answer(self, client: VenueClient, message: Any) -> None:
        raise NotImplementedError

    @property
    def live(self) -> list[VenueClient]:
        return [c for c in self.clients if not c.ws.closed]

    async def wait_clients(self, count: int, *, within: float = 10.0) -> VenueClient:
        await eventually(lambda: len(self.clients) >= count, within=within)
        return self.clients[count - 1]

    async def wait_subscribed(self, topic: str, *, connection: int, within: float = 10.0) -> None:
        """Until connection number ``connection`` (1-based) subscribed to ``topic``."""
        client = await self.wait_clients(connection, within=within)
        await eventually(lambda: topic in self.topics(client), within=within)

    def topics(self, client: VenueClient) -> set[str]:
        raise NotImplementedError

    async def push(self, message: dict[str, Any]) -> None:
        """Send a frame on every open connection."""
        for client in self.live:
            await client.ws.send_str(json.dumps(message))

    async def drop(self) -> None:
        """Close every connection (the exchange restarting)."""
        for client in self.live:
            await client.ws.close(code=1001, message=b"going away")


class FakeOkx(FakeVenue):
    """OKX v5: REST ``GET /api/v5/public/instruments``, WebSocket ``/ws/v5/public``."""

    ws_path = "/ws/v5/public"

    def ccxt_urls(self) -> dict[str, Any]:
        return {"api": {"rest": self.http_url, "ws": f"{self.ws_url}/ws/v5"}}

    def rest(self, path: str, query: dict[str, str]) -> Any:
        if path != "/api/v5/public/instruments":
            return None
        spot = [OKX_SPOT_INSTRUMENT] if query.get("instType") == "SPOT" else []
        return {"code": "0", "data": spot, "msg": ""}

    async def answer(self, client: VenueClient, message: Any) -> None:
        if message == "ping":
            await client.ws.send_str("pong")
            return
        if not isinstance(message, dict) or message.get("op") not in ("subscribe", "unsubscribe"):
            return
        for arg in message.get("args", []):
            reply = {"event": message["op"], "arg": arg, "connId": "a4d3ae55"}
            await client.ws.send_str(json.dumps(reply))
            if message["op"] == "subscribe" and arg.get("channel") == "books":
                # "after subscription, the first push is the full snapshot" (order book channel)
                await client.ws.send_str(json.dumps(OKX_BOOK_SNAPSHOT))

    def topics(self, client: VenueClient) -> set[str]:
        return {
            f"{arg['channel']}:{arg['instId']}"
            for message in client.received
            if isinstance(message, dict) and message.get("op") == "subscribe"
            for arg in message["args"]
        }


class FakeBybit(FakeVenue):
    """Bybit v5: REST ``GET /v5/market/instruments-info``, WebSocket ``/v5/public/spot``."""

    ws_path = "/v5/public/spot"

    def ccxt_urls(self) -> dict[str, Any]:
        return {
            "api": {
                "public": self.http_url,
                "ws": {"public": {"spot": f"{self.ws_url}/v5/public/spot"}},
            }
        }

    def rest(self, path: str, query: dict[str, str]) -> Any:
        if path != "/v5/market/instruments-info":
            return None
        category = query.get("category", "")
        if category == "spot":
            return BYBIT_SPOT_INSTRUMENTS
        return {
            "retCode": 0,
            "retMsg": "OK",
            "result": {"category": category, "list": [], "nextPageCursor": ""},
            "retExtInfo": {},
            "time": int(now_ms()),
        }

    async def answer(self, client: VenueClient, message: Any) -> None:
        if not isinstance(message, dict):
            return
        op = message.get("op")
        if op == "ping":
            reply = {
                "success": True,
                "ret_msg": "pong",
                "conn_id": "0970e817-426e-429a-a679-ff7f55e0b16a",
                "op": "ping",
            }
            await client.ws.send_str(json.dumps(reply))
        elif op in ("subscribe", "unsubscribe"):
            reply = {
                "success": True,
                "ret_msg": op,
                "conn_id": "2324d924-aa4d-45b0-a858-7b8be29ab52b",
                "req_id": message.get("req_id", ""),
                "op": op,
            }
            await client.ws.send_str(json.dumps(reply))
            if op == "subscribe" and "orderbook.50.BTCUSDT" in message.get("args", []):
                # "Once you subscribe successfully, you will receive a snapshot" (orderbook.mdx)
                await client.ws.send_str(json.dumps(BYBIT_BOOK_SNAPSHOT))

    def topics(self, client: VenueClient) -> set[str]:
        return {
            topic
            for message in client.received
            if isinstance(message, dict) and message.get("op") == "subscribe"
            for topic in message.get("args", [])
        }


async def settle() -> None:
    """Let frames already sent be read and handled."""
    await asyncio.sleep(0.05)
