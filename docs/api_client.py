"""A small Livefolio API v1 client: prints live quotes and your portfolios' values.

    LIVEFOLIO_TOKEN=lf_... python docs/api_client.py ws://127.0.0.1:8000/ws/v1/

The token comes from the environment (not the command line, where other users of the machine
could read it in the process list); create one at /settings/tokens/. Needs `pip install websockets`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys

import websockets


class Client:
    """Requests with ids, and the stream messages: shown, gaps repaired by a snapshot."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.last_seq: dict[str, int] = {}  # stream -> last stream_seq seen
        self.symbols: set[str] = set()  # instruments held in the portfolios
        self.new_symbols: list[str] = []  # held, not yet subscribed

    async def call(self, kind: str, **params) -> dict:
        """Send a request and wait for its reply; stream messages meanwhile are handled."""
        request_id = next(self.ids)
        await self.ws.send(json.dumps({"type": kind, "id": request_id, **params}))
        while True:
            message = json.loads(await self.ws.recv())
            if message.get("id") == request_id and message["type"] in ("reply", "error"):
                if message["type"] == "error":
                    raise RuntimeError(f"{kind}: {message['code']}: {message['message']}")
                return message["result"]
            await self.handle(message)

    async def handle(self, message: dict) -> None:
        kind = message["type"]
        if kind == "error":
            print(f"error {message['code']}: {message['message']}", file=sys.stderr)
        if kind not in ("snapshot", "update"):
            return  # welcome, heartbeat, replies to our snapshot requests
        stream, data = message["stream"], message["data"]
        if kind == "update" and message["stream_seq"] != self.last_seq.get(stream, 0) + 1:
            # A gap: what we show may be stale. Ask for the stream's current state.
            request = {"type": "snapshot", "id": next(self.ids), "stream": stream}
            await self.ws.send(json.dumps(request))
        self.last_seq[stream] = message["stream_seq"]
        if data is None:
            print(f"{stream}: no data yet", flush=True)
        elif stream.startswith("quotes:"):
            print(f"quote {data['symbol']} {data['price']} as of {data['as_of']}", flush=True)
        elif stream.startswith("portfolio:"):
            print(f"portfolio {data['name']} {data['total']} {data['base_currency']}", flush=True)
            for holding in data["holdings"]:
                if holding["symbol"] not in self.symbols:
                    self.symbols.add(holding["symbol"])
                    self.new_symbols.append(holding["symbol"])


async def run(url: str, token: str, max_rate: float) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(url, additional_headers=headers, open_timeout=10) as ws:
        client = Client(ws)
        for portfolio in (await client.call("list_portfolios"))["portfolios"]:
            stream = f"portfolio:{portfolio['id']}"
            await client.call("subscribe", stream=stream, max_rate=max_rate)
        while True:
            await client.handle(json.loads(await ws.recv()))
            while client.new_symbols:  # follow the quotes of what the portfolios hold
                stream = f"quotes:{client.new_symbols.pop()}"
                await client.call("subscribe", stream=stream, max_rate=max_rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="e.g. ws://127.0.0.1:8000/ws/v1/")
    parser.add_argument("--max-rate", type=float, default=2, help="updates a second per stream")
    args = parser.parse_args()
    token = os.environ.get("LIVEFOLIO_TOKEN")
    if not token:
        parser.error("set LIVEFOLIO_TOKEN to an API token from /settings/tokens/")
    try:
        asyncio.run(run(args.url, token, args.max_rate))
    except KeyboardInterrupt:
        pass
    except websockets.ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd else "none"
        sys.exit(f"connection closed by the server (code {code})")


if __name__ == "__main__":
    main()
