"""Helpers for API v1 tests: connect through the real ASGI app, check frames against AsyncAPI."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Any

import yaml
from channels.db import database_sync_to_async
from channels.routing import ProtocolTypeRouter
from channels.testing import WebsocketCommunicator
from jsonschema import Draft7Validator

from streaming import tokens
from streaming.routing import websocket_application
from tests.conftest import ROOT

# The WebSocket side of portfolio.asgi (that module is the server's start-up: it claims the
# Redis namespace).
application = ProtocolTypeRouter({"websocket": websocket_application()})

API_PATH = "/ws/v1/"
ASYNCAPI = ROOT / "docs" / "asyncapi.yaml"
_token_names = itertools.count(1)


def api_communicator(
    *, token: str | None = None, origin: str | None = None, cookie: str | None = None
) -> WebsocketCommunicator:
    """A client of /ws/v1/: a bot (no Origin) unless ``origin`` is given."""
    headers = [(b"host", b"127.0.0.1:8000")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if cookie is not None:
        headers.append((b"cookie", cookie.encode()))
    return WebsocketCommunicator(application, API_PATH, headers=headers)


async def new_token(user, name: str = "bot") -> str:
    _token, raw = await database_sync_to_async(tokens.token_create)(user=user, name=name)
    return raw


async def connect(user=None, *, token: str | None = None, **kwargs) -> WebsocketCommunicator:
    """A bot connection authenticated by a bearer token (a new one for ``user``); welcome read."""
    if token is None:
        token = await new_token(user, name=f"bot {next(_token_names)}")
    comm = api_communicator(token=token, **kwargs)
    connected, _ = await comm.connect()
    assert connected
    welcome = await comm.receive_json_from(timeout=5)
    assert welcome["type"] == "welcome", welcome
    return comm


async def request(comm: WebsocketCommunicator, **frame: Any) -> dict[str, Any]:
    """Send a request; return the next frame (its reply or error)."""
    await comm.send_json_to(frame)
    return await comm.receive_json_from(timeout=5)


async def closed_with(comm: WebsocketCommunicator) -> int:
    """The close code the server sent next."""
    output = await comm.receive_output(timeout=5)
    assert output["type"] == "websocket.close", output
    return output["code"]


def _resolve(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


@functools.cache
def asyncapi_document() -> dict[str, Any]:
    return yaml.safe_load(Path(ASYNCAPI).read_text())


@functools.cache
def server_message_validators() -> dict[str, Draft7Validator]:
    """A JSON-schema validator per server frame ``type``, from the AsyncAPI document's send
    operation (so a frame type the document does not list has no validator)."""
    doc = asyncapi_document()
    validators = {}
    for ref in doc["operations"]["sendServerMessage"]["messages"]:
        message = _resolve(doc, _resolve(doc, ref["$ref"])["$ref"])
        schema_ref = message["payload"]["$ref"]
        kind = _resolve(doc, schema_ref)["properties"]["type"]["const"]
        schema = {"$ref": schema_ref, "components": doc["components"]}
        Draft7Validator.check_schema(schema)
        validators[kind] = Draft7Validator(schema)
    return validators


def assert_documented(frame: dict[str, Any]) -> None:
    """The frame matches the AsyncAPI schema of its type (every error listed, with its path)."""
    validator = server_message_validators().get(frame.get("type"))
    assert validator is not None, f"frame type {frame.get('type')!r} is not in docs/asyncapi.yaml"
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(frame)]
    assert not errors, f"{frame} does not match docs/asyncapi.yaml: {errors}"


def documented_error_codes() -> set[str]:
    schema = asyncapi_document()["components"]["schemas"]["Error"]
    return set(schema["properties"]["code"]["enum"])
