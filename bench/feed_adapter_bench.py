"""The exchange adapter's share of the feed: CPU per message and frame → emitted event latency.

Compares the hand-written Binance adapter with ccxt's Binance on the same frames (Binance's
documented ``trade`` event), and shows ccxt's OKX and Bybit on their documented examples. In one
process, no network: each frame enters where the socket reader hands it on (the hand-written
adapter's ``on_message``; ccxt's ``Client.handle_text_or_binary_message``) and is done when the
feed runner's ``emit`` has received its events. Everything after ``emit`` (coalescing, ingest,
publishing) is the same code for both, so this is the whole difference between them on the feed.

    uv run bench/feed_adapter_bench.py            # 20,000 frames per adapter: ~20 s

ccxt's sockets are not opened: its client for the watched URL is marked connected and its sends
are dropped, so ``watch_*`` subscribes without I/O and ccxt's own code does the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")

import ccxt.pro

from streaming.feeds.binance import BinanceFeed
from streaming.feeds.ccxt_exchange import CcxtFeed, make_exchange
from tests.feeds.fake_venues import BYBIT_TRADE, OKX_TRADE, FakeBybit, FakeOkx

# Binance Spot "Trade Streams" payload example (binance-spot-api-docs, web-socket-streams.md).
BINANCE_TRADE = {
    "e": "trade",
    "E": 1672515782136,
    "s": "BNBBTC",
    "t": 12345,
    "p": "0.001",
    "q": "100",
    "T": 1672515782136,
    "m": True,
    "M": True,
}
BINANCE_MARKET = {
    "id": "BNBBTC",
    "lowercaseId": "bnbbtc",
    "symbol": "BNB/BTC",
    "base": "BNB",
    "quote": "BTC",
    "baseId": "BNB",
    "quoteId": "BTC",
    "settle": None,
    "type": "spot",
    "spot": True,
    "margin": False,
    "swap": False,
    "future": False,
    "option": False,
    "contract": False,
    "linear": None,
    "inverse": None,
    "active": True,
    "precision": {"amount": 0.001, "price": 0.000001},
    "limits": {"amount": {}, "price": {}, "cost": {}},
    "info": {},
}


class Emitted:
    def __init__(self) -> None:
        self.count = 0
        self.changed = asyncio.Event()

    def __call__(self, event: Any) -> None:
        self.count += 1
        self.changed.set()


def offline(exchange: Any) -> list[Any]:
    """Make ``exchange.client(url)`` return clients that are connected and send nothing."""
    made: list[Any] = []
    make = exchange.client

    def client(url: str) -> Any:
        c = make(url)
        if not c.connected.done():
            c.connected.set_result(True)

            async def send(message: Any) -> None:
                return None

            c.send = send
            made.append(c)
        return c

    exchange.client = client
    return made


def frames(make: Callable[[int], dict[str, Any]], n: int) -> list[str]:
    return [json.dumps(make(i)) for i in range(n)]


def binance_frame(i: int) -> dict[str, Any]:
    return {**BINANCE_TRADE, "t": 12345 + i, "E": 1672515782136 + i, "T": 1672515782136 + i}


def okx_frame(i: int) -> dict[str, Any]:
    record = {**OKX_TRADE["data"][0], "tradeId": str(130639474 + i), "ts": str(1630048897897 + i)}
    return {**OKX_TRADE, "data": [record]}


def bybit_frame(i: int) -> dict[str, Any]:
    record = {**BYBIT_TRADE["data"][0], "i": f"t-{i}", "T": 1672304486865 + i}
    return {**BYBIT_TRADE, "ts": 1672304486868 + i, "data": [record]}


async def measure(feed_in: Callable[[str], Any], emitted: Emitted, raws: list[str]) -> dict:
    """Hand each frame on, wait until its events are emitted; CPU and latency per frame."""
    latencies = []
    cpu0 = time.thread_time()
    for raw in raws:
        before = emitted.count
        emitted.changed.clear()
        start = time.perf_counter()
        result = feed_in(raw)
        if asyncio.iscoroutine(result):
            await result
        while emitted.count == before:
            async with asyncio.timeout(5):  # an adapter that emits nothing fails the run
                await emitted.changed.wait()
            emitted.changed.clear()
        latencies.append(time.perf_counter() - start)
    cpu = time.thread_time() - cpu0
    latencies.sort()
    return {
        "cpu_us_per_msg": round(cpu / len(raws) * 1e6, 1),
        "latency_us_p50": round(statistics.median(latencies) * 1e6, 1),
        "latency_us_p99": round(latencies[int(len(latencies) * 0.99)] * 1e6, 1),
    }


async def hand_written_binance(n: int) -> dict:
    emitted = Emitted()
    feed = BinanceFeed(emit=emitted, channels=("trade",))
    await feed.set_symbols(frozenset({"BNBBTC"}))
    shard = feed.shards[0]
    # It reads combined streams (/stream?streams=...), where each event comes wrapped.
    combined = frames(lambda i: {"stream": "bnbbtc@trade", "data": binance_frame(i)}, n)
    return await measure(shard.on_message, emitted, combined)


async def through_ccxt(exchange_id: str, symbol: str, markets: Any, raws: list[str]) -> dict:
    """``markets``: ccxt market structures, or a fake venue to load them from (its REST)."""
    emitted = Emitted()
    if isinstance(markets, list):
        exchange = getattr(ccxt.pro, exchange_id)({"enableRateLimit": False})
        exchange.set_markets(markets)
    else:
        exchange = make_exchange(exchange_id, urls=markets.ccxt_urls(), timeout=10)
        await exchange.load_markets()
    clients = offline(exchange)
    feed = CcxtFeed(emit=emitted, exchange=exchange_id, channels=("trades",))
    feed.exchange, feed.markets = exchange, [symbol]
    feed.symbols = frozenset({symbol})
    feed._ready.set()
    await feed._sync_watchers()
    await asyncio.sleep(0.05)  # the watcher subscribes (a dropped send)
    client = clients[0]
    try:
        return await measure(client.handle_text_or_binary_message, emitted, raws)
    finally:
        await feed._stop_watchers()
        await exchange.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000)
    args = parser.parse_args()
    n = args.frames
    async with FakeOkx() as okx, FakeBybit() as bybit:
        results = await compare(n, okx, bybit)
    print(f"{'adapter':32} {'CPU µs/msg':>11} {'p50 µs':>8} {'p99 µs':>8}")
    for name, r in results.items():
        print(
            f"{name:32} {r['cpu_us_per_msg']:>11} {r['latency_us_p50']:>8} {r['latency_us_p99']:>8}"
        )


async def compare(n: int, okx: FakeOkx, bybit: FakeBybit) -> dict[str, dict]:
    return {
        "binance, hand-written (trade)": await hand_written_binance(n),
        "binance, ccxt (trade)": await through_ccxt(
            "binance", "BNB/BTC", [BINANCE_MARKET], frames(binance_frame, n)
        ),
        "okx, ccxt (trades)": await through_ccxt("okx", "BTC/USDT", okx, frames(okx_frame, n)),
        "bybit, ccxt (publicTrade)": await through_ccxt(
            "bybit", "BTC/USDT", bybit, frames(bybit_frame, n)
        ),
    }


if __name__ == "__main__":
    asyncio.run(main())
