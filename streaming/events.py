"""The only publisher to the channel layer, and the one place that knows group names.

Call :func:`publish` only after the data it describes is committed (``transaction.on_commit``).
Delivery through the channel layer is at most once: clients stay correct through snapshots and
sequence numbers, so a failed publish is logged and never undoes or retries the stored data.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

# The channel-layer message type; consumers handle it in ``livefolio_event``.
EVENT = "livefolio.event"


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
