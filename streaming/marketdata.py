"""A small cache of recent trades and the latest order book per instrument, for API snapshots.

The feed side calls the writers (:func:`trade_record`, :func:`book_store`) for each trade or book
it sees, then publishes the returned message to ``events.instrument_group(instrument_id)``::

    message = marketdata.trade_record(instrument_id=..., symbol=..., price=..., size=...,
                                      side="buy", trade_id="123", exchange_ts=...)
    events.publish([(events.instrument_group(instrument_id), message)])

The API reads it back (:func:`recent_trades`, :func:`latest_book`) to send a snapshot when a client
subscribes to ``trades:<symbol>`` or ``book:<symbol>``. With ``REDIS_URL`` the cache lives in
Redis, shared by every process (keys ``<prefix>:md:...``, the deployment's namespace, expiring
after a day without writes: docs/architecture.md); in the embedded default it lives in memory.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict, deque
from datetime import datetime
from decimal import Decimal
from typing import Any

import redis
from django.conf import settings

from streaming import flow, namespace, protocol

RECENT_TRADES = 50  # trades kept per instrument
EXPIRY_SECONDS = 24 * 3600  # an instrument whose feed stopped leaves no cache behind

# The embedded default's in-process cache (no Redis there, and only one process).
_memory_trades: dict[int, deque[dict[str, Any]]] = defaultdict(lambda: deque(maxlen=RECENT_TRADES))
_memory_books: dict[int, dict[str, Any]] = {}
_memory_levels: dict[int, dict[str, Any]] = {}


@functools.cache
def _client() -> redis.Redis | None:
    if not settings.REDIS_URL:
        return None
    # Short timeouts: a snapshot must not hang a consumer when Redis is slow.
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def _key(kind: str, instrument_id: int) -> str:
    return f"{namespace.redis_prefix()}:md:{kind}:{instrument_id}"


def trade_record(
    *,
    instrument_id: int,
    symbol: str,
    price: Decimal,
    size: Decimal,
    side: str,
    trade_id: str,
    exchange_ts: datetime,
) -> dict[str, Any]:
    """Keep a trade among the instrument's recent ones; returns its ``trade`` message."""
    message = protocol.trade(
        instrument_id=instrument_id,
        symbol=symbol,
        price=price,
        size=size,
        side=side,
        trade_id=trade_id,
        exchange_ts=exchange_ts,
    )
    client = _client()
    if client is None:
        _memory_trades[instrument_id].append(message)
        return message
    key = _key("trades", instrument_id)
    with client.pipeline() as pipe:
        pipe.rpush(key, json.dumps(message))
        pipe.ltrim(key, -RECENT_TRADES, -1)
        pipe.expire(key, EXPIRY_SECONDS)
        pipe.execute()
    return message


def book_store(
    *,
    instrument_id: int,
    symbol: str,
    bids: list[tuple[Decimal, Decimal]],
    asks: list[tuple[Decimal, Decimal]],
    exchange_ts: datetime,
) -> dict[str, Any]:
    """Replace the instrument's latest book (top levels); returns its ``book`` message."""
    message = protocol.book(
        instrument_id=instrument_id, symbol=symbol, bids=bids, asks=asks, exchange_ts=exchange_ts
    )
    client = _client()
    if client is None:
        _memory_books[instrument_id] = message
    else:
        client.set(_key("book", instrument_id), json.dumps(message), ex=EXPIRY_SECONDS)
    return message


def record_live(*, trades: list[dict[str, Any]], levels: list[dict[str, Any]]) -> None:
    """Keep ``trade`` messages among their instruments' recent trades and ``book_levels``
    messages as their instruments' books in diffs mode, in one Redis round trip."""
    client = _client()
    if client is None:
        _remember(trades, levels)
        return
    if trades or levels:
        with client.pipeline(transaction=False) as pipe:
            _queue_live(pipe, trades, levels)
            pipe.execute()


async def arecord_live(*, trades: list[dict[str, Any]], levels: list[dict[str, Any]]) -> None:
    """:func:`record_live` from a running event loop (the feed process's), without a thread."""
    if not settings.REDIS_URL:
        _remember(trades, levels)
        return
    if trades or levels:
        async with flow.redis_client().pipeline(transaction=False) as pipe:
            _queue_live(pipe, trades, levels)
            await pipe.execute()


def _remember(trades: list[dict[str, Any]], levels: list[dict[str, Any]]) -> None:
    for message in trades:
        _memory_trades[message["instrument"]].append(message)
    for message in levels:
        _memory_levels[message["instrument"]] = message


def _queue_live(pipe: Any, trades: list[dict[str, Any]], levels: list[dict[str, Any]]) -> None:
    touched = set()
    for message in trades:
        key = _key("trades", message["instrument"])
        pipe.rpush(key, json.dumps(message))
        touched.add(key)
    for key in touched:
        pipe.ltrim(key, -RECENT_TRADES, -1)
        pipe.expire(key, EXPIRY_SECONDS)
    for message in levels:
        pipe.set(_key("levels", message["instrument"]), json.dumps(message), ex=EXPIRY_SECONDS)


def latest_book_levels(instrument_id: int) -> dict[str, Any] | None:
    """The instrument's book as of its latest diff (a ``book_levels`` message), or None."""
    client = _client()
    if client is None:
        return _memory_levels.get(instrument_id)
    raw = client.get(_key("levels", instrument_id))
    return json.loads(raw) if raw else None


async def alast_trade_seq(instrument_id: int) -> int:
    """The ``trade_seq`` of the instrument's newest cached trade (0 if none has one)."""
    if not settings.REDIS_URL:
        recent = _memory_trades.get(instrument_id)
        newest = recent[-1] if recent else None
    else:
        raw = await flow.redis_client().lindex(_key("trades", instrument_id), -1)
        newest = json.loads(raw) if raw else None
    return (newest or {}).get("trade_seq") or 0


async def alatest_book_levels(instrument_id: int) -> dict[str, Any] | None:
    """:func:`latest_book_levels` from a running event loop."""
    if not settings.REDIS_URL:
        return _memory_levels.get(instrument_id)
    raw = await flow.redis_client().get(_key("levels", instrument_id))
    return json.loads(raw) if raw else None


def recent_trades(instrument_id: int) -> list[dict[str, Any]]:
    """The instrument's most recent trades (``trade`` messages), oldest first."""
    client = _client()
    if client is None:
        return list(_memory_trades.get(instrument_id, ()))
    return [json.loads(raw) for raw in client.lrange(_key("trades", instrument_id), 0, -1)]


def latest_book(instrument_id: int) -> dict[str, Any] | None:
    """The instrument's latest ``book`` message, or None if no feed has written one."""
    client = _client()
    if client is None:
        return _memory_books.get(instrument_id)
    raw = client.get(_key("book", instrument_id))
    return json.loads(raw) if raw else None
