"""Connecting the real ASGI application (origin check, session auth) in-process."""

from __future__ import annotations

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
