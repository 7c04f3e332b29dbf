"""A Livefolio API v1 client that keeps a local order book from a snapshot and every diff, and
verifies the server's checksum after each diff (docs/api.md, "Order book diffs").

    LIVEFOLIO_TOKEN=lf_... python docs/book_client.py ws://127.0.0.1:8000/ws/v1/ BTC-USDT

Subscribes to ``book:<symbol>`` in ``diffs`` mode: the snapshot is every level of the book, each
update the levels that changed (size "0": the level is gone). After applying an update the
client computes the checksum itself and compares it with the one the server sent. A jump in
``stream_seq`` (something was lost) or a checksum that does not match: it asks for a snapshot
and carries on from it. With ``--count N`` it stops after N verified checksums. Also follows the
``trades:<symbol>`` stream (every trade) and counts gaps in it. Needs ``pip install websockets``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import zlib
from decimal import Decimal

import websockets

CHECKSUM_LEVELS = 10


def canonical(text: str) -> str:
    """A price or size as the checksum writes it: no exponent, no trailing zeros after the
    point, no trailing point ("0.5660" -> "0.566", "100.0" -> "100")."""
    plain = format(Decimal(text), "f")
    if "." in plain:
        plain = plain.rstrip("0").rstrip(".")
    return plain if plain not in ("", "-0") else "0"


def checksum(bids: dict[Decimal, str], asks: dict[Decimal, str]) -> int:
    """CRC-32 of "<asks>|<bids>": the 10 lowest asks then the 10 highest bids, each level
    "price:size", levels joined by ","."""
    best_asks = sorted(asks)[:CHECKSUM_LEVELS]
    best_bids = sorted(bids, reverse=True)[:CHECKSUM_LEVELS]
    ask_text = ",".join(f"{canonical(str(p))}:{canonical(asks[p])}" for p in best_asks)
    bid_text = ",".join(f"{canonical(str(p))}:{canonical(bids[p])}" for p in best_bids)
    return zlib.crc32(f"{ask_text}|{bid_text}".encode()) & 0xFFFFFFFF


def apply(side: dict[Decimal, str], levels: list[list[str]]) -> None:
    for price, size in levels:
        if Decimal(size) == 0:
            side.pop(Decimal(price), None)
        else:
            side[Decimal(price)] = size


class BookClient:
    def __init__(self, ws, symbol: str) -> None:
        self.ws = ws
        self.book_stream = f"book:{symbol}"
        self.trades_stream = f"trades:{symbol}"
        self.ids = itertools.count(1)
        self.bids: dict[Decimal, str] = {}
        self.asks: dict[Decimal, str] = {}
        self.synced = False  # a snapshot is applied and nothing was lost since
        self.last_seq: dict[str, int] = {}
        self.verified = 0
        self.mismatches = 0
        self.gaps = 0
        self.trades = 0
        self.trade_gaps = 0

    async def request(self, kind: str, **params) -> None:
        await self.ws.send(json.dumps({"type": kind, "id": next(self.ids), **params}))

    async def handle(self, message: dict) -> None:
        kind = message["type"]
        if kind == "error":
            raise RuntimeError(f"{message['code']}: {message['message']}")
        if kind not in ("snapshot", "update"):
            return  # welcome, replies, heartbeats
        stream = message["stream"]
        seq = message["stream_seq"]
        jumped = kind == "update" and seq != self.last_seq.get(stream, 0) + 1
        self.last_seq[stream] = seq
        if stream == self.trades_stream:
            if kind == "update":
                self.trades += 1
                self.trade_gaps += jumped
            return
        if kind == "snapshot":
            data = message["data"]
            self.bids, self.asks = {}, {}
            if data is not None:
                apply(self.bids, data["bids"])
                apply(self.asks, data["asks"])
            self.synced = True
            return
        if jumped:
            self.gaps += 1
            print(f"gap before stream_seq {seq}; asking for a snapshot", flush=True)
            await self.resync()
            return
        if not self.synced:
            return  # waiting for the snapshot asked for
        data = message["data"]
        apply(self.bids, data["bids"])
        apply(self.asks, data["asks"])
        mine = checksum(self.bids, self.asks)
        if mine != data["checksum"]:
            self.mismatches += 1
            print(
                f"checksum mismatch at book_seq {data['book_seq']}: {mine} != "
                f"{data['checksum']}; asking for a snapshot",
                flush=True,
            )
            await self.resync()
            return
        self.verified += 1
        if self.verified % 100 == 0:
            print(f"verified {self.verified} checksums", flush=True)

    async def resync(self) -> None:
        self.synced = False
        await self.request("snapshot", stream=self.book_stream)


async def run(url: str, token: str, symbol: str, count: int | None) -> BookClient:
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(url, additional_headers=headers, open_timeout=10) as ws:
        client = BookClient(ws, symbol)
        await client.request("subscribe", stream=client.trades_stream)
        await client.request("subscribe", stream=client.book_stream, mode="diffs")
        while count is None or client.verified < count:
            await client.handle(json.loads(await ws.recv()))
        return client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="e.g. ws://127.0.0.1:8000/ws/v1/")
    parser.add_argument("symbol", help="e.g. BTC-USDT")
    parser.add_argument("--count", type=int, default=None, help="stop after N verified checksums")
    args = parser.parse_args()
    token = os.environ.get("LIVEFOLIO_TOKEN")
    if not token:
        parser.error("set LIVEFOLIO_TOKEN to an API token from /settings/tokens/")
    try:
        client = asyncio.run(run(args.url, token, args.symbol, args.count))
    except KeyboardInterrupt:
        return
    except websockets.ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd else "none"
        sys.exit(f"connection closed by the server (code {code})")
    print(
        f"done: verified {client.verified} checksums, {client.mismatches} mismatches, "
        f"{client.gaps} gaps; {client.trades} trades, {client.trade_gaps} trade gaps",
        flush=True,
    )
    sys.exit(1 if client.mismatches else 0)


if __name__ == "__main__":
    main()
