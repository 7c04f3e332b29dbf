"""Transactions from and to CSV (docs/csv-format.md): Livefolio's columns plus Ghostfolio-style
aliases. An import is atomic: any bad row and nothing is stored, and every bad row is reported
with its line number and reason."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import IO

from django.db import transaction

from portfolio import ledger, services
from portfolio.ledger import TxKind
from portfolio.models import AMOUNT_KINDS, Instrument, Portfolio, Transaction
from portfolio.selectors import ledger_reads

# The export header, in order; also the canonical names on import.
COLUMNS = (
    "date",
    "type",
    "symbol",
    "quantity",
    "price",
    "fee",
    "amount",
    "currency",
    "ratio",
    "note",
    "to_amount",
    "to_currency",
)
# Other spellings accepted on import (compared case-insensitively, spaces and _ ignored).
ALIASES = {
    "date": ("date", "datetime", "executedat", "time", "timestamp"),
    "type": ("type", "action", "kind"),
    "symbol": ("symbol", "ticker", "instrument"),
    "quantity": ("quantity", "qty", "shares", "units"),
    "price": ("price", "unitprice"),
    "fee": ("fee", "fees", "commission"),
    "amount": ("amount", "value", "total"),
    "currency": ("currency",),
    "ratio": ("ratio", "splitratio"),
    "note": ("note", "comment", "description"),
    "to_amount": ("toamount", "amountbought"),
    "to_currency": ("tocurrency", "currencybought"),
}
KIND_ALIASES = {
    "buy": TxKind.BUY,
    "sell": TxKind.SELL,
    "dividend": TxKind.DIVIDEND,
    "interest": TxKind.INTEREST,
    "fee": TxKind.FEE,
    "deposit": TxKind.DEPOSIT,
    "withdrawal": TxKind.WITHDRAWAL,
    "withdraw": TxKind.WITHDRAWAL,
    "split": TxKind.SPLIT,
    "transferin": TxKind.TRANSFER_IN,
    "transferout": TxKind.TRANSFER_OUT,
    "exchange": TxKind.EXCHANGE,
    "currencyexchange": TxKind.EXCHANGE,
}
# The ledger's field names as this format calls them, so a message names the CSV column.
LEDGER_FIELD_COLUMNS = {
    "fees": "fee",
    "instrument": "symbol",
    "executed_at": "date",
    "kind": "type",
}
CHUNK = 10_000
# Ledger-level refusals (e.g. an oversell) are found one per replay; stop after this many.
MAX_LEDGER_ERRORS = 50


@dataclass(frozen=True)
class RowError:
    """A bad row: its line number in the file (the header is line 1) and why."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ImportResult:
    """What an import did, or why it did nothing."""

    rows: int = 0
    imported: int = 0
    errors: list[RowError] = field(default_factory=list)
    unknown_symbols: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class ImportFailed(Exception):
    """Raised inside the import transaction to roll it back; carries the result."""

    def __init__(self, result: ImportResult) -> None:
        super().__init__(f"{len(result.errors)} bad rows")
        self.result = result


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _header_map(header: list[str]) -> tuple[dict[str, int], list[str]]:
    lookup = {_key(alias): canonical for canonical, names in ALIASES.items() for alias in names}
    columns: dict[str, int] = {}
    problems = []
    for index, name in enumerate(header):
        canonical = lookup.get(_key(name))
        if canonical is None:
            continue  # extra columns (Ghostfolio's dataSource, accountId...) are ignored
        if canonical in columns:
            problems.append(
                f"columns {header[columns[canonical]]!r} and {name!r} both mean {canonical!r}"
            )
        columns[canonical] = index
    for required in ("date", "type"):
        if required not in columns:
            problems.append(f"missing the {required!r} column")
    return columns, problems


def _decimal(raw: str, name: str) -> Decimal:
    text = raw.strip().replace("_", "")
    if not text:
        return Decimal(0)
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{name}: {raw!r} is not a number") from None
    if not value.is_finite():
        raise ValueError(f"{name}: {raw!r} is not a finite number")
    return value


def _datetime(raw: str) -> datetime:
    text = raw.strip()
    if not text:
        raise ValueError("date: is empty")
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(0), tzinfo=UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"date: {raw!r} is not an ISO-8601 date or date-time (e.g. 2026-03-01T14:30:00Z)"
        ) from None
    # A date-time without an offset is taken as UTC (documented).
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _rows(text: IO[str], errors: list[RowError]) -> Iterator[tuple[int, list[str]]]:
    """Non-empty rows with their line numbers; a file the csv module cannot read ends with an
    error naming the line."""
    reader = csv.reader(text)
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                yield reader.line_num, row
    except csv.Error as exc:
        errors.append(RowError(reader.line_num, f"not readable as CSV: {exc}"))


def _parse_row(
    line: int,
    row: list[str],
    columns: dict[str, int],
    instruments: dict[str, Instrument],
    portfolio: Portfolio,
    unknown: dict[str, None],
) -> Transaction:
    def cell(name: str) -> str:
        index = columns.get(name)
        return row[index].strip() if index is not None and index < len(row) else ""

    raw_kind = cell("type")
    kind = KIND_ALIASES.get(_key(raw_kind))
    if kind is None:
        raise ValueError(f"type: {raw_kind!r} is not one of {', '.join(TxKind)}")
    executed_at = _datetime(cell("date"))
    symbol = cell("symbol")
    instrument = None
    if symbol and kind not in (TxKind.DEPOSIT, TxKind.WITHDRAWAL, TxKind.EXCHANGE):
        instrument = instruments.get(symbol.upper())
        if instrument is None:
            unknown[symbol] = None
            raise ValueError(f"symbol: unknown symbol {symbol!r}")
    quantity = _decimal(cell("quantity"), "quantity")
    price = _decimal(cell("price"), "price")
    amount = _decimal(cell("amount"), "amount")
    if kind in AMOUNT_KINDS and not amount and quantity and price:
        # Ghostfolio writes a dividend as quantity x unitPrice.
        amount, quantity, price = quantity * price, Decimal(0), Decimal(0)
    if kind in AMOUNT_KINDS and not amount and price and not quantity:
        amount, price = price, Decimal(0)
    ratio_text = cell("ratio")
    if kind == TxKind.SPLIT and not ratio_text and quantity:
        ratio_text, quantity = str(quantity), Decimal(0)
    currency = cell("currency").upper()
    if not currency and kind != TxKind.SPLIT:
        currency = instrument.quote_currency if instrument else portfolio.base_currency
    note = cell("note")
    if "\x00" in note:
        raise ValueError("note: contains a NUL character")
    if len(note) > 200:
        raise ValueError(f"note: {len(note)} characters, at most 200")
    tx = Transaction(
        portfolio=portfolio,
        kind=kind,
        instrument=instrument,
        quantity=quantity,
        price=price,
        fees=_decimal(cell("fee"), "fee"),
        amount=amount,
        ratio=_decimal(ratio_text, "ratio") if ratio_text else None,
        currency=currency,
        to_amount=_decimal(cell("to_amount"), "to_amount"),
        to_currency=cell("to_currency").upper(),
        executed_at=executed_at,
        note=note,
    )
    try:
        ledger_reads.ledger_entry(tx)
    except ledger.LedgerError as exc:
        raise ValueError(_column_message(exc)) from None
    limits = (("quantity", 12), ("price", 10), ("fee", 10), ("amount", 10), ("to_amount", 10))
    for name, limit in limits:
        value = getattr(tx, {"fee": "fees"}.get(name, name))
        if value.as_tuple().exponent < -limit:
            raise ValueError(f"{name}: {value} has more than {limit} decimal places")
    return tx


def import_csv(
    *,
    portfolio: Portfolio,
    text: IO[str],
    progress: Callable[[str, int, int], None] | None = None,
) -> ImportResult:
    """Import transactions from CSV ``text`` into ``portfolio``, all or nothing.

    Every row is checked (fields, kinds, symbols); then the whole ledger with the rows that
    read well is replayed, and a row the ledger refuses (e.g. selling more than held) is
    reported and left out to find the next one: one report names every bad row of every kind.
    ``progress(stage, done, total)`` reports each 10,000 rows: stage ``"checked"`` while
    reading, ``"stored"`` while writing (first with done=0).
    """
    result = ImportResult()
    lines = list(_rows(text, result.errors))
    if result.errors:
        return result
    if not lines:
        result.errors.append(RowError(1, "the file is empty"))
        return result
    header_line, header = lines[0]
    columns, problems = _header_map(header)
    if problems:
        result.errors += [RowError(header_line, p) for p in problems]
        return result
    instruments = {i.symbol.upper(): i for i in Instrument.objects.all()}
    unknown: dict[str, None] = {}
    parsed: list[tuple[int, Transaction]] = []
    body = lines[1:]
    for line, row in body:
        result.rows += 1
        try:
            parsed.append((line, _parse_row(line, row, columns, instruments, portfolio, unknown)))
        except ValueError as exc:
            result.errors.append(RowError(line, str(exc)))
        if progress and (result.rows % CHUNK == 0 or result.rows == len(body)):
            progress("checked", result.rows, len(body))
    result.unknown_symbols = sorted(unknown)
    # The ledger checks the rows that read well even when others did not: one report names
    # every bad row of every kind, in line order.
    _check_ledger(portfolio, parsed, result, skipped=len(result.errors))
    if result.errors:
        result.errors.sort(key=lambda e: (e.line == 0, e.line))  # file-wide ones last
        return result
    try:
        with transaction.atomic():
            total = len(parsed)
            if progress:
                progress("stored", 0, total)
            for start in range(0, total, CHUNK):
                Transaction.objects.bulk_create([tx for _, tx in parsed[start : start + CHUNK]])
                if progress:
                    progress("stored", min(start + CHUNK, total), total)
            try:
                services.holdings_recompute(portfolio=portfolio)
            except ledger.LedgerError as exc:
                # Checked above; only a concurrent change can get here.
                result.errors.append(RowError(0, str(exc)))
                raise ImportFailed(result) from None
    except ImportFailed:
        return result
    result.imported = len(parsed)
    return result


def _check_ledger(
    portfolio: Portfolio,
    parsed: list[tuple[int, Transaction]],
    result: ImportResult,
    *,
    skipped: int = 0,
) -> None:
    """Replay existing and new transactions; report every row the ledger refuses.

    ``skipped`` rows had field errors and are not in ``parsed``: a refusal then says it was
    found without them (a sale may only be refused because its bad BUY row was left out).
    """
    found = 0
    existing = [
        ledger_reads.ledger_entry(tx)
        for tx in Transaction.objects.filter(portfolio=portfolio)
        .select_related("instrument")
        .order_by("executed_at", "id")
    ]
    new = {}
    for line, tx in parsed:
        entry = ledger_reads.ledger_entry(tx)
        # The line number is the entry's ref, so a refusal names the row.
        new[line] = dataclasses.replace(entry, ref=f"line {line}")
    without = f" (checked without the {skipped} rows with field errors)" if skipped else ""
    while found < MAX_LEDGER_ERRORS:
        try:
            ledger.replay(
                [*existing, *new.values()],
                method=ledger.CostBasis(portfolio.cost_basis_method),
                allow_short=portfolio.allow_short,
            )
            return
        except ledger.LedgerError as exc:
            ref = exc.ref
            line = int(ref.removeprefix("line ")) if isinstance(ref, str) else 0
            message = _column_message(exc) + without
            if line == 0 or line not in new:
                result.errors.append(RowError(0, f"an existing transaction: {message}"))
                return
            result.errors.append(RowError(line, message))
            found += 1
            del new[line]
    result.errors.append(RowError(0, f"stopped after {MAX_LEDGER_ERRORS} ledger errors"))


def _column_message(exc: ledger.LedgerError) -> str:
    """The ledger's message, starting with the CSV column it is about ("fee: must not be...")."""
    message = str(exc).removeprefix(f"transaction {exc.ref!r}: ")
    if exc.field and message.startswith(exc.field):
        rest = message[len(exc.field) :].removeprefix(":").lstrip()
        message = f"{LEDGER_FIELD_COLUMNS.get(exc.field, exc.field)}: {rest}"
    return message


def export_rows(*, portfolio: Portfolio) -> Iterable[list[str]]:
    """The portfolio's ledger as CSV rows (header first), oldest first; import reads it back."""
    yield list(COLUMNS)
    rows = (
        Transaction.objects.filter(portfolio=portfolio)
        .select_related("instrument")
        .order_by("executed_at", "id")
    )
    for tx in rows.iterator(chunk_size=2000):
        yield [
            tx.executed_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            tx.kind,
            tx.instrument.symbol if tx.instrument_id else "",
            _plain(tx.quantity),
            _plain(tx.price),
            _plain(tx.fees),
            _plain(tx.amount),
            tx.currency,
            _plain(tx.ratio) if tx.ratio is not None else "",
            tx.note,
            _plain(tx.to_amount),
            tx.to_currency,
        ]


def _plain(value: Decimal) -> str:
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "" if text in ("0", "") else text


def export_csv(*, portfolio: Portfolio) -> str:
    """The whole export as one string (what the download and the command write)."""
    buffer = io.StringIO()
    # CRLF (RFC 4180) so that a note with a line break in it is quoted and reads back.
    csv.writer(buffer, lineterminator="\r\n").writerows(export_rows(portfolio=portfolio))
    return buffer.getvalue()
