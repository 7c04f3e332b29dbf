"""Celery tasks: thin adapters from ids and plain data to services, selectors and events."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import OperationalError, transaction

from portfolio import services
from portfolio.models import FeedKind, Quote
from portfolio.selectors import live_states
from streaming import events, flow, health, mailbox, protocol

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
def ingest_quotes(batch: list[dict[str, Any]] | None = None) -> int:
    """Store ticks; after commit, value the watched portfolios they move and publish.

    Feed processes send it without a batch: it takes the ingest mailbox's ticks and hands the
    mailbox on when done (streaming/mailbox.py). With a batch (the embedded default, tests) it
    stores that. Idempotent (newer exchange time wins), so it is safe to acknowledge late and
    run again. Valuing after commit matters with several workers: a valuation then sees every
    price committed before it, and the consumers send a portfolio's valuations in ``valued_at``
    order. Returns how many instruments changed.
    """
    if batch is not None:
        return _ingest(batch)
    taken = mailbox.take()
    try:
        changed = _ingest(mailbox.ticks_of(taken))
    except OperationalError:
        mailbox.hold()  # tried again (autoretry_for); the flag stays raised until the retry
        raise
    except Exception:
        mailbox.done(taken)  # these ticks are dropped (Celery logs why); ingest goes on
        raise
    mailbox.done(taken)
    return changed


def _ingest(batch: list[dict[str, Any]]) -> int:
    started = time.monotonic()
    updates = parse_batch(batch)
    received = {int(i["instrument"]): i.get("received") for i in batch if "instrument" in i}
    stored = services.quotes_ingest(updates=updates)
    changed = [row[0] for row in stored]
    if changed:
        quotes = _quote_messages(stored, received)
        # Now, or when the caller's transaction commits (an eager task inside a request).
        transaction.on_commit(lambda: _publish(quotes, changed))
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        health.record_ingest(seconds=time.monotonic() - started, lag=_lag(received.values()))
    return len(changed)


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


# The worker's books (holdings and cash per portfolio) between batches: reloaded from the
# database only when a portfolio's ledger changed (live_states.PortfolioBookCache).
books = live_states.PortfolioBookCache()


# Valuations published per channel-layer send: the first clients get theirs while the worker
# values the rest of a pass, instead of all of them waiting for the whole pass.
CHUNK = 50


def _publish(messages: list[tuple[str, dict]], changed: list[int]) -> None:
    """Publish ``messages`` with the first valuations ``changed`` makes due, then the rest as
    they are computed, ``CHUNK`` at a time."""
    chunks = _valuation_chunks(changed)
    events.publish(messages + next(chunks, []))
    for chunk in chunks:
        events.publish(chunk)


def _valuation_chunks(changed: list[int]) -> Iterator[list[tuple[str, dict]]]:
    """The valuations of the watched portfolios that ``changed`` instruments move, ``CHUNK``
    at a time."""
    owners = dict(live_states.portfolios_holding(instrument_ids=changed))
    # Only portfolios someone watches (flow.present); None: unknown, value them all.
    watching = flow.present(owners.values())
    if watching is not None:
        owners = {pid: owner for pid, owner in owners.items() if owner in watching}
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
    """Celery beat, every minute: store each portfolio's value for the performance page."""
    return services.valuation_snapshots_take()
