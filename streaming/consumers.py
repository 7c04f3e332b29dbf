"""WebSocket consumers: adapt the channel layer and the wire protocol to one connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from importlib import import_module
from typing import Any

import redis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import SESSION_KEY

from portfolio import selectors
from portfolio.health import WS_CONNECTIONS, WS_MESSAGES_SENT, WS_REJECTED
from portfolio.security import context_id, new_id
from streaming import events, protocol
from streaming.flow import Conflator, TokenBucket, UserConnections

log = logging.getLogger(__name__)


def session_user_id(session_key: str | None) -> str | None:
    """The user id a session still belongs to; None once it is gone or expired."""
    if not session_key:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key)
    return store.get(SESSION_KEY)


class ProtocolConsumer(AsyncWebsocketConsumer):
    """Shared framing: sequence numbers, error replies, frame-size and JSON checks, a flood
    limit per connection and a cap on open connections per user."""

    endpoint = "protocol"
    seq = 0
    connection_cap: UserConnections | None = None

    async def __call__(self, scope, receive, send):
        self.connection_id = new_id("ws")
        context_id.set(self.connection_id)  # every log line of this socket carries its id
        try:
            await super().__call__(scope, receive, send)
        except (redis.RedisError, OSError) as exc:
            # The channel layer's Redis went away: this socket can no longer hear its groups.
            # Close with 4503 so the client reconnects (with backoff) and gets a fresh snapshot.
            log.warning("channel layer lost (%s); closing with 4503", exc)
            with contextlib.suppress(Exception):
                await self.disconnect(protocol.CLOSE_TRY_AGAIN_LATER)
            await self.forget()
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": protocol.CLOSE_TRY_AGAIN_LATER})
        except asyncio.CancelledError:
            # Cancelled by the server (it gave up waiting for a disconnect): give back the cap
            # slot and the group membership now rather than leaving them to expire.
            with contextlib.suppress(Exception):
                await self.disconnect(1001)
            with contextlib.suppress(Exception):
                await self.forget()
            raise
        finally:
            # channels-redis keeps an empty receive queue per channel a cancelled receive()
            # leaves behind (~3 KB per connection, measured over 1,000 reconnects): drop ours.
            buffers = getattr(getattr(self, "channel_layer", None), "receive_buffer", None)
            if buffers is not None and hasattr(self, "channel_name"):
                buffers.pop(self.channel_name, None)

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        self.bucket = TokenBucket(
            rate=settings.LIVEFOLIO_WS_RATE, burst=settings.LIVEFOLIO_WS_BURST
        )
        self.dropped = 0
        self.capped_user: int | None = None
        self.counted = False
        await super().websocket_connect(message)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        await self.forget()
        await super().websocket_disconnect(message)

    async def forget(self) -> None:
        """Give back the connection-cap slot and the connection count (once)."""
        if getattr(self, "capped_user", None) is not None:
            user, self.capped_user = self.capped_user, None
            await self.connection_cap.release(user, self.channel_name)
        if getattr(self, "counted", False):
            WS_CONNECTIONS.labels(self.endpoint).dec()
            self.counted = False

    async def accept_for(self, user_id: int) -> bool:
        """Accept the handshake unless the user is at the cap; then say why and close 4409."""
        if self.connection_cap is not None:
            if not await self.connection_cap.acquire(user_id, self.channel_name):
                WS_REJECTED.labels(protocol.ERROR_TOO_MANY_CONNECTIONS).inc()
                await self.accept()
                limit = self.connection_cap.limit
                await self.send_error(
                    protocol.ERROR_TOO_MANY_CONNECTIONS,
                    f"at most {limit} open connections per user; close another tab first",
                )
                await self.close(code=protocol.CLOSE_TOO_MANY_CONNECTIONS)
                return False
            self.capped_user = user_id
        await self.accept()
        WS_CONNECTIONS.labels(self.endpoint).inc()
        self.counted = True
        return True

    async def send_message(self, payload: dict[str, Any]) -> None:
        self.seq += 1
        WS_MESSAGES_SENT.labels(payload["type"]).inc()
        await self.send(text_data=json.dumps(protocol.envelope(payload, seq=self.seq)))

    async def send_error(self, code: str, message: str) -> None:
        await self.send_message(protocol.error(code=code, message=message))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.bucket.allow():
            await self.reject_flood()
            return
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

    async def reject_flood(self) -> None:
        """Drop the frame and say so; a client that keeps flooding is closed with 4429."""
        self.dropped += 1
        WS_REJECTED.labels(protocol.ERROR_RATE_LIMITED).inc()
        rate = settings.LIVEFOLIO_WS_RATE
        await self.send_error(
            protocol.ERROR_RATE_LIMITED,
            f"at most {rate} messages per second (bursts of {self.bucket.burst}); "
            "this one was dropped",
        )
        if self.dropped >= settings.LIVEFOLIO_WS_BURST:
            log.warning("closing a flooding connection after %d dropped frames", self.dropped)
            await self.close(code=protocol.CLOSE_RATE_LIMITED)

    async def receive_message(self, message: dict[str, Any]) -> None:
        raise NotImplementedError


class PortfolioConsumer(ProtocolConsumer):
    """The live portfolio page: the user's portfolios, snapshot first, then valuations."""

    endpoint = "portfolio"
    connection_cap = UserConnections(scope="portfolio", limit_setting="LIVEFOLIO_WS_MAX_PER_USER")

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()  # before accept: the handshake is refused (HTTP 403)
            return
        self.user_id = user.id
        self.session_key = self.scope["session"].session_key
        self.group = events.user_group(user.id)
        self.conflator = Conflator(
            interval=1 / settings.LIVEFOLIO_WS_MAX_UPDATES, send=self.send_message
        )
        # Join before reading the snapshot so no valuation committed in between is missed.
        await self.channel_layer.group_add(self.group, self.channel_name)
        if not await self.accept_for(user.id):
            await self.channel_layer.group_discard(self.group, self.channel_name)
            return
        await self.send_snapshot()
        self.watchdog = asyncio.create_task(self.watch())

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "watchdog"):
            self.watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watchdog
        if hasattr(self, "conflator"):
            self.conflator.discard_pending()
        if hasattr(self, "group"):
            with contextlib.suppress(Exception):  # Redis may be the reason we are closing
                await self.channel_layer.group_discard(self.group, self.channel_name)

    async def watch(self) -> None:
        """Close when the session has ended (checked every LIVEFOLIO_SESSION_CHECK_SECONDS);
        renew the group membership and the connection-cap entry more often (both are lost if
        Redis restarts empty, and a cap entry expires unless renewed)."""
        check_every = settings.LIVEFOLIO_SESSION_CHECK_SECONDS
        period = min(UserConnections.REFRESH_SECONDS, check_every)
        next_check = time.monotonic() + check_every
        while True:
            await asyncio.sleep(period)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + check_every
                try:
                    owner = await database_sync_to_async(session_user_id)(self.session_key)
                except Exception as exc:  # database down: keep serving what we have
                    log.warning("session check failed: %s", exc)
                    owner = str(self.user_id)
                if owner != str(self.user_id):
                    await self.end_session()
                    return
            try:
                await self.channel_layer.group_add(self.group, self.channel_name)
                await self.connection_cap.refresh(self.user_id, self.channel_name)
            except Exception as exc:
                log.warning("renewing group membership failed: %s", exc)

    async def end_session(self) -> None:
        await self.send_error(protocol.ERROR_SESSION_ENDED, "your session ended; log in again")
        await self.close(code=protocol.CLOSE_UNAUTHENTICATED)

    async def send_snapshot(self) -> None:
        states = await database_sync_to_async(selectors.portfolio_states_for_user)(
            user_id=self.user_id
        )
        self.conflator.discard_pending()  # the snapshot is newer than anything queued
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
        if payload["type"] == "valuation":
            # A slow reader gets the latest valuation per portfolio, never a backlog.
            await self.conflator.offer(("valuation", payload["portfolio"]["id"]), payload)
        else:
            await self.send_message(payload)

    async def livefolio_session_ended(self, event: dict[str, Any]) -> None:
        if self.session_key and event["session"] == events.session_fingerprint(self.session_key):
            await self.end_session()
