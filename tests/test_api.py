"""API v1 (/ws/v1/) through the real ASGI app and the real Redis channel layer."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from portfolio.asgi import application
from streaming import events, limits, marketdata, protocol, tokens
from tests.websocket import ORIGIN, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

API = "/ws/v1/"


def api_communicator(*, token: str | None = None, origin: str | None = None, cookie=None):
    headers = [(b"host", b"127.0.0.1:8000")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if cookie is not None:
        headers.append((b"cookie", cookie.encode()))
    return WebsocketCommunicator(application, API, headers=headers)


async def new_token(user, name: str = "bot") -> str:
    _token, raw = await database_sync_to_async(tokens.token_create)(user=user, name=name)
    return raw


async def connect(user=None, *, token: str | None = None, **kwargs):
    """A connection authenticated by a bearer token (a new one for ``user``); welcome read."""
    if token is None:
        token = await new_token(user)
    comm = api_communicator(token=token, **kwargs)
    connected, _ = await comm.connect()
    assert connected
    welcome = await comm.receive_json_from()
    assert welcome["type"] == "welcome", welcome
    return comm


async def request(comm, **frame):
    await comm.send_json_to(frame)
    return await comm.receive_json_from(timeout=5)


async def test_bearer_token_authenticates_and_ping_is_answered_with_the_id(world, redis_client):
    comm = await connect(world["users"]["alice"])
    reply = await request(comm, type="ping", id="p-1")
    assert (reply["type"], reply["id"], reply["request"]) == ("reply", "p-1", "ping")
    await comm.disconnect()
