"""WebSocket consumers: adapt the channel layer and the wire protocol to one connection."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from portfolio import selectors
from streaming import events, protocol

log = logging.getLogger(__name__)


class ProtocolConsumer(AsyncWebsocketConsumer):
    """Shared framing: sequence numbers, error replies, frame-size and JSON checks."""

    seq = 0

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs aclose_old_connections() through sync_to_async (a thread hop) before
        # every handler. Channel-layer events touch no database, so they skip it: the hop was
        # the largest single cost per delivered message (docs/performance.md).
        if message["type"] == events.EVENT:
            handler = getattr(self, "livefolio_event", None)
            if handler is not None:
                await handler(message)
                return
        await super().dispatch(message)

    async def send_message(self, payload: dict[str, Any]) -> None:
        self.seq += 1
        await self.send(text_data=json.dumps(protocol.envelope(payload, seq=self.seq)))

    async def send_error(self, code: str, message: str) -> None:
        await self.send_message(protocol.error(code=code, message=message))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if bytes_data is not None:
            await self.send_error(protocol.ERROR_BINARY_NOT_SUPPORTED, "send JSON text frames")
            return
        if len(text_data.encode()) > settings.LIVEFOLIO_MAX_FRAME_BYTES:
            limit = settings.LIVEFOLIO_MAX_FRAME_BYTES
            await self.send_error(
                protocol.ERROR_FRAME_TOO_LARGE, f"frames are limited to {limit} bytes"
            )
            await self.close(code=protocol.CLOSE_FRAME_TOO_LARGE)
            return
        try:
            message = json.loads(text_data)
        except ValueError as exc:
            await self.send_error(protocol.ERROR_INVALID_JSON, f"not valid JSON: {exc}")
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self.send_error(protocol.ERROR_BAD_MESSAGE, 'expected an object with a "type"')
            return
        await self.receive_message(message)

    async def receive_message(self, message: dict[str, Any]) -> None:
        raise NotImplementedError


class PortfolioConsumer(ProtocolConsumer):
    """The live portfolio page: the user's portfolios, snapshot first, then valuations.

    Valuations are conflated per portfolio (DESIGN.md section 6): at most one per
    ``valuation_interval`` reaches this connection; one that comes sooner waits, and a newer one
    replaces it while it waits, so the latest value always arrives, at most one interval late.
    """

    valuation_interval = 0.5  # seconds: at most 2 valuations per portfolio per second

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sent_at: dict[int, float] = {}  # portfolio id -> loop time of its last valuation
        self._waiting: dict[int, dict[str, Any]] = {}  # portfolio id -> newest unsent valuation
        self._timers: dict[int, asyncio.Task] = {}

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()  # before accept: the handshake is refused (HTTP 403)
            return
        self.user_id = user.id
        self.group = events.user_group(user.id)
        # Join before reading the snapshot so no valuation committed in between is missed.
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_snapshot()

    async def disconnect(self, code: int) -> None:
        for timer in self._timers.values():
            timer.cancel()
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def send_snapshot(self) -> None:
        # Waiting valuations arrived before this read: the snapshot is at least as new.
        self._waiting.clear()
        states = await database_sync_to_async(selectors.portfolio_states_for_user)(
            user_id=self.user_id
        )
        await self.send_message(protocol.snapshot(portfolios=states))

    async def receive_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "resync":
            await self.send_snapshot()
        elif kind == "ping":
            await self.send_message(protocol.pong())
        else:
            await self.send_error(protocol.ERROR_UNKNOWN_TYPE, f"unknown message type {kind!r}")

    async def livefolio_event(self, event: dict[str, Any]) -> None:
        payload = event["payload"]
        if payload.get("type") != "valuation":
            await self.send_message(payload)
            return
        portfolio = payload["portfolio"]["id"]
        if portfolio in self._waiting:
            self._waiting[portfolio] = payload  # the timer will send this newer one
            return
        loop = asyncio.get_running_loop()
        wait = self._sent_at.get(portfolio, -math.inf) + self.valuation_interval - loop.time()
        if wait <= 0:
            await self._send_valuation(portfolio, payload)
            return
        self._waiting[portfolio] = payload
        self._timers[portfolio] = asyncio.create_task(self._send_later(portfolio, wait))

    async def _send_later(self, portfolio: int, wait: float) -> None:
        await asyncio.sleep(wait)
        self._timers.pop(portfolio, None)
        payload = self._waiting.pop(portfolio, None)
        if payload is not None:  # None: a snapshot superseded it
            await self._send_valuation(portfolio, payload)

    async def _send_valuation(self, portfolio: int, payload: dict[str, Any]) -> None:
        self._sent_at[portfolio] = asyncio.get_running_loop().time()
        await self.send_message(payload)
