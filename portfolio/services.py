"""Writes. Views, consumers, commands and tasks call these; nothing else writes the models."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import orjson
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from portfolio import ledger, price_history, signals
from portfolio.ledger import TxKind
from portfolio.models import (
    AssetClass,
    CashBalance,
    FeedStatus,
    Holding,
    Instrument,
    Lot,
    Portfolio,
    PriceBar,
    Quote,
    Transaction,
    ValuationSnapshot,
)
from portfolio.selectors import ledger_reads, live_states


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
    newest = _newest(updates)
    known = set(Instrument.objects.filter(id__in=newest).values_list("id", flat=True))
    rows = _quote_rows([u for i, u in sorted(newest.items()) if i in known])
    if not rows:
        return []
    sql, params = _upsert_sql(model=Quote, returning="instrument_id", **rows)
    return sorted(row[0] for row in _fetch(sql, params))


# What quotes_ingest returns per changed quote (a quote message's fields).
QUOTE_FIELDS = ("instrument_id", "symbol", "price", "bid", "ask", "exchange_ts")


def quotes_ingest(*, updates: list[QuoteUpdate]) -> list[tuple]:
    """:func:`quotes_store` and :func:`bars_record` for the updates that changed a quote, in
    one transaction; returns each changed quote as :data:`QUOTE_FIELDS`, by instrument id.

    On PostgreSQL the writes and the read are one statement (data-modifying CTEs: quotes, then
    bars for what they stored, then the stored rows with their symbols): a Celery worker does
    this for every feed batch, and the round trips of separate steps would be most of its cost.
    Still in a transaction: a statement that commits on its own would commit after its worker
    died (killed while the statement waited on a lock), and the batch run again would then find
    nothing changed and publish nothing.
    """
    with transaction.atomic():
        db = transaction.get_connection()
        if db.vendor != "postgresql":
            changed = quotes_store(updates=updates)
            stored = set(changed)
            bars_record(updates=[u for u in updates if u.instrument_id in stored])
            return list(
                Quote.objects.filter(instrument_id__in=changed)
                .order_by("instrument_id")
                .values_list("instrument_id", "instrument__symbol", *QUOTE_FIELDS[2:])
            )
        newest = _newest(updates)
        if not newest:
            return []
        instrument = db.ops.quote_name(Instrument._meta.db_table)
        quotes, quote_params = _upsert_sql(
            model=Quote,
            returning=", ".join(c for c in QUOTE_FIELDS if c != "symbol"),
            where=f"EXISTS (SELECT 1 FROM {instrument} i WHERE i.id = r.instrument_id)",
            **_quote_rows([u for _, u in sorted(newest.items())]),
        )
        bars, bar_params = _upsert_sql(
            model=PriceBar,
            where="r.instrument_id IN (SELECT instrument_id FROM stored)",
            **_bar_rows(updates),
        )
        read = ", ".join("i.symbol" if c == "symbol" else f"s.{c}" for c in QUOTE_FIELDS)
        sql = (
            f"WITH stored AS ({quotes}), bars AS ({bars}) "
            f"SELECT {read} "
            f"FROM stored s JOIN {instrument} i ON i.id = s.instrument_id "
            f"ORDER BY s.instrument_id"
        )
        return [tuple(row) for row in _fetch(sql, [*quote_params, *bar_params])]


def _newest(updates: list[QuoteUpdate]) -> dict[int, QuoteUpdate]:
    """The update with the latest exchange time per instrument (one row per key and statement:
    PostgreSQL refuses to upsert the same key twice at once)."""
    newest: dict[int, QuoteUpdate] = {}
    for update in updates:
        seen = newest.get(update.instrument_id)
        if seen is None or update.exchange_ts > seen.exchange_ts:
            newest[update.instrument_id] = update
    return newest


def _quote_rows(updates: list[QuoteUpdate]) -> dict[str, object]:
    """``_upsert_sql`` arguments storing ``updates`` (one per instrument) as quotes."""
    if not updates:
        return {}
    columns = ["instrument_id", "price", "bid", "ask", "exchange_ts", "received_at", "source"]
    table = connection.ops.quote_name(Quote._meta.db_table)
    now = timezone.now()
    # A tick on a later UTC day than the stored one makes the stored price the reference (the
    # "previous close", also for 24/7 crypto). SET expressions all read the old row.
    new_day = f"{_utc_date('excluded.exchange_ts')} > {_utc_date(f'{table}.exchange_ts')}"
    updates_sql = ", ".join(
        [
            f"reference_price = CASE WHEN {new_day} THEN {table}.price "
            f"ELSE {table}.reference_price END",
            f"reference_ts = CASE WHEN {new_day} THEN {table}.exchange_ts "
            f"ELSE {table}.reference_ts END",
            *(f"{c} = excluded.{c}" for c in columns[1:]),
        ]
    )
    return {
        "columns": columns,
        "rows": [
            [u.instrument_id, u.price, u.bid, u.ask, u.exchange_ts, now, u.source] for u in updates
        ],
        "conflict": "instrument_id",
        "set_sql": f"{updates_sql} WHERE {table}.exchange_ts < excluded.exchange_ts",
    }


def _upsert_sql(
    *,
    model: type,
    columns: list[str],
    rows: list[list[object]],
    conflict: str,
    set_sql: str,
    returning: str | None = None,
    where: str | None = None,
) -> tuple[str, list[object]]:
    """One ``INSERT ... ON CONFLICT DO UPDATE`` for many rows, on PostgreSQL and SQLite.

    ``rows`` hold the fields' Python types (Decimal, aware datetime). On PostgreSQL they travel
    as one JSON document read with the columns' own SQL types; on SQLite each value goes through
    its field's database preparation. Either way the statement stores what the ORM would.
    ``returning``: columns of the rows inserted or updated (the conflict's WHERE decides which).
    ``where`` (PostgreSQL only): a condition on the source rows, ``r``.
    """
    db = transaction.get_connection()  # the proxy `connection` costs a lookup per attribute
    by_column = {f.column: f for f in model._meta.concrete_fields}
    fields = [by_column[c] for c in columns]
    table = db.ops.quote_name(model._meta.db_table)
    if db.vendor == "postgresql":
        # The rows travel as one JSON document, typed by the columns' own SQL types: the
        # statement's text is the same for any number of rows (psycopg converts it once) and
        # no value is adapted one by one in Python. Values are the fields' Python types
        # (Decimal, aware datetime), as the ORM would send them.
        record = ", ".join(f"{c} {f.db_type(db)}" for c, f in zip(columns, fields, strict=True))
        source = f"SELECT * FROM jsonb_to_recordset(%s::jsonb) AS r({record})"
        if where:
            source += f" WHERE {where}"
        params: list[object] = [
            orjson.dumps(
                [dict(zip(columns, values, strict=True)) for values in rows], default=str
            ).decode()
        ]
    else:
        if where:
            raise ValueError("where: PostgreSQL only")
        source = "VALUES " + ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(rows))
        params = [
            f.get_db_prep_save(v, db)
            for values in rows
            for f, v in zip(fields, values, strict=True)
        ]
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) {source} "
        f"ON CONFLICT ({conflict}) DO UPDATE SET {set_sql}"
        + (f" RETURNING {returning}" if returning else "")
    )
    return sql, params


def _fetch(sql: str, params: list[object]) -> list[tuple]:
    with transaction.get_connection().cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def bars_record(*, updates: list[QuoteUpdate]) -> None:
    """Fold stored ticks into 1-minute bars (UTC). Max/min and ts-ordered open/close make a
    repeated tick harmless; call it with the updates that changed a quote."""
    if updates:
        _fetch(*_upsert_sql(model=PriceBar, **_bar_rows(updates)))


def _bar_rows(updates: list[QuoteUpdate]) -> dict[str, object]:
    """``_upsert_sql`` arguments folding ``updates`` into their 1-minute bars."""
    greatest, least = ("GREATEST", "LEAST") if connection.vendor == "postgresql" else ("MAX", "MIN")
    # One row per (instrument, minute): PostgreSQL refuses to upsert the same key twice at once.
    bars: dict[tuple[int, datetime], list[QuoteUpdate]] = {}
    for u in sorted(updates, key=lambda u: u.exchange_ts):
        bars.setdefault(
            (u.instrument_id, u.exchange_ts.replace(second=0, microsecond=0)), []
        ).append(u)
    rows = []
    for (instrument_id, start), ticks in bars.items():
        prices = [t.price for t in ticks]
        first, last = ticks[0], ticks[-1]
        rows.append(
            [
                instrument_id,
                start,
                first.price,
                max(prices),
                min(prices),
                last.price,
                first.exchange_ts,
                last.exchange_ts,
            ]
        )
    table = connection.ops.quote_name(PriceBar._meta.db_table)
    return {
        "columns": [
            "instrument_id",
            "start",
            "open",
            "high",
            "low",
            "close",
            "open_ts",
            "close_ts",
        ],
        "rows": rows,
        "conflict": "instrument_id, start",
        "set_sql": (
            f"high = {greatest}({table}.high, excluded.high), "
            f"low = {least}({table}.low, excluded.low), "
            f"open = CASE WHEN excluded.open_ts < {table}.open_ts "
            f"THEN excluded.open ELSE {table}.open END, "
            f"open_ts = {least}({table}.open_ts, excluded.open_ts), "
            f"close = CASE WHEN excluded.close_ts > {table}.close_ts "
            f"THEN excluded.close ELSE {table}.close END, "
            f"close_ts = {greatest}({table}.close_ts, excluded.close_ts)"
        ),
    }


def _utc_date(column: str) -> str:
    """SQL for the UTC calendar date of a timestamp column, on PostgreSQL and SQLite."""
    if connection.vendor == "postgresql":
        return f"(({column}) AT TIME ZONE 'UTC')::date"
    # SQLite stores aware datetimes as UTC text ("YYYY-MM-DD HH:MM:SS...").
    return f"date({column})"


def portfolio_create(
    *,
    owner,
    name: str,
    base_currency: str = "USD",
    cost_basis_method: str = ledger.CostBasis.FIFO,
    allow_short: bool = False,
) -> Portfolio:
    """Create an empty portfolio; ``ValidationError`` names the field that is wrong."""
    portfolio = Portfolio(
        owner=owner,
        name=name,
        base_currency=base_currency,
        cost_basis_method=cost_basis_method,
        allow_short=allow_short,
    )
    portfolio.full_clean()
    portfolio.save()
    return portfolio


@transaction.atomic
def portfolio_update(
    *,
    portfolio: Portfolio,
    name: str | None = None,
    cost_basis_method: str | None = None,
    allow_short: bool | None = None,
) -> Portfolio:
    """Change a portfolio's settings; a new cost-basis method or short rule recomputes it.

    Turning ``allow_short`` off while the ledger sells short raises ``ValidationError``.
    """
    portfolio = Portfolio.objects.select_for_update().get(pk=portfolio.pk)
    recompute = False
    if name is not None:
        portfolio.name = name
    if cost_basis_method is not None and cost_basis_method != portfolio.cost_basis_method:
        portfolio.cost_basis_method = cost_basis_method
        recompute = True
    if allow_short is not None and allow_short != portfolio.allow_short:
        portfolio.allow_short = allow_short
        recompute = True
    portfolio.full_clean()
    portfolio.save()
    if recompute:
        try:
            with transaction.atomic():
                holdings_recompute(portfolio=portfolio)
        except ledger.LedgerError as exc:
            raise ValidationError(
                {"allow_short": [f"the ledger needs short selling: {exc}"]}
            ) from None
    return portfolio


def ledger_problem(*, portfolio: Portfolio, method: str, allow_short: bool) -> str | None:
    """Why the portfolio's ledger could not be replayed with these settings; None if it can.

    Stores nothing: for forms that must refuse a setting before saving it.
    """
    try:
        ledger.replay(
            ledger_reads.ledger_entries(portfolio),
            method=ledger.CostBasis(method),
            allow_short=allow_short,
        )
    except ledger.LedgerError as exc:
        return f"the ledger needs short selling: {exc}"
    return None


def holdings_recompute(*, portfolio: Portfolio) -> ledger.LedgerResult:
    """Replay the portfolio's whole ledger and store holdings, open lots and cash balances.

    Runs in the caller's transaction (``atomic`` makes it a savepoint otherwise) with the
    portfolio row locked, so two writers never interleave. A transaction the ledger refuses
    raises ``LedgerError`` and nothing is stored; a valuation is published after commit.
    """
    with transaction.atomic():
        locked = Portfolio.objects.select_for_update().get(pk=portfolio.pk)
        rows = list(
            Transaction.objects.filter(portfolio=locked)
            .select_related("instrument")
            .order_by("executed_at", "id")
        )
        ids = {tx.instrument.symbol: tx.instrument_id for tx in rows if tx.instrument_id}
        rates, fallbacks = _rates_at_trade_dates(locked, rows)
        result = ledger.replay(
            (ledger_reads.ledger_entry(tx, rates[tx.pk]) for tx in rows),
            method=ledger.CostBasis(locked.cost_basis_method),
            allow_short=locked.allow_short,
        )
        Holding.objects.filter(portfolio=locked).delete()  # lots cascade
        holdings = Holding.objects.bulk_create(
            [
                Holding(
                    portfolio=locked,
                    instrument_id=ids[position.instrument],
                    quantity=position.quantity,
                    cost_basis=position.cost_basis,
                    currency=position.currency or "",
                    realized_pnl=position.realized_pnl,
                    income=sum(position.income.values(), Decimal(0)),
                    cost_basis_base=position.cost_basis_base,
                    realized_pnl_base=position.realized_pnl_base,
                    income_base=position.income_base,
                    fx_note=_fx_note(fallbacks.get(position.instrument, [])),
                )
                for position in result.positions.values()
            ]
        )
        by_symbol = {symbol: h for h, symbol in zip(holdings, result.positions, strict=True)}
        Lot.objects.bulk_create(
            [
                Lot(
                    holding=by_symbol[position.instrument],
                    transaction_id=lot.ref,
                    opened_at=lot.opened_at,
                    quantity=lot.quantity,
                    cost=lot.cost,
                    cost_base=lot.cost_base,
                )
                for position in result.positions.values()
                for lot in position.lots
            ]
        )
        CashBalance.objects.filter(portfolio=locked).delete()
        currencies = sorted({*result.cash, *result.income, *result.fees})
        CashBalance.objects.bulk_create(
            [
                CashBalance(
                    portfolio=locked,
                    currency=currency,
                    amount=result.cash.get(currency, Decimal(0)),
                    income=result.income.get(currency, Decimal(0)),
                    income_base=result.income_base.get(currency, Decimal(0)),
                    fees=result.fees.get(currency, Decimal(0)),
                )
                for currency in currencies
            ]
        )
        # Lets a client tell a ledger change from an older price picture (docs/protocol.md).
        Portfolio.objects.filter(pk=locked.pk).update(recomputed_at=timezone.now())
        transaction.on_commit(
            lambda: signals.portfolio_recomputed.send(
                sender=Portfolio, portfolio_id=locked.pk, owner_id=locked.owner_id
            )
        )
    return result


def holdings_recompute_after_fx_history(*, instrument: Instrument) -> int:
    """Recompute every portfolio whose base-currency figures an FX instrument's new history
    changes (base currency on one side of the pair, transactions in the other); returns how
    many. Other instruments' history changes nothing stored."""
    pair = price_history.fx_pair(instrument) if instrument.asset_class == AssetClass.FX else None
    if pair is None:
        return 0
    done = 0
    for base, other in (pair, pair[::-1]):
        portfolios = Portfolio.objects.filter(
            base_currency=base, transactions__currency=other
        ).distinct()
        for portfolio in portfolios:
            holdings_recompute(portfolio=portfolio)
            done += 1
    return done


def _rates_at_trade_dates(
    portfolio: Portfolio, rows: list[Transaction]
) -> tuple[dict[int, Decimal | None], dict[str, list[price_history.FxRate]]]:
    """Each transaction's FX rate into the base currency on its UTC date (price history, the
    last close carried over gaps; the latest quote only where there is no history), and per
    instrument symbol the rates that came from the latest quote."""
    history = price_history.FxHistory(
        base_currency=portfolio.base_currency,
        currencies={tx.currency for tx in rows if tx.currency},
    )
    rates: dict[int, Decimal | None] = {}
    fallbacks: dict[str, list[price_history.FxRate]] = {}
    for tx in rows:
        if not tx.currency:  # a split: no money moves
            rates[tx.pk] = None
            continue
        fx = history.rate_on(tx.currency, tx.executed_at.astimezone(UTC).date())
        rates[tx.pk] = None if fx is None else fx.rate
        if fx is not None and not fx.from_history and tx.instrument_id:
            fallbacks.setdefault(tx.instrument.symbol, []).append(fx)
    return rates, fallbacks


def _fx_note(fallbacks: list[price_history.FxRate]) -> str:
    """Says which trades of a position used today's rate for want of FX history."""
    if not fallbacks:
        return ""
    first = fallbacks[0]
    days = sorted({fx.day for fx in fallbacks})
    when = str(days[0]) if len(days) == 1 else f"{days[0]} to {days[-1]}"
    return (
        f"{len(fallbacks)} transaction(s) ({when}) converted at the latest "
        f"{first.currency} rate: no FX history on or before their dates"
    )[:300]


# Ledger field names are the model's field names, so a refusal lands on the right form field.
_TX_FIELDS = (
    "kind",
    "instrument",
    "quantity",
    "price",
    "fees",
    "amount",
    "ratio",
    "currency",
    "to_amount",
    "to_currency",
    "executed_at",
    "note",
)


def _ledger_validation_error(exc: ledger.LedgerError) -> ValidationError:
    message = str(exc)
    # The ledger prefixes "transaction <ref>: <field> "; a form shows the message next to the
    # field, where the prefix is noise.
    prefix = f"transaction {exc.ref!r}: "
    message = message.removeprefix(prefix).removeprefix(f"{exc.field}: ")
    field = exc.field if exc.field in _TX_FIELDS else NON_FIELD_ERRORS
    return ValidationError({field: [message]})


def _default_currency(tx: Transaction) -> None:
    if not tx.currency and tx.kind != TxKind.SPLIT:
        tx.currency = tx.instrument.quote_currency if tx.instrument else tx.portfolio.base_currency


def _save_and_recompute(tx: Transaction) -> Transaction:
    _default_currency(tx)
    tx.note = tx.note.strip()  # as forms and the CSV importer do, so exports read back equal
    tx.to_currency = tx.to_currency.strip().upper()
    try:
        ledger_reads.ledger_entry(tx)  # field rules first, with the ledger's own messages
    except ledger.LedgerError as exc:
        raise _ledger_validation_error(exc) from None
    tx.full_clean(exclude=["portfolio"])
    pk = tx.pk
    try:
        with transaction.atomic():
            tx.save()
            holdings_recompute(portfolio=tx.portfolio)
    except ledger.LedgerError as exc:
        refused_pk, tx.pk = tx.pk, pk  # rolled back: an added row does not exist
        if exc.ref == refused_pk:
            raise _ledger_validation_error(exc) from None
        # The change made a later transaction impossible (e.g. it removed the shares sold).
        raise ValidationError(
            {NON_FIELD_ERRORS: [f"this change would make another transaction impossible: {exc}"]}
        ) from None
    return tx


@transaction.atomic
def transaction_add(*, portfolio: Portfolio, **fields: object) -> Transaction:
    """Record a transaction and recompute the portfolio's holdings in the same DB transaction.

    ``fields`` are ``Transaction`` fields (kind, instrument, quantity, price, fees, amount,
    ratio, currency, executed_at, note). The currency defaults to the instrument's (or the
    portfolio's base currency). Raises ``ValidationError`` keyed by field; nothing is stored.
    """
    unknown = set(fields) - set(_TX_FIELDS)
    if unknown:
        raise TypeError(f"unknown transaction fields: {', '.join(sorted(unknown))}")
    return _save_and_recompute(Transaction(portfolio=portfolio, **fields))


@transaction.atomic
def transaction_update(*, tx: Transaction, **fields: object) -> Transaction:
    """Change a recorded transaction and recompute, in one DB transaction (see ``_add``)."""
    unknown = set(fields) - set(_TX_FIELDS)
    if unknown:
        raise TypeError(f"unknown transaction fields: {', '.join(sorted(unknown))}")
    for name, value in fields.items():
        setattr(tx, name, value)
    return _save_and_recompute(tx)


@transaction.atomic
def transaction_delete(*, tx: Transaction) -> None:
    """Delete a transaction and recompute; refused (``ValidationError``) when a later sale
    would then sell more than is held."""
    portfolio, pk = tx.portfolio, tx.pk
    try:
        with transaction.atomic():
            tx.delete()
            holdings_recompute(portfolio=portfolio)
    except ledger.LedgerError as exc:
        tx.pk = pk  # rolled back: the row is still there
        raise ValidationError(
            f"deleting it would make another transaction impossible: {exc}"
        ) from None


# Portfolios valued and stored per query round by valuation_snapshots_take.
SNAPSHOT_CHUNK = 500


def valuation_snapshots_take(*, at: datetime | None = None) -> int:
    """Store every portfolio's current value (one row per portfolio per instant).

    Idempotent per instant: a second run with the same ``at`` changes nothing. Returns how many
    snapshots were written. Portfolios without any transaction are skipped. Portfolios are
    valued ``SNAPSHOT_CHUNK`` at a time with a fixed number of queries each, and each chunk is
    stored as it is done: a run cut short by its time limit keeps what it stored.
    """
    at = at or timezone.now()
    ids = list(
        Portfolio.objects.filter(Exists(Transaction.objects.filter(portfolio=OuterRef("pk"))))
        .order_by("id")
        .values_list("id", "base_currency")
    )
    rates = live_states.fx_rates()
    written = 0
    for begin in range(0, len(ids), SNAPSHOT_CHUNK):
        chunk = dict(ids[begin : begin + SNAPSHOT_CHUNK])
        taken = ValuationSnapshot.objects.filter(taken_at=at, portfolio_id__in=list(chunk))
        for pid in taken.values_list("portfolio_id", flat=True):
            del chunk[pid]
        values = live_states.portfolio_values(portfolio_ids=chunk, rates=rates)
        flows = ledger_reads.external_flows_of(portfolios=chunk, rates=rates)
        snapshots = [
            ValuationSnapshot(
                portfolio_id=pid,
                taken_at=at,
                value=values[pid].market_value,
                net_flows=sum((f.amount for f in flows[pid] if f.at <= at), Decimal(0)),
            )
            for pid in chunk
            if pid in values  # not deleted since the run began
        ]
        # A run racing this one for the same instant may have stored some: theirs stay, and
        # only what this run added counts.
        before = taken.count()
        ValuationSnapshot.objects.bulk_create(snapshots, ignore_conflicts=True)
        written += taken.count() - before
    return written


def feed_status_record(*, stats: dict, markets: list[str] | None = None) -> FeedStatus:
    """Store a feed process's stats (``FeedStats.as_dict()``) as its health row, and the
    exchange's market symbols when given (a ccxt feed, after it loaded them)."""
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
            **({"markets": markets} if markets is not None else {}),
            **{name: stats[name] for name in counters},
        },
    )
    return status
