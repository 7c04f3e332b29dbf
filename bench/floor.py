"""The floor: the least a Python server can do for the same clients, to compare Livefolio with.

``server``: a raw asyncio ``websockets`` server fed by ONE Redis pub/sub subscription. Each client
connects to ``/?user=<id>``; each published message is ``<user id> <frame>`` and the frame goes
as-is to that user's sockets. No auth, no ORM, no channel layer, no per-message thread hop.

``publish``: replays Livefolio's offered load without Django: the same users and holdings (from
the job file), the same tick rate over the same instruments, coalesced in the same window, one
frame per affected user per window, each frame a real valuation payload of that user (so the
same size) with ``as_of`` stamped when the window's newest tick was emitted. Runs for the given
seconds, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
import websockets
from websockets.asyncio.server import serve

# Pub/sub channels are server-wide (not per Redis db): namespaced like the channel layer's.
CHANNEL = os.environ.get("LIVEFOLIO_CHANNEL_PREFIX", "livefolio") + ".floor"


async def run_server(port: int, redis_url: str) -> None:
    sockets: dict[str, set] = defaultdict(set)

    async def handler(ws) -> None:
        user = parse_qs(urlsplit(ws.request.path).query).get("user", [""])[0]
        sockets[user].add(ws)
        try:
            async for _ in ws:  # answer pings like the app does (the idle scenario uses them)
                await ws.send('{"type":"pong"}')
        finally:
            sockets[user].discard(ws)

    client = aioredis.Redis.from_url(redis_url, socket_timeout=None)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def pump() -> None:
        async for message in pubsub.listen():
            user, _, frame = message["data"].decode().partition(" ")
            for ws in list(sockets.get(user, ())):
                try:
                    await ws.send(frame)
                except websockets.ConnectionClosed:
                    pass

    async with serve(handler, "127.0.0.1", port, max_size=2**16, ping_interval=None):
        print(f"floor listening on {port}", flush=True)
        task = asyncio.create_task(pump())
        await stop.wait()
        task.cancel()
    await client.aclose()


def iso(ts: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def run_publisher(job: dict[str, Any], redis_url: str) -> None:
    rate, window, seconds = job["rate"], job["window"], job["seconds"]
    instruments: list[int] = job["instruments"]
    holders: dict[int, list[str]] = defaultdict(list)  # instrument -> users holding it
    for user, held in job["holdings"].items():
        for instrument in held:
            holders[instrument].append(user)
    # One template per user: its real valuation frame, as_of replaced per send.
    templates = {u: json.dumps(t) for u, t in job["frames"].items()}
    client = aioredis.Redis.from_url(redis_url)
    rng = random.Random(job.get("seed", 1))
    pending: dict[int, float] = {}  # instrument -> time of its newest tick in this window
    published = 0

    async def ticks() -> None:
        # The same loop as the simulated feed: one random instrument per 1/rate sleep.
        while True:
            pending[rng.choice(instruments)] = time.time()
            await asyncio.sleep(1 / rate)

    async def flushes() -> None:
        # The same coalescing as the feed runner; as_of per user is the newest tick it holds.
        nonlocal pending, published
        while True:
            await asyncio.sleep(window)
            batch, pending = pending, {}
            newest: dict[str, float] = {}
            for instrument, ts in batch.items():
                for user in holders[instrument]:
                    if ts > newest.get(user, 0.0):
                        newest[user] = ts
            pipe = client.pipeline(transaction=False)
            for user, ts in newest.items():
                frame = templates[user].replace('"__AS_OF__"', json.dumps(iso(ts)), 1)
                pipe.publish(CHANNEL, f"{user} {frame}")
            await pipe.execute()
            published += len(newest)

    tasks = [asyncio.create_task(ticks()), asyncio.create_task(flushes())]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await client.aclose()
    print(f"published {published}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("server")
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--redis", required=True)
    publisher = sub.add_parser("publish")
    publisher.add_argument("job")
    publisher.add_argument("--redis", required=True)
    args = parser.parse_args()
    if args.command == "server":
        asyncio.run(run_server(args.port, args.redis))
    else:
        asyncio.run(run_publisher(json.loads(Path(args.job).read_text()), args.redis))


if __name__ == "__main__":
    main()
