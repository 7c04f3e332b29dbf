"""Daily candles from the exchanges' public REST APIs, to backfill price history.

One reader per exchange, each from its documentation: Binance ``GET /api/v3/klines``, Coinbase
Exchange ``GET /products/{id}/candles``, Kraken ``GET /0/public/OHLC``. Base URLs are the same
settings the feeds use (``BINANCE_REST_URL``, ``COINBASE_REST_URL``, ``KRAKEN_REST_URL``), so a
test or a testnet points them elsewhere. Every request has a timeout; a failed backfill stores
nothing for its instrument (a Celery retry runs it again, with backoff and jitter). Only
finished UTC days are kept: today's candle is still moving (Kraken's last entry always is), and
today comes from the feeds' bars.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings

from portfolio import price_history
from portfolio.models import FeedKind, Instrument, PriceSource

DAY = timedelta(days=1)
# Seconds one HTTP request may take (connect and each read).
REQUEST_TIMEOUT = 10.0
# Most rows a response may carry (Binance allows 1,000, Coinbase 300, Kraken returns 720).
BINANCE_LIMIT = 1000
COINBASE_LIMIT = 300
MAX_RESPONSE_BYTES = 8 * 2**20

Getter = Callable[[str], Any]


class BackfillError(Exception):
    """An exchange's answer that cannot be used; the message names the exchange and why."""


def http_get_json(url: str) -> Any:
    """GET ``url`` and parse its JSON with numbers as Decimal (Coinbase sends prices as JSON
    numbers: a float would change their digits)."""
    request = urllib.request.Request(  # the scheme comes from our configuration
        url, headers={"Accept": "application/json", "User-Agent": "livefolio-backfill"}
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            body = response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        detail = exc.read(500).decode("utf-8", "replace")
        raise BackfillError(f"GET {url}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise BackfillError(f"GET {url}: {exc}") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise BackfillError(f"GET {url}: the response is larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        return json.loads(body, parse_float=Decimal, parse_int=Decimal)
    except ValueError as exc:
        raise BackfillError(f"GET {url}: not JSON: {exc}") from None


def _decimal(value: object, what: str) -> Decimal:
    try:
        number = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except ArithmeticError:
        raise BackfillError(f"{what}: {value!r} is not a number") from None
    if not number.is_finite():
        raise BackfillError(f"{what}: {value!r} is not a finite number")
    return number


def _utc_day(seconds: Decimal, what: str) -> date:
    try:
        return datetime.fromtimestamp(int(seconds), tz=UTC).date()
    except (ValueError, OverflowError, TypeError):
        raise BackfillError(f"{what}: {seconds!r} is not a time") from None


def _day_prices(day: date, values: dict[str, object], what: str) -> price_history.DayPrices:
    numbers = {name: _decimal(value, f"{what} {name}") for name, value in values.items()}
    for name, number in numbers.items():
        if number < 0 or (number == 0 and name != "volume"):
            raise BackfillError(f"{what}: {name} {number} is not positive")
    if numbers["low"] > numbers["high"]:
        raise BackfillError(f"{what}: low {numbers['low']} is above high {numbers['high']}")
    return price_history.DayPrices(day=day, **numbers)


def _ms(day: date) -> int:
    return int(datetime.combine(day, time(0), tzinfo=UTC).timestamp() * 1000)


def binance_days(symbol: str, since: date, until: date, get: Getter) -> list:
    """Days from ``GET /api/v3/klines?interval=1d``: rows of [open time (ms), open, high, low,
    close, volume, close time, ...], prices as strings."""
    base = settings.BINANCE_REST_URL.rstrip("/")
    days, start = [], since
    while start <= until:
        query = urllib.parse.urlencode(
            {
                "symbol": symbol.upper(),
                "interval": "1d",
                "startTime": _ms(start),
                "endTime": _ms(until + DAY) - 1,
                "limit": BINANCE_LIMIT,
            }
        )
        rows = get(f"{base}/api/v3/klines?{query}")
        if not isinstance(rows, list):
            raise BackfillError(f"Binance klines for {symbol}: expected a list, got {rows!r:.200}")
        for row in rows:
            if not isinstance(row, list) or len(row) < 6:
                raise BackfillError(f"Binance klines for {symbol}: bad row {row!r:.200}")
            day = _utc_day(row[0] / 1000, f"Binance {symbol} open time")
            values = dict(zip(("open", "high", "low", "close", "volume"), row[1:6], strict=True))
            days.append(_day_prices(day, values, f"Binance {symbol} {day}"))
        if len(rows) < BINANCE_LIMIT:
            break
        start = days[-1].day + DAY
    return days


def coinbase_days(product: str, since: date, until: date, get: Getter) -> list:
    """Days from ``GET /products/{id}/candles?granularity=86400``: rows of [time (s), low,
    high, open, close, volume], newest first, at most 300 a request."""
    base = settings.COINBASE_REST_URL.rstrip("/")
    days, start = [], since
    while start <= until:
        end = min(until, start + (COINBASE_LIMIT - 1) * DAY)
        query = urllib.parse.urlencode(
            {
                "granularity": 86400,
                "start": f"{start.isoformat()}T00:00:00Z",
                "end": f"{end.isoformat()}T23:59:59Z",
            }
        )
        path = urllib.parse.quote(product, safe="")
        rows = get(f"{base}/products/{path}/candles?{query}")
        if not isinstance(rows, list):
            raise BackfillError(
                f"Coinbase candles for {product}: expected a list, got {rows!r:.200}"
            )
        for row in rows:
            # [time, low, high, open, close] and, in the responses, volume.
            if not isinstance(row, list) or len(row) < 5:
                raise BackfillError(f"Coinbase candles for {product}: bad row {row!r:.200}")
            day = _utc_day(row[0], f"Coinbase {product} time")
            names = ("low", "high", "open", "close", "volume")[: len(row) - 1]
            values = dict(zip(names, row[1:6], strict=False))
            days.append(_day_prices(day, values, f"Coinbase {product} {day}"))
        start = end + DAY
    return sorted(days, key=lambda d: d.day)


# Kraken's REST API names bitcoin XBT and dogecoin XDG where its WebSocket v2 says BTC and DOGE
# (AssetPairs: "XXBTZUSD" has altname "XBTUSD"; "API symbols and tickers", Kraken Support).
KRAKEN_REST_ASSETS = {"BTC": "XBT", "DOGE": "XDG"}


def kraken_rest_pair(feed_symbol: str) -> str:
    """The REST name Kraken accepts for a pair stored in its WebSocket v2 form: ``BTC/USD``
    -> ``XBTUSD`` (the pair's ``altname``); a name without a slash is already a REST one."""
    base, slash, quote = feed_symbol.upper().partition("/")
    if not slash:
        return feed_symbol
    return KRAKEN_REST_ASSETS.get(base, base) + KRAKEN_REST_ASSETS.get(quote, quote)


def kraken_days(pair: str, since: date, until: date, get: Getter) -> list:
    """Days from ``GET /0/public/OHLC?interval=1440``: ``{"error": [], "result": {<pair>:
    [[time (s), open, high, low, close, vwap, volume, count], ...], "last": ...}}``. Kraken
    serves only its most recent 720 entries, whatever ``since`` says. ``pair`` is the
    instrument's feed symbol as stored (the WebSocket v2 form, e.g. ``BTC/USD``); the request
    names it as REST does (:func:`kraken_rest_pair`) and the answer keys the candles by
    Kraken's own name for it (``XXBTZUSD``), so the one list beside ``last`` is read."""
    base = settings.KRAKEN_REST_URL.rstrip("/")
    since_s = int(datetime.combine(since, time(0), tzinfo=UTC).timestamp())
    rest_pair = kraken_rest_pair(pair)
    query = urllib.parse.urlencode({"pair": rest_pair, "interval": 1440, "since": since_s - 1})
    answer = get(f"{base}/0/public/OHLC?{query}")
    if not isinstance(answer, dict):
        raise BackfillError(f"Kraken OHLC for {pair}: expected an object, got {answer!r:.200}")
    if answer.get("error"):
        raise BackfillError(
            f"Kraken OHLC for {pair} ({rest_pair}): {', '.join(map(str, answer['error']))}"
        )
    result = answer.get("result")
    series = [v for k, v in result.items() if k != "last"] if isinstance(result, dict) else []
    if len(series) != 1 or not isinstance(series[0], list):
        raise BackfillError(f"Kraken OHLC for {pair}: no candle list in {answer!r:.200}")
    days = []
    for row in series[0]:
        if not isinstance(row, list) or len(row) < 7:
            raise BackfillError(f"Kraken OHLC for {pair}: bad row {row!r:.200}")
        day = _utc_day(row[0], f"Kraken {pair} time")
        values = {
            "open": row[1],
            "high": row[2],
            "low": row[3],
            "close": row[4],
            "volume": row[6],
        }
        days.append(_day_prices(day, values, f"Kraken {pair} {day}"))
    return days


READERS = {
    FeedKind.BINANCE: binance_days,
    FeedKind.COINBASE: coinbase_days,
    FeedKind.KRAKEN: kraken_days,
}


def backfill(
    *,
    instrument: Instrument,
    since: date,
    today: date | None = None,
    get: Getter = http_get_json,
) -> price_history.StoreResult:
    """Store the instrument's daily candles from ``since`` to yesterday (UTC) from its feed's
    exchange. Days an import holds are kept (an operator's word wins); days the bars' roll-up
    made are replaced. Raises ``BackfillError`` (nothing stored) on a bad answer, and
    ``ValueError`` for an instrument whose feed has no REST candles."""
    reader = READERS.get(FeedKind(instrument.feed))
    if reader is None:
        raise ValueError(f"{instrument.symbol}: the {instrument.feed} feed has no REST candles")
    today = today or datetime.now(UTC).date()
    until = today - DAY
    if since > until:
        return price_history.StoreResult(created=0, replaced=0, kept=0)
    days = {}
    for day in reader(instrument.feed_symbol, since, until, get):
        if since <= day.day <= until:
            days[day.day] = day  # a repeated day: the later row wins
    return price_history.daily_prices_store(
        instrument_id=instrument.id, days=days.values(), source=PriceSource.EXCHANGE
    )
