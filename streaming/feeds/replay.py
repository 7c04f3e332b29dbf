"""Replay of recorded ticks from a CSV file, in real time, faster, or as fast as possible.

The file has a header row naming at least ``ts``, ``symbol`` and ``price`` (``bid`` and ``ask``
are optional; other columns are ignored), one tick per row, e.g.::

    ts,symbol,price,bid,ask
    2024-03-01T14:30:00.125Z,BTCUSDT,61234.50,61234.40,61234.60

``ts`` is ISO-8601 UTC (a timestamp without an offset is read as UTC). Rows are played in file
order; the wait before a row is its distance from the first row's ``ts`` divided by ``speed``.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import ClassVar

from .base import Emit, Feed, Tick, utcnow
from .connection import truncate
from .values import from_iso, to_decimal

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("ts", "symbol", "price")
OPTIONAL_COLUMNS = ("bid", "ask")
YIELD_EVERY = 500  # rows emitted without sleeping before letting other tasks run


class ReplayFileError(Exception):
    """The replay file is missing, unreadable, or has no header this feed understands."""


@dataclass(frozen=True, slots=True)
class _Row:
    ts: datetime
    symbol: str
    price: Decimal
    bid: Decimal | None
    ask: Decimal | None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) pairs, 1-based, without line endings."""
    # Undecodable bytes become U+FFFD so the row is reported as malformed, not fatal.
    with path.open(encoding="utf-8", errors="replace", newline="") as file:
        for number, line in enumerate(file, start=1):
            yield number, line.rstrip("\r\n")


class ReplayFeed(Feed):
    """Plays a CSV of ticks as :class:`Tick` events.

    Malformed rows are counted in ``stats.malformed_frames`` and logged with their line number
    and text; they never stop the replay. A missing file or an unusable header raises
    :class:`ReplayFileError` as soon as :meth:`run` starts. At the end of the file the feed
    starts over when ``loop`` is set, otherwise it idles until cancelled.
    """

    name: ClassVar[str] = "replay"

    def __init__(
        self,
        *,
        emit: Emit,
        path: str | Path,
        speed: float = 1.0,
        loop: bool = False,
        rebase_to_now: bool = False,
    ) -> None:
        """
        Args:
            path: the CSV file.
            speed: 1 plays in real time, N plays N times faster, 0 plays as fast as possible.
            loop: start over at the end of the file.
            rebase_to_now: stamp ticks with the replay's wall-clock time instead of the file's,
                so that a replayed past looks live to the rest of the system.
        """
        super().__init__(emit=emit)
        if speed < 0:
            raise ValueError("speed must be 0 (as fast as possible) or positive")
        self.path = Path(path)
        self.speed = speed
        self.loop = loop
        self.rebase_to_now = rebase_to_now
        # Set when the end of the file is reached without ``loop``: run() then only idles.
        self.finished = asyncio.Event()

    def _open(self) -> tuple[Iterator[tuple[int, str]], list[str]]:
        """The remaining lines and the normalised header, or a ReplayFileError saying why not."""
        if not self.path.is_file():
            raise ReplayFileError(f"replay file not found: {self.path}")
        lines = _lines(self.path)
        try:
            header_line = next((text for _, text in lines if text.strip()), None)
        except (OSError, UnicodeDecodeError) as exc:
            raise ReplayFileError(f"replay file {self.path} is unreadable: {exc}") from exc
        if header_line is None:
            raise ReplayFileError(f"replay file {self.path} is empty; expected a header row")
        header = [column.strip().lower() for column in next(csv.reader([header_line]))]
        missing = [column for column in REQUIRED_COLUMNS if column not in header]
        if missing:
            raise ReplayFileError(
                f"replay file {self.path} has no header with {', '.join(REQUIRED_COLUMNS)} "
                f"(missing {', '.join(missing)}); first line: {truncate(header_line, 120)}"
            )
        return lines, header

    async def run(self) -> None:
        """Replay the file (again and again with ``loop``), then idle until cancelled."""
        lines, header = self._open()
        self.stats.set_state("connected", f"replaying {self.path.name} at speed {self.speed}")
        try:
            while True:
                played = await self._play(lines, header)
                log.info("replay: %s finished, %d ticks played", self.path.name, played)
                if not self.loop:
                    break
                if played == 0:
                    log.warning("replay: %s has no playable rows; not looping", self.path.name)
                    break
                await asyncio.sleep(0)  # a short file at speed 0 must not starve the loop
                lines, header = self._open()
            self.stats.set_state("stopped", "end of file")
            self.finished.set()
            await asyncio.Event().wait()
        finally:
            self.stats.set_state("stopped")

    async def _play(self, lines: Iterator[tuple[int, str]], header: list[str]) -> int:
        started = time.monotonic()
        started_wall = utcnow()
        first_ts: datetime | None = None
        played = since_yield = 0
        for number, text in lines:
            if not text.strip():
                continue
            try:
                row = self._parse(text, header)
            except (ValueError, TypeError, ArithmeticError) as exc:
                self.stats.malformed_frames += 1
                log.warning(
                    "replay: %s line %d skipped (%s): %s",
                    self.path.name,
                    number,
                    exc,
                    truncate(text),
                )
                continue
            first_ts = first_ts or row.ts
            offset = (row.ts - first_ts).total_seconds()
            if self.speed > 0:
                delay = started + offset / self.speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                    since_yield = 0
            if since_yield >= YIELD_EVERY:
                await asyncio.sleep(0)  # stay cancellable and fair at speed 0
                since_yield = 0
            since_yield += 1
            if self.symbols and row.symbol not in self.symbols:
                continue
            ts = row.ts
            if self.rebase_to_now:
                ts = (
                    started_wall + timedelta(seconds=offset / self.speed)
                    if self.speed
                    else utcnow()
                )
            self.stats.record_message(row.symbol)
            self.emit(
                Tick(feed_symbol=row.symbol, price=row.price, ts=ts, bid=row.bid, ask=row.ask)
            )
            played += 1
        return played

    @staticmethod
    def _parse(text: str, header: list[str]) -> _Row:
        fields = next(csv.reader([text]))
        if len(fields) != len(header):
            raise ValueError(f"expected {len(header)} columns, got {len(fields)}")
        values = {column: value.strip() for column, value in zip(header, fields, strict=True)}
        symbol = values["symbol"]
        if not symbol:
            raise ValueError("empty symbol")
        price = to_decimal(values["price"])
        if price <= 0:
            raise ValueError(f"price must be positive, got {values['price']}")
        optional = {
            column: to_decimal(values[column]) if values.get(column) else None
            for column in OPTIONAL_COLUMNS
        }
        return _Row(
            ts=from_iso(values["ts"]),
            symbol=symbol,
            price=price,
            bid=optional["bid"],
            ask=optional["ask"],
        )
