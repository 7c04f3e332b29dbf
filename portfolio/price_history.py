"""Daily price history per instrument (FX instruments alike): writes, reads and FX on a date.

Rows come from three sources, ranked (``models.PRICE_SOURCE_RANK``): the feeds' own 1-minute
bars rolled up per UTC day, exchanges' REST candles, and CSV imports. A row is only replaced by
a source of the same or a higher rank, so the bars' roll-up never overwrites what an operator
imported. A day without a row carries the last close before it forward, and says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.db import transaction
from django.db.models import Max, Min
from django.utils import timezone

from portfolio.day_values import ClosePrice, close_on
from portfolio.models import (
    PRICE_SOURCE_RANK,
    AssetClass,
    DailyPrice,
    Instrument,
    PriceBar,
    PriceSource,
    Quote,
)

# --- Writes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DayPrices:
    """One day's prices to store; open, high, low and volume may be unknown."""

    day: date
    close: Decimal
    open: Decimal | None = None
    high: Decimal | None = None
    low: Decimal | None = None
    volume: Decimal | None = None


@dataclass(frozen=True, slots=True)
class StoreResult:
    created: int
    replaced: int
    kept: int  # days a higher-ranked source already held


def daily_prices_store(
    *, instrument_id: int, days: Iterable[DayPrices], source: str
) -> StoreResult:
    """Upsert one instrument's days from ``source``; a day held by a higher-ranked source is
    kept. One transaction, rows locked: two writers of the same days do not interleave."""
    source = PriceSource(source)
    rank = PRICE_SOURCE_RANK[source]
    days = list(days)
    created = replaced = kept = 0
    now = timezone.now()
    with transaction.atomic():
        existing = {
            row.day: row
            for row in DailyPrice.objects.select_for_update().filter(
                instrument_id=instrument_id, day__in=[d.day for d in days]
            )
        }
        new, changed = [], []
        for d in days:
            fields = {
                "open": d.open,
                "high": d.high,
                "low": d.low,
                "close": d.close,
                "volume": d.volume,
                "source": source,
            }
            row = existing.get(d.day)
            if row is None:
                new.append(DailyPrice(instrument_id=instrument_id, day=d.day, **fields))
            elif PRICE_SOURCE_RANK[PriceSource(row.source)] > rank:
                kept += 1
            else:
                for name, value in fields.items():
                    setattr(row, name, value)
                row.updated_at = now  # bulk_update leaves auto_now alone; readers key on it
                changed.append(row)
        DailyPrice.objects.bulk_create(new, batch_size=2000)
        DailyPrice.objects.bulk_update(
            changed, ["open", "high", "low", "close", "volume", "source", "updated_at"], 2000
        )
        created, replaced = len(new), len(changed)
    return StoreResult(created=created, replaced=replaced, kept=kept)


def daily_prices_from_bars(*, since: date, until: date) -> int:
    """Roll the 1-minute bars of the UTC days ``since``..``until`` up into daily prices (open of
    the first minute, close of the last, the extremes between); returns the days stored. A day
    an exchange's candles or an import already hold is left as it is."""
    start = datetime.combine(since, time(0), tzinfo=UTC)
    end = datetime.combine(until + timedelta(days=1), time(0), tzinfo=UTC)
    per_day: dict[tuple[int, date], list] = {}
    bars = (
        PriceBar.objects.filter(start__gte=start, start__lt=end)
        .order_by("instrument_id", "start")
        .values_list("instrument_id", "start", "open", "high", "low", "close")
    )
    for instrument_id, at, o, h, lo, c in bars.iterator(chunk_size=5000):
        key = (instrument_id, at.astimezone(UTC).date())
        day = per_day.get(key)
        if day is None:
            per_day[key] = [o, h, lo, c]
        else:
            day[1], day[2], day[3] = max(day[1], h), min(day[2], lo), c
    stored = 0
    by_instrument: dict[int, list[DayPrices]] = {}
    for (instrument_id, day), (o, h, lo, c) in per_day.items():
        by_instrument.setdefault(instrument_id, []).append(
            DayPrices(day=day, open=o, high=h, low=lo, close=c)
        )
    for instrument_id, days in by_instrument.items():
        result = daily_prices_store(instrument_id=instrument_id, days=days, source=PriceSource.BARS)
        stored += result.created + result.replaced
    return stored


# --- Reads -----------------------------------------------------------------------------------


def price_series(*, instrument_id: int, until: date | None = None) -> list[tuple[date, Decimal]]:
    """(day, close) of an instrument, oldest first (up to ``until``)."""
    rows = DailyPrice.objects.filter(instrument_id=instrument_id)
    if until is not None:
        rows = rows.filter(day__lte=until)
    return [
        (day, close.normalize()) for day, close in rows.order_by("day").values_list("day", "close")
    ]


def close_on_day(*, instrument_id: int, day: date) -> ClosePrice | None:
    """The instrument's close on ``day`` (carried from the last earlier day if it has none)."""
    row = (
        DailyPrice.objects.filter(instrument_id=instrument_id, day__lte=day)
        .order_by("-day")
        .values_list("day", "close")
        .first()
    )
    return None if row is None else ClosePrice(day=day, close=row[1].normalize(), priced_on=row[0])


def history_span(*, instrument_id: int) -> tuple[date | None, date | None, int]:
    """First day, last day and number of days stored for an instrument."""
    rows = DailyPrice.objects.filter(instrument_id=instrument_id)
    span = rows.aggregate(first=Min("day"), last=Max("day"))
    return span["first"], span["last"], rows.count()


def fx_pair(instrument: Instrument) -> tuple[str, str] | None:
    """(from, to) currencies of an FX instrument: ``EURUSD`` or ``EUR-USD`` quoted in USD, whose
    price is how many USD one EUR buys."""
    letters = "".join(ch for ch in instrument.symbol.upper() if ch.isalnum())
    target = instrument.quote_currency.upper()
    if not letters.endswith(target) or len(letters) == len(target):
        return None
    return letters[: -len(target)], target


@dataclass(frozen=True, slots=True)
class FxRate:
    """How many base-currency units one unit of ``currency`` bought on ``day``, and where that
    number came from: ``"history"`` (that day's close), ``"carried"`` (an earlier day's close)
    or ``"latest quote"`` (no history on or before the day: today's rate stands in)."""

    currency: str
    day: date
    rate: Decimal
    how: str
    priced_on: date | None = None

    @property
    def from_history(self) -> bool:
        return self.how != "latest quote"


class FxHistory:
    """FX rates into one base currency on any day, from the FX instruments' daily history
    (direct or inverse pair, no triangulation), falling back to the latest quote only where a
    currency has no history on or before the day. Loaded once: a ledger replay asks per trade."""

    def __init__(self, *, base_currency: str, currencies: Iterable[str]) -> None:
        self.base = base_currency.upper()
        wanted = {c.upper() for c in currencies} - {self.base}
        # currency -> (instrument id, inverted?)
        self.pairs: dict[str, tuple[int, bool]] = {}
        for instrument in Instrument.objects.filter(asset_class=AssetClass.FX):
            pair = fx_pair(instrument)
            if pair is None:
                continue
            if pair[1] == self.base and pair[0] in wanted:
                self.pairs.setdefault(pair[0], (instrument.id, False))
            elif pair[0] == self.base and pair[1] in wanted:
                self.pairs.setdefault(pair[1], (instrument.id, True))
        ids = [i for i, _ in self.pairs.values()]
        self.series: dict[int, list[tuple[date, Decimal]]] = {i: [] for i in ids}
        rows = DailyPrice.objects.filter(instrument_id__in=ids).order_by("instrument_id", "day")
        for instrument_id, day, close in rows.values_list("instrument_id", "day", "close"):
            self.series[instrument_id].append((day, close.normalize()))
        self.latest = {
            i: price.normalize()
            for i, price in Quote.objects.filter(instrument_id__in=ids).values_list(
                "instrument_id", "price"
            )
        }

    def rate_on(self, currency: str, day: date) -> FxRate | None:
        """The rate of ``currency`` into the base currency on ``day``; None when there is
        neither history nor a quote for it."""
        currency = currency.upper()
        if currency == self.base:
            return FxRate(currency, day, Decimal(1), "history", day)
        found = self.pairs.get(currency)
        if found is None:
            return None
        instrument_id, inverted = found
        close = close_on(self.series[instrument_id], day)
        if close is not None:
            rate, how, priced_on = (
                close.close,
                "carried" if close.carried else "history",
                close.priced_on,
            )
        elif instrument_id in self.latest:
            rate, how, priced_on = self.latest[instrument_id], "latest quote", None
        else:
            return None
        return FxRate(currency, day, 1 / rate if inverted else rate, how, priced_on)
