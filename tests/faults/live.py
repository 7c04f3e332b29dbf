"""A client that follows docs/protocol.md as the browser page does: snapshot, then deltas by
``seq``; a gap asks for a resync; a dropped connection reconnects with backoff and full jitter."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import random
import re
import urllib.parse
import urllib.request
from typing import Any

import websockets
from websockets.asyncio.client import connect

from tests.conftest import PASSWORD


def log_in(base_url: str, username: str, password: str = PASSWORD) -> str:
    """Log in through the real login form; returns the Cookie header of the session."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base_url}/login/", timeout=20).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    data = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token}
    ).encode()
    request = urllib.request.Request(
        f"{base_url}/login/", data=data, headers={"Referer": f"{base_url}/login/"}
    )
    opener.open(request, timeout=20)
    cookies = {c.name: c.value for c in jar}
    assert "sessionid" in cookies, f"{username} could not log in"
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://") + "/ws/portfolio/"


async def open_socket(base_url: str, cookie: str, **kwargs: Any):
    return await connect(
        ws_url(base_url),
        origin=base_url,
        additional_headers={"Cookie": cookie},
        open_timeout=10,
        **kwargs,
    )


class LiveClient:
    """Keeps ``portfolios`` (id -> latest state) correct, whatever the server goes through."""

    def __init__(self, base_url: str, cookie: str) -> None:
        self.base_url = base_url
        self.cookie = cookie
        self.portfolios: dict[int, dict[str, Any]] = {}
        self.connects = 0
        self.reconnect_delays: list[float] = []
        self.closes: list[int | None] = []
        self.task: asyncio.Task | None = None

    def start(self) -> LiveClient:
        self.task = asyncio.create_task(self.run())
        return self

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                async with await open_socket(self.base_url, self.cookie) as socket:
                    self.connects += 1
                    last_seq, synced = 0, False
                    async for raw in socket:
                        message = json.loads(raw)
                        gap = message["seq"] != last_seq + 1
                        last_seq = message["seq"]
                        if message["type"] == "snapshot":
                            synced, attempt = True, 0
                            self.portfolios = {p["id"]: p for p in message["portfolios"]}
                        elif gap or not synced:
                            synced = False
                            await socket.send(json.dumps({"type": "resync"}))
                        elif message["type"] == "valuation":
                            self.portfolios[message["portfolio"]["id"]] = message["portfolio"]
                    self.closes.append(socket.close_code)
            except websockets.ConnectionClosed as exc:
                self.closes.append(exc.rcvd.code if exc.rcvd else None)
            except (OSError, websockets.WebSocketException, TimeoutError):
                self.closes.append(None)
            attempt += 1
            cap = min(30.0, 0.5 * 2 ** (attempt - 1))
            delay = random.uniform(0.25, cap)  # full jitter, as live.js
            self.reconnect_delays.append(delay)
            await asyncio.sleep(delay)

    def total(self, portfolio_id: int) -> str | None:
        state = self.portfolios.get(portfolio_id)
        return state["total"] if state else None


class ApiLiveClient(LiveClient):
    """A bot on API v1 (docs/api.md) that keeps one portfolio stream correct: bearer token,
    subscribe, snapshot then updates by ``stream_seq`` (a gap asks for a snapshot), and on any
    close it reconnects with backoff and full jitter and subscribes again. Started and stopped
    like the page client."""

    def __init__(self, base_url: str, token: str, portfolio_id: int) -> None:
        self.url = base_url.replace("http://", "ws://") + "/ws/v1/"
        self.token = token
        self.stream = f"portfolio:{portfolio_id}"
        self.portfolios: dict[int, dict[str, Any]] = {}
        self.closes: list[int | None] = []
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        attempt = 0
        while True:
            headers = {"Authorization": f"Bearer {self.token}"}
            try:
                async with connect(self.url, additional_headers=headers, open_timeout=10) as ws:
                    await ws.send(json.dumps({"type": "subscribe", "id": 1, "stream": self.stream}))
                    stream_seq = None
                    async for raw in ws:
                        message = json.loads(raw)
                        if message.get("stream") != self.stream:
                            continue
                        if message["type"] == "snapshot":
                            attempt, stream_seq = 0, message["stream_seq"]
                            self.portfolios[message["data"]["id"]] = message["data"]
                        elif message["type"] == "update":
                            if stream_seq is None or message["stream_seq"] != stream_seq + 1:
                                stream_seq = None
                                request = {"type": "snapshot", "id": 2, "stream": self.stream}
                                await ws.send(json.dumps(request))
                                continue
                            stream_seq = message["stream_seq"]
                            self.portfolios[message["data"]["id"]] = message["data"]
                    self.closes.append(ws.close_code)
            except websockets.ConnectionClosed as exc:
                self.closes.append(exc.rcvd.code if exc.rcvd else None)
            except (OSError, websockets.WebSocketException, TimeoutError):
                self.closes.append(None)
            attempt += 1
            await asyncio.sleep(random.uniform(0.25, min(30.0, 0.5 * 2 ** (attempt - 1))))


async def eventually(predicate, *, timeout: float, what: str, interval: float = 0.1):  # noqa: ASYNC109
    """Wait in the event loop until ``predicate()`` is true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"not within {timeout} s: {what}")
