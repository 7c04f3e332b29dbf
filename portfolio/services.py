"""Writes. Views, consumers, commands and tasks call these; nothing else writes the models."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone

from portfolio.models import FeedStatus, Holding, Instrument, Portfolio, PriceBar, Quote


@dataclass(frozen=True, slots=True)
class QuoteUpdate:
    """A validated price for one instrument, ready to store."""

    instrument_id: int
    price: Decimal
    exchange_ts: datetime
    source: str
    bid: Decimal | None = None
    ask: Decimal | None = None


def quotes_store(*, updates: list[QuoteUpdate]) -> list[int]:
    """Upsert the latest quote per instrument; a newer exchange time wins.

    An older or equal exchange time changes nothing, so running the same batch twice (a retried
    task, two feed processes by mistake) has no second effect. Returns the instrument ids whose
    quote actually changed. Updates for instruments that no longer exist are ignored.
    """
    if not updates:
        return []
    newest: dict[int, QuoteUpdate] = {}
    for update in updates:
        seen = newest.get(update.instrument_id)
        if seen is None or update.exchange_ts > seen.exchange_ts:
            newest[update.instrument_id] = update
    known = set(Instrument.objects.filter(id__in=newest).values_list("id", flat=True))
    rows = [u for i, u in sorted(newest.items()) if i in known]
    if not rows:
        return []

    fields = {f.column: f for f in Quote._meta.concrete_fields}
    columns = ["instrument_id", "price", "bid", "ask", "exchange_ts", "received_at", "source"]
    now = timezone.now()
    params: list[object] = []
    for u in rows:
        values = [u.instrument_id, u.price, u.bid, u.ask, u.exchange_ts, now, u.source]
        params += [
            fields[c].get_db_prep_save(v, connection) for c, v in zip(columns, values, strict=True)
        ]
    table = connection.ops.quote_name(Quote._meta.db_table)
    placeholders = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(rows))
    updates_sql = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES {placeholders} "
        f"ON CONFLICT (instrument_id) DO UPDATE SET {updates_sql} "
        f"WHERE {table}.exchange_ts < excluded.exchange_ts "
        f"RETURNING instrument_id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return sorted(row[0] for row in cursor.fetchall())


def bars_record(*, updates: list[QuoteUpdate]) -> None:
    """Fold stored ticks into 1-minute bars (UTC). Max/min and ts-ordered open/close make a
    repeated tick harmless; call it with the updates that changed a quote."""
    if not updates:
        return
    greatest, least = ("GREATEST", "LEAST") if connection.vendor == "postgresql" else ("MAX", "MIN")
    # One row per (instrument, minute): PostgreSQL refuses to upsert the same key twice at once.
    bars: dict[tuple[int, datetime], list[QuoteUpdate]] = {}
    for u in sorted(updates, key=lambda u: u.exchange_ts):
        bars.setdefault(
            (u.instrument_id, u.exchange_ts.replace(second=0, microsecond=0)), []
        ).append(u)
    fields = {f.column: f for f in PriceBar._meta.concrete_fields}
    columns = ["instrument_id", "start", "open", "high", "low", "close", "open_ts", "close_ts"]
    params: list[object] = []
    for (instrument_id, start), ticks in bars.items():
        prices = [t.price for t in ticks]
        first, last = ticks[0], ticks[-1]
        values = [
            instrument_id,
            start,
            first.price,
            max(prices),
            min(prices),
            last.price,
            first.exchange_ts,
            last.exchange_ts,
        ]
        params += [
            fields[c].get_db_prep_save(v, connection) for c, v in zip(columns, values, strict=True)
        ]
    table = connection.ops.quote_name(PriceBar._meta.db_table)
    placeholders = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(bars))
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES {placeholders} "
        f"ON CONFLICT (instrument_id, start) DO UPDATE SET "
        f"high = {greatest}({table}.high, excluded.high), "
        f"low = {least}({table}.low, excluded.low), "
        f"open = CASE WHEN excluded.open_ts < {table}.open_ts "
        f"THEN excluded.open ELSE {table}.open END, "
        f"open_ts = {least}({table}.open_ts, excluded.open_ts), "
        f"close = CASE WHEN excluded.close_ts > {table}.close_ts "
        f"THEN excluded.close ELSE {table}.close END, "
        f"close_ts = {greatest}({table}.close_ts, excluded.close_ts)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def portfolio_create(*, owner, name: str, base_currency: str = "USD") -> Portfolio:
    portfolio = Portfolio(owner=owner, name=name, base_currency=base_currency)
    portfolio.full_clean()
    portfolio.save()
    return portfolio


@transaction.atomic
def holding_set(
    *, portfolio: Portfolio, instrument: Instrument, quantity: Decimal, cost_basis: Decimal
) -> Holding:
    """Create or replace a holding (until the ledger derives holdings from transactions)."""
    holding, _ = Holding.objects.update_or_create(
        portfolio=portfolio,
        instrument=instrument,
        defaults={"quantity": quantity, "cost_basis": cost_basis},
    )
    return holding


def feed_status_record(*, stats: dict) -> FeedStatus:
    """Store a feed process's stats (``FeedStats.as_dict()``) as its health row."""
    counters = (
        "messages",
        "reconnects",
        "gaps",
        "checksum_failures",
        "malformed_frames",
        "out_of_order",
        "errors",
    )
    status, _ = FeedStatus.objects.update_or_create(
        feed=stats["feed"],
        defaults={
            "state": stats["state"],
            "heartbeat_at": timezone.now(),
            "connected_since": stats["connected_since"],
            "last_message_at": stats["last_message_at"],
            "messages_per_s": Decimal(str(stats["messages_per_s"])).quantize(Decimal("0.1")),
            "symbols": stats["symbol_last_message"],
            **{name: stats[name] for name in counters},
        },
    )
    return status
