"""Celery tasks: thin adapters from ids and plain data to services, selectors and events."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import redis
from celery import shared_task
from django.conf import settings
from django.db import OperationalError, transaction

from portfolio import services
from portfolio.models import FeedKind, Quote
from portfolio.selectors import live_states
from streaming import events, flow, health, namespace, pacing, protocol

log = logging.getLogger(__name__)


def parse_batch(batch: list[dict[str, Any]]) -> list[services.QuoteUpdate]:
    """Validate a batch from a feed process. A bad item is logged with its reason and skipped."""
    updates = []
    for index, item in enumerate(batch):
        try:
            updates.append(_parse_item(item))
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            log.warning("ingest: dropped item %d of batch (%s): %r", index, exc, item)
    return updates


def _parse_item(item: dict[str, Any]) -> services.QuoteUpdate:
    price = _decimal(item, "price")
    if price is None or price <= 0:
        raw = item.get("price")
        if price == 0 and Decimal(str(raw)):  # quote_price_positive would refuse the batch
            raise ValueError(f"price {raw} rounds to 0 at {_PRICE.decimal_places} decimal places")
        raise ValueError(f"price must be positive, got {raw!r}")
    bid, ask = _decimal(item, "bid"), _decimal(item, "ask")
    if bid is not None and ask is not None and bid > ask:
        raise ValueError(f"bid {item['bid']} is above ask {item['ask']}")
    ts = datetime.fromisoformat(str(item["ts"]))
    if ts.tzinfo is None:
        raise ValueError("ts must carry a timezone")
    source = str(item["source"])
    if source not in FeedKind.values:
        raise ValueError(f"unknown source {source!r}")
    return services.QuoteUpdate(
        instrument_id=int(item["instrument"]),
        price=price,
        bid=bid,
        ask=ask,
        exchange_ts=ts,
        source=source,
    )


def _decimal(item: dict[str, Any], key: str) -> Decimal | None:
    raw = item.get(key)
    if raw is None:
        return None
    if isinstance(raw, float):
        raise TypeError(f"{key} must be a decimal string, not a float")
    value = Decimal(str(raw))
    if not value.is_finite():
        raise ValueError(f"{key} must be finite, got {raw!r}")
    # Checked against what the column stores (rounded as PostgreSQL rounds), so that a price
    # the database would refuse drops this item, not the whole batch's statement.
    too_large = f"{key} {raw} is too large: at most {_INTEGER_DIGITS} digits before the point"
    if value.adjusted() >= _INTEGER_DIGITS:  # first: quantize would overflow the context
        raise ValueError(too_large)
    stored = value.quantize(_PLACES, rounding=ROUND_HALF_UP)
    if stored.adjusted() >= _INTEGER_DIGITS:  # 99999999999999.99999999995 rounds up to 10**14
        raise ValueError(too_large)
    return stored


_PRICE = Quote._meta.get_field("price")  # bid and ask are the same numeric(24, 10)
_INTEGER_DIGITS = _PRICE.max_digits - _PRICE.decimal_places
_PLACES = Decimal(1).scaleb(-_PRICE.decimal_places)


@shared_task(
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=settings.LIVEFOLIO_INGEST_RETRY_MAX_SECONDS,
    retry_jitter=True,
    max_retries=None,
    # Time limits: the defaults (settings), which the broker's visibility timeout is set from.
)
def ingest_quotes(batch: list[dict[str, Any]]) -> int:
    """Store a coalesced batch of ticks; after commit, value the affected portfolios and publish.

    Idempotent (newer exchange time wins), so it is safe to acknowledge late and run again.
    Valuing after commit matters with several workers: a valuation then sees every price
    committed before it, and ``valued_at`` lets clients keep the later one. Returns how many
    instruments changed.
    """
    try:
        return _ingest(batch)
    finally:
        _say_free()


def _ingest(batch: list[dict[str, Any]]) -> int:
    if not batch:  # a feed runner settling after its last tick (streaming/pacing.py)
        value_pending()
        return 0
    started = time.monotonic()
    updates = parse_batch(batch)
    received = {int(i["instrument"]): i.get("received") for i in batch if "instrument" in i}
    stored = services.quotes_ingest(updates=updates)
    changed = [row[0] for row in stored]
    if changed:
        quotes = _quote_messages(stored, received)
        # Now, or when the caller's transaction commits (an eager task inside a request).
        transaction.on_commit(lambda: _publish(quotes, valuations_due(changed)))
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        health.record_ingest(seconds=time.monotonic() - started, lag=_lag(received.values()))
    return len(changed)


# The notice, only when no task waits on the queue: with one waiting, this worker takes it next
# (after its ack), and a batch sent on the notice would wait behind a whole task. Checked in
# the same script: a runner could not tell the queue this worker just emptied from an idle one.
# The notice carries a token for a runner to claim (IngestBackpressure.free).
_FREE_LUA = """
if redis.call('LLEN', KEYS[1]) == 0 then
    return redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return -1
"""


def _say_free() -> None:
    """Tell the feed runners this worker is done with its task and nothing waits on the queue:
    one holding its window sends it now, not at its next check (the worker would idle until
    then). Best effort: a runner that misses it checks again within ``HOLD_POLL``."""
    client = flow.redis_sync()
    if client is None or settings.CELERY_TASK_ALWAYS_EAGER:
        return
    try:
        client.eval(
            _FREE_LUA,
            1,
            settings.CELERY_TASK_DEFAULT_QUEUE,
            flow.ingest_free_channel(),
            uuid.uuid4().hex,
        )
    except redis.RedisError as exc:
        log.warning("ingest: could not say the worker is free (%s)", exc)


def _lag(received: Iterable[Any]) -> float | None:
    """Seconds from the oldest tick the feed received in this batch to now (stored)."""
    moments = [datetime.fromisoformat(r) for r in received if r]
    return (datetime.now(UTC) - min(moments)).total_seconds() if moments else None


def _quote_messages(stored: list[tuple], received: dict[int, Any]) -> list[tuple[str, dict]]:
    """The quote message of each stored quote (rows of ``services.QUOTE_FIELDS``)."""
    messages = []
    for instrument_id, symbol, price, bid, ask, exchange_ts in stored:
        raw = received.get(instrument_id)
        payload = protocol.quote(
            instrument_id=instrument_id,
            symbol=symbol,
            price=price,
            bid=bid,
            ask=ask,
            exchange_ts=exchange_ts,
            received=datetime.fromisoformat(raw) if raw else None,
        )
        messages.append((events.instrument_group(instrument_id), payload))
    return messages


def valuations_due(changed: list[int]) -> list[int]:
    """The instruments whose holders to value now: ``changed`` and any a skipped batch left.

    A worker that falls behind has ingest batches queued behind this one. Valuing every
    portfolio for each of them would keep it behind (valuing costs far more than storing), so
    while tasks wait on the queue this batch only notes its instruments in a Redis set and the
    next task values them all at once: the backlog drains at the speed of storing, and a
    valuation covers every batch stored before it. Never longer than
    ``LIVEFOLIO_VALUATION_MAX_DELAY_MS`` (5 s) without a valuation pass, however long the queue.
    Every task on this queue takes the set before its own work (:func:`value_pending`), so a
    noted instrument is valued by the next task whatever it is. Without Redis (the embedded
    default) or when Redis fails: value ``changed`` now.

    With pacing on (streaming/pacing.py) a pass is bounded (a share of the portfolios), so one
    task waiting is the next batch arriving while this one runs, not a backlog: only two or
    more make a batch skip. Skipping for one would make the due portfolios a batch later and
    the next pass twice as long.
    """
    client = flow.redis_sync()
    if client is None:
        return changed
    key = _pending_key()
    try:
        pipe = client.pipeline(transaction=False)
        pipe.sadd(key, *changed)
        pipe.llen(settings.CELERY_TASK_DEFAULT_QUEUE)
        _, waiting = pipe.execute()
        overdue = time.monotonic() - _last_pass >= settings.LIVEFOLIO_VALUATION_MAX_DELAY_MS / 1000
        backlog = 2 if pacing.interval_ms() else 1
        if waiting >= backlog and not overdue:
            return []
        return sorted(set(changed) | set(_take_pending(client)))
    except redis.RedisError as exc:
        log.warning("ingest: coalescing unavailable, valuing this batch (%s)", exc)
        return changed


def value_pending() -> None:
    """Value and publish what skipped batches left (a task's first step)."""
    client = flow.redis_sync()
    if client is None:
        return
    try:
        pending = _take_pending(client)
    except redis.RedisError as exc:
        log.warning("ingest: pending valuations unavailable (%s)", exc)
        return
    _publish([], pending, flush=True)


def _take_pending(client) -> list[int]:
    global _last_pass
    pipe = client.pipeline(transaction=True)
    pipe.smembers(_pending_key())
    pipe.delete(_pending_key())
    members, _ = pipe.execute()
    _last_pass = time.monotonic()
    return [int(m) for m in members]


def _pending_key() -> str:
    return f"{namespace.redis_prefix()}:valuation:pending"


# When this process last took the pending set (a valuation pass).
_last_pass = 0.0

# The worker's books (holdings and cash per portfolio) between batches: reloaded from the
# database only when a portfolio's ledger changed (live_states.PortfolioBookCache).
books = live_states.PortfolioBookCache()


# Valuations published per channel-layer send: the first clients get theirs while the worker
# values the rest of a pass, instead of all of them waiting for the whole pass.
CHUNK = 50


def _publish(messages: list[tuple[str, dict]], changed: list[int], *, flush: bool = False) -> None:
    """Publish ``messages`` with the first valuations ``changed`` makes due, then the rest as
    they are computed, ``CHUNK`` at a time."""
    chunks = _valuation_chunks(changed, flush=flush)
    events.publish(messages + next(chunks, []))
    for chunk in chunks:
        events.publish(chunk)


def _valuation_chunks(
    changed: list[int], *, flush: bool = False
) -> Iterator[list[tuple[str, dict]]]:
    """The valuations of the portfolios ``changed`` instruments move, that are watched and
    whose turn it is (pacing), plus the deferred ones whose turn has come, ``CHUNK`` at a time.
    ``flush``: take those even when nothing changed."""
    if not changed and not flush:
        return
    owners = dict(live_states.portfolios_holding(instrument_ids=changed)) if changed else {}
    # Only portfolios someone watches (flow.present); None: unknown, value them all.
    watching = flow.present(owners.values())
    if watching is not None:
        owners = {pid: owner for pid, owner in owners.items() if owner in watching}
    due = pacing.take_turns(owners)
    if due is not None:
        late = [pid for pid in due if pid not in owners]
        if late:
            owners.update(live_states.portfolio_owners(portfolio_ids=late))
        owners = {pid: owners[pid] for pid in due if pid in owners}
    if not owners:
        return
    chunk: list[tuple[str, dict]] = []
    for state in live_states.iter_portfolio_states(portfolio_ids=owners, cache=books):
        chunk.append((events.user_group(owners[state["id"]]), protocol.valuation(portfolio=state)))
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# Acknowledged as it starts, not after (settings.CELERY_TASK_ACKS_LATE): it may run longer than
# the broker's visibility timeout, which would hand a late-acknowledged run to a second worker.
# A run a worker dies in is lost; the next minute's takes its place.
@shared_task(soft_time_limit=50, time_limit=60, acks_late=False)
def snapshot_valuations() -> int:
    """Celery beat, every minute: value what skipped ingest batches left (a task's first step),
    then store each portfolio's value for the performance page."""
    value_pending()
    return services.valuation_snapshots_take()
