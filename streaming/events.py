"""The only publisher to the channel layer, and the one place that knows group names.

Call :func:`publish` only after the data it describes is committed (``transaction.on_commit``).
Delivery through the channel layer is at most once: clients stay correct through snapshots and
sequence numbers, so a failed publish is logged and never undoes or retries the stored data.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

from streaming import protocol

log = logging.getLogger(__name__)

# The channel-layer message type; consumers handle it in ``on_event``.
EVENT = "livefolio.event"
# Tells a user's sockets that one of their sessions ended; handled in ``livefolio_session_ended``.
SESSION_ENDED = "livefolio.session_ended"
TOKEN_REVOKED = "livefolio.token_revoked"


def user_group(user_id: int) -> str:
    """Everything one user may see (their portfolios' valuations) goes to this group only."""
    return f"user.{user_id}"


def instrument_group(instrument_id: int) -> str:
    """Public market data of one instrument (quotes, trades, book)."""
    return f"instrument.{instrument_id}"


def publish(messages: list[tuple[str, dict[str, Any]]]) -> None:
    """Send each ``(group, payload)`` from synchronous code, all in one event-loop hop."""
    if not messages:
        return
    try:
        _run(apublish, messages)
    except Exception:
        log.exception("events: publishing %d messages failed", len(messages))


def portfolio_recomputed(sender: Any, *, portfolio_id: int, owner_id: int, **kwargs: Any) -> None:
    """The domain's ``portfolio_recomputed`` (after commit): the owner's pages and bots get the
    portfolio's new valuation. Connected in streaming/apps.py."""
    from portfolio.selectors import live_states

    states = live_states.portfolio_states(portfolio_ids=[portfolio_id])
    publish([(user_group(owner_id), protocol.valuation(portfolio=state)) for state in states])


_threads = threading.local()


def _run(function: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
    """Run the async ``function(*args)`` to completion from synchronous code.

    With a Redis channel layer, on an event loop this thread keeps between calls: the layer
    keeps one Redis connection per loop, and ``async_to_sync`` starts a new loop for every call
    from a thread without one (a Celery worker's), so a new Redis connection for every publish.
    The in-memory layer (the embedded default) must be used
    from the loop its consumers run on, which ``async_to_sync`` finds.
    """
    if _loop_running() or isinstance(get_channel_layer(), InMemoryChannelLayer):
        async_to_sync(function)(*args)  # in a running loop's thread it raises, saying why
        return
    for attempt in (1, 2):
        loop = getattr(_threads, "loop", None)
        if loop is None or _threads.pid != os.getpid():
            loop = _threads.loop = asyncio.new_event_loop()
            _threads.pid = os.getpid()
        try:
            loop.run_until_complete(function(*args))
            return
        except Exception:
            # A kept connection may be stale (Redis restarted): once more on a new loop.
            _threads.loop = None
            with contextlib.suppress(Exception):
                loop.close()
            if attempt == 2:
                raise


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# An encoded object's fields that travel beside its text: a portfolio's id (whose socket) and
# valued_at (consumers drop a valuation older than the last they sent).
ROUTED = ("id", "valued_at")


def layer_message(payload: dict[str, Any]) -> dict[str, Any]:
    """The channel-layer message for ``payload``. Its object fields (a valuation's portfolio)
    travel as JSON text encoded here, once, with what consumers route and order on beside it
    (``ROUTED``): daphne then neither decodes nor re-encodes them per socket.
    :func:`payload_of` undoes it."""
    plain, encoded = {}, {}
    for key, value in payload.items():
        if isinstance(value, dict):
            encoded[key] = protocol.encode(value)
            plain[key] = {name: value[name] for name in ROUTED if name in value}
        else:
            plain[key] = value
    message = {"type": EVENT, "payload": plain}
    if encoded:
        message["encoded"] = encoded
    return message


def payload_of(message: dict[str, Any]) -> dict[str, Any]:
    """The payload of a channel-layer event, its encoded fields as :class:`protocol.Encoded`."""
    payload = message["payload"]
    encoded = message.get("encoded")
    if not encoded:
        return payload
    payload = dict(payload)
    for key, text in encoded.items():
        payload[key] = protocol.Encoded(text, **payload.get(key, {}))
    return payload


async def apublish(messages: list[tuple[str, dict[str, Any]]]) -> None:
    """Send each ``(group, payload)`` in order; one Redis round-trip when the layer batches."""
    layer = get_channel_layer()
    events = [(group, layer_message(payload)) for group, payload in messages]
    send_many = getattr(layer, "group_send_many", None)
    if send_many is not None:
        await send_many(events)
        return
    # The in-memory layer (embedded default) and the core Redis layer send one at a time.
    for group, event in events:
        await layer.group_send(group, event)


def session_fingerprint(session_key: str) -> str:
    """What travels through Redis instead of the session key itself."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32]


def session_ended(*, user_id: int, session_key: str) -> None:
    """Close the sockets opened with this session (the user logged out), from sync code."""
    message = {"type": SESSION_ENDED, "session": session_fingerprint(session_key)}
    try:
        async_to_sync(get_channel_layer().group_send)(user_group(user_id), message)
    except Exception:
        log.exception("events: telling user %s's sockets their session ended failed", user_id)


def token_revoked(*, user_id: int, token_id: int) -> None:
    """Close the API connections opened with this token (it was revoked), from sync code."""
    try:
        async_to_sync(get_channel_layer().group_send)(
            user_group(user_id), {"type": TOKEN_REVOKED, "token": token_id}
        )
    except Exception:
        log.exception("events: telling user %s's API connections a token ended failed", user_id)
