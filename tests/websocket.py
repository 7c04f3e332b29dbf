"""Connecting the real ASGI application (origin check, session auth) in-process."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import websockets
from channels.routing import ProtocolTypeRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from streaming.routing import websocket_application

# The WebSocket side of portfolio.asgi (that module is the server's start-up: it claims the
# Redis namespace).
application = ProtocolTypeRouter({"websocket": websocket_application()})

ORIGIN = "http://127.0.0.1:8000"


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def communicator(path: str, *, cookie: str | None = None, origin: str | None = ORIGIN):
    headers = [(b"host", b"127.0.0.1:8000")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if cookie is not None:
        headers.append((b"cookie", cookie.encode()))
    return WebsocketCommunicator(application, path, headers=headers)


async def open_portfolio_page(user):
    """A logged-in /ws/portfolio/ socket with its first frame (the snapshot) read."""
    from channels.db import database_sync_to_async

    cookie = await database_sync_to_async(session_cookie)(user)
    comm = communicator("/ws/portfolio/", cookie=cookie)
    connected, _ = await comm.connect()
    assert connected
    snapshot = await comm.receive_json_from(timeout=10)
    assert snapshot["type"] == "snapshot"
    return comm, snapshot, cookie


def as_sent(message: dict) -> dict:
    """A channel-layer event's payload as a socket sends it (encoded parts decoded)."""
    import json

    from streaming import events, protocol

    return json.loads(protocol.encode(events.payload_of(message)))


# -- clients of a real daphne (tests/test_websocket_hostile.py) -------------------------------


class LiveServer:
    """A running daphne (``python -m streaming.serve``) and what a client needs to reach it:
    the page and API limits it runs with, and the token that reads its /metrics."""

    METRICS_TOKEN = "hostile-frames-metrics-token"

    def __init__(self, base_url: str, process, *, page_limit: int, api_limit: int) -> None:
        self.base_url = base_url
        self.ws_url = base_url.replace("http://", "ws://")
        self.process = process
        self.page_limit = page_limit
        self.api_limit = api_limit

    async def open(
        self, path: str, *, cookie: str | None = None, origin: bool = True, headers=None
    ):
        """A WebSocket to ``path``: with this site's Origin (a browser) unless ``origin`` is
        False (a bot), with the session ``cookie`` if given."""
        headers = dict(headers or {})
        if cookie is not None:
            headers["Cookie"] = cookie
        return await websockets.connect(
            self.ws_url + path,
            origin=self.base_url if origin else None,
            additional_headers=headers,
            compression=None,
            proxy=None,
            open_timeout=10,
            max_size=None,
        )

    async def open_page(self, cookie: str, path: str = "/ws/portfolio/"):
        """A page socket with its snapshot read."""
        ws = await self.open(path, cookie=cookie)
        first = await next_json(ws)
        assert first["type"] == "snapshot", first
        return ws

    async def open_api(self, token: str):
        """A bot's API socket (bearer token, no Origin) with its welcome read."""
        ws = await self.open("/ws/v1/", origin=False, headers={"Authorization": f"Bearer {token}"})
        welcome = await next_json(ws)
        assert welcome["type"] == "welcome" and welcome["user"], welcome
        return ws

    def metrics(self) -> dict[str, float]:
        """This daphne's /metrics samples by name with labels (``name{label="value"}``)."""
        request = urllib.request.Request(
            self.base_url + "/metrics", headers={"Authorization": f"Bearer {self.METRICS_TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=20) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def open_sockets(self) -> dict[str, float]:
        """What /metrics says is open: sockets per endpoint, and page sockets watched."""
        samples = self.metrics()
        counts = {
            endpoint: samples.get(f'livefolio_ws_connections{{endpoint="{endpoint}"}}', 0.0)
            for endpoint in ("portfolio", "instrument", "api")
        }
        counts["watched"] = samples.get("livefolio_ws_watched_sockets")
        return counts

    async def wait_open_sockets(self, expected: dict[str, float], wait: float = 15) -> None:
        """Until /metrics counts exactly ``expected`` (0 for what is not named)."""
        want = {"portfolio": 0, "instrument": 0, "api": 0, "watched": 0} | expected
        deadline = time.monotonic() + wait
        while True:
            counts = await asyncio.to_thread(self.open_sockets)
            if counts == want:
                return
            assert time.monotonic() < deadline, f"/metrics counts {counts}, expected {want}"
            await asyncio.sleep(0.2)

    async def assert_clean(self, *, cookie: str, tokens: list[str]) -> None:
        """Everything closed sockets held is given back: /metrics counts nothing open; the user
        opens all their page sockets and API connections again (every slot was freed) and
        /metrics counts exactly those; once they close, nothing again."""
        await self.wait_open_sockets({})
        pages = [await self.open_page(cookie) for _ in range(self.page_limit)]
        bots = [await self.open_api(token) for token in tokens[: self.api_limit]]
        for ws in [*pages, *bots]:
            await ws.send('{"type": "ping", "id": 1}')
            assert (await next_json(ws))["type"] in ("pong", "reply")
        await self.wait_open_sockets(
            {"portfolio": len(pages), "api": len(bots), "watched": len(pages)}
        )
        for ws in [*pages, *bots]:
            await ws.close()
        await self.wait_open_sockets({})

    def assert_no_crash(self) -> None:
        """daphne never saw the application fail (it would have closed 1011)."""
        log = self.process.output()
        assert "Exception inside application" not in log, log
        assert "Attempt to send on a closed protocol" not in log, log


async def next_json(ws, wait: float = 10) -> dict:
    """The next frame, parsed."""
    return json.loads(await asyncio.wait_for(ws.recv(), wait))


async def frames_until_close(ws, wait: float = 10) -> tuple[list[dict], int | None]:
    """Every frame the server sends until it closes, and the close code it sent (None: the
    connection was dropped without a close frame)."""
    frames = []
    try:
        while True:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), wait)))
    except websockets.ConnectionClosed as closed:
        return frames, (closed.rcvd.code if closed.rcvd is not None else None)
