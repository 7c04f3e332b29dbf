"""WebSocket consumers: adapt the channel layer and the wire protocol to one connection."""

from __future__ import annotations

import json
import logging
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
    """The live portfolio page: the user's portfolios, snapshot first, then valuations."""

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
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def send_snapshot(self) -> None:
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
        await self.send_message(event["payload"])
