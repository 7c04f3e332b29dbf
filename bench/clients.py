"""The benchmark's WebSocket clients: one process holding many connections, measuring latency.

Started by ``bench/run.py`` with a job file (JSON: the URL, headers and portfolio ids of every
client). Speaks a tiny line protocol on stdin/stdout so the runner can drive the phases:

- prints ``connected <n> <failed>`` once every client has tried to connect;
- reads ``measure``: latencies and message counts from now on are recorded (warm-up excluded);
- reads ``ping``: every client sends a ``ping`` and waits for its ``pong`` (idle scenario:
  proves each connection still serves), prints ``pinged <answered>``;
- reads ``pause``: stops recording (the measured window ends), prints ``paused``; last states
  are still tracked (the final-state check comes after the feed stops and the queue drains);
- reads ``quiet``: prints ``quiet <s>``, the seconds since any client last received a frame
  (the runner waits for deliveries to stop before its second final-state check);
- reads ``dump <path>``: writes every client's last states to ``path`` (JSON), prints ``dumped``;
- reads ``stop``: writes the result file, prints ``done``, closes everything.

Latency is receive time minus the message's ``as_of`` (the newest exchange time in a valuation,
or a quote's exchange time); the simulated feed stamps exchange time at emission, so this is
tick -> client. A quote also carries ``received`` (when the feed runner flushed its coalescing
window): receive time minus that is recorded apart (``flush_latencies``), the stack's share
without the wait for the window; a valuation carries ``valued_at`` (when the worker started
its pass): receive time minus that is ``valued_latencies``, the pass, the channel layer, daphne
and this process. All clocks are this machine's.

What each client keeps as its last state: per portfolio the newest valuation (portfolio page),
and under ``quote:<instrument id>`` the newest quote (instrument page: from the snapshot's
``quote``, then ``quote`` frames), so the runner can compare both with the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import websockets


def parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Client:
    def __init__(self, spec: dict[str, Any], stats: Stats) -> None:
        self.spec = spec
        self.stats = stats
        self.last: dict[str, Any] = {}  # portfolio id -> last portfolio state seen
        self.last_seq = 0
        self.seq_errors = 0
        self.pong = asyncio.Event()
        self.ws: Any = None

    async def connect(self) -> bool:
        try:
            self.ws = await websockets.connect(
                self.spec["url"],
                additional_headers=self.spec.get("headers", {}),
                open_timeout=60,
                ping_interval=None,  # the server side decides keep-alives; none here
                max_size=2**24,
                max_queue=None,
            )
        except Exception as exc:  # counted, reported; the run goes on with the rest
            self.stats.connect_errors.append(repr(exc)[:200])
            return False
        return True

    async def run(self) -> None:
        stats = self.stats
        try:
            async for raw in self.ws:
                now = time.time()
                stats.last_rx = time.monotonic()
                message = orjson.loads(raw)  # cheaper than json: this shares the cores it measures
                seq = message.get("seq")
                if seq is not None:
                    if seq <= self.last_seq:
                        self.seq_errors += 1
                    self.last_seq = seq
                kind = message.get("type")
                if kind == "snapshot":
                    for state in message.get("portfolios", ()):
                        self.last[str(state["id"])] = state
                    if message.get("instrument") and message.get("quote"):
                        # The instrument page's snapshot: its quote is the first state shown.
                        self.keep_quote(message["instrument"]["id"], message["quote"])
                elif kind == "valuation":
                    state = message["portfolio"]
                    # As docs/protocol.md tells clients: ignore a valuation older than the shown.
                    shown = self.last.get(str(state["id"]))
                    if shown is None or (state["as_of"] or "") >= (shown["as_of"] or ""):
                        self.last[str(state["id"])] = state
                    if stats.measuring and state.get("as_of"):
                        stats.latencies.append(now - parse_ts(state["as_of"]))
                        if state.get("valued_at"):
                            stats.valued_latencies.append(now - parse_ts(state["valued_at"]))
                elif kind == "quote":
                    self.keep_quote(message["instrument"], message)
                    if stats.measuring:
                        stats.latencies.append(now - parse_ts(message["as_of"]))
                        if message.get("received"):
                            stats.flush_latencies.append(now - parse_ts(message["received"]))
                elif kind == "pong":
                    self.pong.set()
                if stats.measuring:
                    stats.messages += 1
                    stats.bytes += len(raw)
        except websockets.ConnectionClosed as exc:
            if not stats.closing:
                stats.closed_early.append(f"{exc.rcvd.code if exc.rcvd else None}")

    def keep_quote(self, instrument: int, quote: dict[str, Any]) -> None:
        """Remember the newest quote of an instrument (an older ``as_of`` never replaces it)."""
        key = f"quote:{instrument}"
        shown = self.last.get(key)
        if shown is None or (quote["as_of"] or "") >= (shown["as_of"] or ""):
            self.last[key] = {"price": quote["price"], "as_of": quote["as_of"]}

    async def ping(self, wait: float) -> bool:
        self.pong.clear()
        try:
            await self.ws.send(json.dumps({"type": "ping"}))
            await asyncio.wait_for(self.pong.wait(), wait)
        except (TimeoutError, websockets.ConnectionClosed):
            return False
        return True


class Stats:
    def __init__(self) -> None:
        self.measuring = False
        self.closing = False
        self.latencies: list[float] = []
        self.flush_latencies: list[float] = []  # quotes: feed runner's flush -> client
        self.valued_latencies: list[float] = []  # valuations: the worker's valued_at -> client
        self.last_rx = time.monotonic()  # when any client last received a frame
        self.messages = 0
        self.bytes = 0
        self.connect_errors: list[str] = []
        self.closed_early: list[str] = []


async def connect_all(clients: list[Client], parallel: int) -> list[Client]:
    gate = asyncio.Semaphore(parallel)

    async def one(client: Client) -> bool:
        async with gate:
            return await client.connect()

    ok = await asyncio.gather(*(one(c) for c in clients))
    return [c for c, good in zip(clients, ok, strict=True) if good]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("job", help="job file written by bench/run.py")
    parser.add_argument("result", help="where to write the result JSON")
    parser.add_argument("--parallel", type=int, default=50, help="handshakes in flight")
    args = parser.parse_args()
    specs = json.loads(Path(args.job).read_text())
    asyncio.run(run(specs, Path(args.result), args.parallel))


async def run(specs: list[dict[str, Any]], result_path: Path, parallel: int) -> None:

    stats = Stats()
    clients = [Client(spec, stats) for spec in specs]
    connected = await connect_all(clients, parallel)
    readers = [asyncio.create_task(c.run()) for c in connected]
    print(f"connected {len(connected)} {len(clients) - len(connected)}", flush=True)

    loop = asyncio.get_running_loop()
    started = time.monotonic()
    measured = 0.0
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "measure":
            stats.measuring, started = True, time.monotonic()
            print("measuring", flush=True)
        elif line == "pause":
            measured = time.monotonic() - started if stats.measuring else 0.0
            stats.measuring = False
            print("paused", flush=True)
        elif line == "quiet":
            print(f"quiet {time.monotonic() - stats.last_rx:.3f}", flush=True)
        elif line.startswith("dump "):
            states = {c.spec["name"]: c.last for c in connected}
            await asyncio.to_thread(Path(line[5:]).write_text, json.dumps(states))
            print("dumped", flush=True)
        elif line == "ping":
            answers = await asyncio.gather(*(c.ping(30) for c in connected))
            print(f"pinged {sum(answers)}", flush=True)
        elif line in ("stop", ""):
            if stats.measuring:
                measured = time.monotonic() - started
            stats.measuring = False
            break

    result = {
        "clients": len(clients),
        "connected": len(connected),
        "connect_errors": stats.connect_errors[:20],
        "connect_error_count": len(stats.connect_errors),
        "closed_early": len(stats.closed_early),
        "seq_errors": sum(c.seq_errors for c in connected),
        "seconds": measured,
        "messages": stats.messages,
        "bytes": stats.bytes,
        "latencies": stats.latencies,
        "flush_latencies": stats.flush_latencies,
        "valued_latencies": stats.valued_latencies,
        "last": {c.spec["name"]: c.last for c in connected},
    }
    await asyncio.to_thread(result_path.write_text, json.dumps(result))
    stats.closing = True
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*(c.ws.close() for c in connected), return_exceptions=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
