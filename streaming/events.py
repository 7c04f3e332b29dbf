"""The only publisher to the channel layer, and the one place that knows group names.

Call :func:`publish` only after the data it describes is committed (``transaction.on_commit``).
Delivery through the channel layer is at most once: clients stay correct through snapshots and
sequence numbers, so a failed publish is logged and never undoes or retries the stored data.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

# The channel-layer message type; consumers handle it in ``livefolio_event``.
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
        async_to_sync(apublish)(messages)
    except Exception:
        log.exception("events: publishing %d messages failed", len(messages))


async def apublish(messages: list[tuple[str, dict[str, Any]]]) -> None:
    """Send each ``(group, payload)`` in order; one Redis round-trip when the layer batches."""
    layer = get_channel_layer()
    events = [(group, {"type": EVENT, "payload": payload}) for group, payload in messages]
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
