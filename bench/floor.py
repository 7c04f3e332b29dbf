"""The floor: the least a Python server can do for the same clients, to compare Livefolio with.

``server``: a raw asyncio ``websockets`` server fed by ONE Redis pub/sub subscription. Each client
connects to ``/?user=<id>`` (optionally ``&group=<name>``); each published message is
``<key> <frame>`` and the frame goes as-is to the sockets of that user id or group name. No auth,
no ORM, no channel layer, no per-message thread hop.

``publish``: replays Livefolio's offered load without Django, from the job file:

- ``portfolio`` mode: the same users and holdings, the same tick rate over the same instruments,
  coalesced in a window of its own, one frame per affected user per window (paced when the job
  has ``pace_ms``: at most one per user per slot of its phase), each frame a real
  valuation payload of that user (so the same size) with ``as_of`` stamped when the window's
  newest tick was emitted;
- ``broadcast`` mode: ticks of the one instrument at the same rate, one real quote frame per
  window (at most ``1 / interval`` a second, like the instrument page's conflation) published
  once to the group every client joined, ``as_of`` = the window's newest tick, ``received`` =
  the flush time (as the feed runner stamps it).

Ticks are paced like the simulated feed (every tick owed by the clock at each wake-up). Prints
``ticks <n> <wall time>`` every second (the runner derives the achieved tick rate), runs for the
given seconds, prints ``published <frames> ticks <n> in <s> s`` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
CHANNEL = os.environ.get("LIVEFOLIO_REDIS_PREFIX", "livefolio") + ".floor"


async def run_server(port: int, redis_url: str) -> None:
    sockets: dict[str, set] = defaultdict(set)

    async def handler(ws) -> None:
        query = parse_qs(urlsplit(ws.request.path).query)
        keys = [query.get("user", [""])[0], *query.get("group", [])]
        for key in keys:
            sockets[key].add(ws)
        try:
            async for _ in ws:  # answer pings like the app does (the idle scenario uses them)
                await ws.send('{"type":"pong"}')
        finally:
            for key in keys:
                sockets[key].discard(ws)

    client = aioredis.Redis.from_url(redis_url, socket_timeout=None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def pass_on(response):
        return response

    async def subscribe():
        # With its own push handler, as the app's channel layer has: redis-py's default one
        # formats every message for a debug line (streaming/patches/layers.py, _PubSubShard).
        pubsub = client.pubsub(ignore_subscribe_messages=True, push_handler_func=pass_on)
        await pubsub.subscribe(CHANNEL)
        return pubsub

    async def pump(pubsub) -> None:
        # Redis drops a subscriber that falls 32 MiB behind (client-output-buffer-limit pubsub):
        # say so (the runner counts these lines) and subscribe again, like the pub/sub layer.
        while True:
            try:
                async for message in pubsub.listen():
                    key, _, frame = message["data"].decode().partition(" ")
                    for ws in list(sockets.get(key, ())):
                        try:
                            await ws.send(frame)
                        except websockets.ConnectionClosed:
                            pass
            except (aioredis.ConnectionError, OSError) as exc:
                print(f"floor: subscription lost ({exc!r}); subscribing again", flush=True)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                pubsub = await subscribe()

    first = await subscribe()
    async with serve(handler, "127.0.0.1", port, max_size=2**16, ping_interval=None):
        print(f"floor listening on {port}", flush=True)
        task = asyncio.create_task(pump(first))
        await stop.wait()
        task.cancel()
    await client.aclose()


def iso(ts: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def run_publisher(job: dict[str, Any], redis_url: str) -> None:
    rate, window, seconds = job["rate"], job["window"], job["seconds"]
    instruments: list[int] = job["instruments"]
    client = aioredis.Redis.from_url(redis_url)
    rng = random.Random(job.get("seed", 1))
    pending: dict[int, float] = {}  # instrument -> time of its newest tick in this window
    published = 0
    ticked = 0

    async def ticks() -> None:
        # The simulated feed's loop (streaming/feeds/simulated.py): at each wake-up, every tick
        # the clock says is owed, one random instrument each, wake-ups at least 5 ms apart
        # (its MIN_WAKE, written out: the floor imports none of the stack).
        nonlocal ticked
        started = time.monotonic()
        while True:
            owed = int((time.monotonic() - started) * rate) + 1 - ticked
            now = time.time()
            for _ in range(max(owed, 0)):
                pending[rng.choice(instruments)] = now
            ticked += max(owed, 0)
            await asyncio.sleep(max(0.005, ticked / rate - (time.monotonic() - started)))

    async def portfolio_flushes() -> None:
        # The same coalescing as the feed runner; as_of per user is the newest tick it holds.
        nonlocal pending, published
        holders: dict[int, list[str]] = defaultdict(list)  # instrument -> users holding it
        for user, held in job["holdings"].items():
            for instrument in held:
                holders[instrument].append(user)
        # One template per user: its real valuation frame, as_of replaced per send.
        templates = {u: json.dumps(t) for u, t in job["frames"].items()}
        # Pacing, when the job asks: a user's frame at most once per slot of its own phase;
        # what moves in between waits for the next slot.
        pace_ms = job.get("pace_ms", 0)
        phase_step = job.get("phase_step", 1)
        owed: dict[str, float] = {}  # user -> newest tick not sent yet
        last_slot: dict[str, int] = {}
        while True:
            await asyncio.sleep(window)
            batch, pending = pending, {}
            for instrument, ts in batch.items():
                for user in holders[instrument]:
                    if ts > owed.get(user, 0.0):
                        owed[user] = ts
            newest: dict[str, float] = {}
            now_ms = int(time.time() * 1000)
            for user, ts in owed.items():
                if pace_ms:
                    slot = (now_ms - int(user) * phase_step % pace_ms) // pace_ms
                    if last_slot.get(user, -1) >= slot:
                        continue
                    last_slot[user] = slot
                newest[user] = ts
            for user in newest:
                del owed[user]
            pipe = client.pipeline(transaction=False)
            valued = json.dumps(iso(time.time()))  # Livefolio's valued_at: its pass began
            for user, ts in newest.items():
                frame = templates[user].replace('"__AS_OF__"', json.dumps(iso(ts)), 1)
                frame = frame.replace('"__VALUED_AT__"', valued, 1)
                pipe.publish(CHANNEL, f"{user} {frame}")
            await pipe.execute()
            published += len(newest)

    async def broadcast_flushes() -> None:
        # One coalesced quote per window, sent once to the group: the server fans it out.
        nonlocal pending, published
        template = json.dumps(job["frame"])
        group = job["group"]
        while True:
            await asyncio.sleep(job["interval"])
            batch, pending = pending, {}
            if not batch:
                continue
            frame = template.replace('"__AS_OF__"', json.dumps(iso(max(batch.values()))), 1)
            frame = frame.replace('"__RECEIVED__"', json.dumps(iso(time.time())), 1)
            await client.publish(CHANNEL, f"{group} {frame}")
            published += 1

    async def report() -> None:
        # The achieved tick rate, for the runner: "ticks <count so far> <wall time>" each second.
        while True:
            await asyncio.sleep(1.0)
            print(f"ticks {ticked} {time.time():.3f}", flush=True)

    flushes = broadcast_flushes if job.get("mode") == "broadcast" else portfolio_flushes
    started = time.monotonic()
    tasks = [asyncio.create_task(f()) for f in (ticks, flushes, report)]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await client.aclose()
    print(f"published {published} ticks {ticked} in {time.monotonic() - started:.2f} s", flush=True)


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
