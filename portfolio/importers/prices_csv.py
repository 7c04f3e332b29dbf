"""An instrument's daily prices from CSV (docs/csv-format.md, "Price history"):
``date,close[,open,high,low,volume]``. All or nothing: any bad row and nothing is stored, and
every bad row is named with its line number and reason."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import IO

from portfolio import price_history
from portfolio.importers.transactions_csv import RowError
from portfolio.models import Instrument, PriceSource

COLUMNS = ("date", "close", "open", "high", "low", "volume")
REQUIRED = ("date", "close")
# The columns' decimal places (models.PRICE and models.QUANTITY).
PLACES = {"close": 10, "open": 10, "high": 10, "low": 10, "volume": 12}
LIMITS = {"close": 10**14, "open": 10**14, "high": 10**14, "low": 10**14, "volume": 10**18}


@dataclass
class PriceImportResult:
    """What a price import did, or why it did nothing."""

    rows: int = 0
    created: int = 0
    replaced: int = 0  # days already stored (from any source) that the file replaced
    errors: list[RowError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _number(raw: str, name: str, *, required: bool) -> Decimal | None:
    text = raw.strip().replace("_", "")
    if not text:
        if required:
            raise ValueError(f"{name}: is empty")
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{name}: {raw.strip()!r} is not a number") from None
    if not value.is_finite():
        raise ValueError(f"{name}: {raw.strip()!r} is not a finite number")
    if name == "volume":
        if value < 0:
            raise ValueError(f"volume: must not be negative, got {value}")
    elif value <= 0:
        raise ValueError(f"{name}: must be positive, got {value}")
    if value.as_tuple().exponent < -PLACES[name]:
        raise ValueError(f"{name}: {value} has more than {PLACES[name]} decimal places")
    if value >= LIMITS[name]:
        raise ValueError(f"{name}: {value} is too large")
    return value


def _day(raw: str) -> date:
    text = raw.strip()
    if not text:
        raise ValueError("date: is empty")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"date: {text!r} is not an ISO-8601 date (e.g. 2026-03-01)") from None


def parse_row(row: list[str], columns: dict[str, int]) -> price_history.DayPrices:
    """One row as a day's prices; ``ValueError`` names the column and what is wrong."""

    def cell(name: str) -> str:
        index = columns.get(name)
        return row[index] if index is not None and index < len(row) else ""

    day = _day(cell("date"))
    values = {
        name: _number(cell(name), name, required=name == "close")
        for name in ("close", "open", "high", "low", "volume")
    }
    close, high, low = values["close"], values["high"], values["low"]
    problems = []
    if high is not None:
        for name in ("open", "close", "low"):
            if values[name] is not None and values[name] > high:
                problems.append(f"high: {high} is below {name} {values[name]}")
    if low is not None:
        for name in ("open", "close"):
            if values[name] is not None and values[name] < low:
                problems.append(f"low: {low} is above {name} {values[name]}")
    if problems:
        raise ValueError("; ".join(problems))
    return price_history.DayPrices(
        day=day,
        close=close,
        open=values["open"],
        high=high,
        low=low,
        volume=values["volume"],
    )


def _header(header: list[str]) -> tuple[dict[str, int], list[str]]:
    columns: dict[str, int] = {}
    problems = []
    for index, name in enumerate(header):
        key = name.strip().lower()
        if key not in COLUMNS:
            problems.append(
                f"unknown column {name.strip()!r}: the columns are {', '.join(COLUMNS)}"
            )
        elif key in columns:
            problems.append(f"column {key!r} appears twice")
        else:
            columns[key] = index
    for required in REQUIRED:
        if required not in columns:
            problems.append(f"missing the {required!r} column")
    return columns, problems


def import_prices(*, instrument: Instrument, text: IO[str]) -> PriceImportResult:
    """Import ``instrument``'s daily prices from CSV ``text``, all or nothing.

    The first non-empty line names the columns (``date`` and ``close`` required; ``open``,
    ``high``, ``low``, ``volume`` optional, any order). Dates are UTC calendar days, each once.
    A day already stored is replaced: an import is the operator's word.
    """
    result = PriceImportResult()
    reader = csv.reader(text)
    columns: dict[str, int] | None = None
    days: list[price_history.DayPrices] = []
    seen: dict[date, int] = {}
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if columns is None:
                columns, problems = _header(row)
                if problems:
                    result.errors += [RowError(line, p) for p in problems]
                    return result
                continue
            result.rows += 1
            try:
                day = parse_row(row, columns)
            except ValueError as exc:
                result.errors.append(RowError(line, str(exc)))
                continue
            if day.day in seen:
                result.errors.append(
                    RowError(line, f"date: {day.day} is already on line {seen[day.day]}")
                )
                continue
            seen[day.day] = line
            days.append(day)
    except csv.Error as exc:
        result.errors.append(RowError(reader.line_num, f"not readable as CSV: {exc}"))
    if columns is None and not result.errors:
        result.errors.append(RowError(1, "the file is empty"))
    if not result.errors and not days:
        result.errors.append(RowError(1, "the file has a header and no prices"))
    if result.errors:
        return result
    stored = price_history.daily_prices_store(
        instrument_id=instrument.id, days=days, source=PriceSource.CSV
    )
    result.created, result.replaced = stored.created, stored.replaced
    return result
