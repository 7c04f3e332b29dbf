"""Backfilling daily prices from the exchanges' REST candles, against a local fake HTTP server
that answers with each exchange's own documented sample response."""

from __future__ import annotations

import http.server
import io
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import date
from decimal import Decimal

import pytest
from django.core.management import call_command

from portfolio import exchange_candles, tasks
from portfolio.importers import prices_csv
from portfolio.models import AssetClass, DailyPrice, FeedKind, Instrument

# Binance Spot API, "Kline/Candlestick data" (GET /api/v3/klines), the response example:
# https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints#klinecandlestick-data
BINANCE_KLINES = """[
  [
    1499040000000,
    "0.01634790",
    "0.80000000",
    "0.01575800",
    "0.01577100",
    "148976.11427815",
    1499644799999,
    "2434.19055334",
    308,
    "1756.87402397",
    "28.46694368",
    "0"
  ]
]"""
# Binance's documented error body for an unknown symbol (error code -1121, "Invalid symbol."):
# https://developers.binance.com/docs/binance-spot-api-docs/errors#-1121-invalid_symbol
BINANCE_INVALID_SYMBOL = '{"code": -1121, "msg": "Invalid symbol."}'
# Coinbase Exchange, "Get product candles" (GET /products/{product_id}/candles): each bucket is
# [time, low, high, open, close, volume]; the documentation's example bucket:
# https://docs.cdp.coinbase.com/api-reference/exchange-api/rest-api/products/get-product-candles
COINBASE_CANDLES = "[[1415398768, 0.32, 4.2, 0.35, 4.2, 12.3]]"
# Kraken Spot REST, "Get OHLC Data" (GET /0/public/OHLC), the response example's first entry,
# keyed by Kraken's own name for the pair ("XXBTZUSD"), beside "last":
# https://docs.kraken.com/api-reference/market-data/get-ohlc-data
KRAKEN_OHLC = (
    '{"error":[],"result":{"XXBTZUSD":[[1688671200,"30306.1","30306.2","30305.7","30305.7",'
    '"30306.1","3.39243896",23]],"last":1688672160}}'
)
# The names Kraken's REST API accepts for that pair: the AssetPairs key and its altname
# (https://docs.kraken.com/api-reference/market-data/get-tradable-asset-pairs: "XXBTZUSD" has
# "altname": "XBTUSD", "wsname": "XBT/USD"); the WebSocket v2 form "BTC/USD" is not one.
KRAKEN_REST_BTC_USD = {"XXBTZUSD", "XBTUSD"}
# Kraken's error envelope (HTTP 200, a non-empty "error" array of "E<category>:<message>"), with
# its documented unknown-pair error: https://docs.kraken.com/api/docs/guides/spot-errors/
KRAKEN_UNKNOWN_PAIR = '{"error":["EQuery:Unknown asset pair"],"result":{}}'


class FakeRest:
    """A local HTTP server: ``routes[path]`` is (status, body); every request is recorded."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str]] = {}
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.silent = False  # accept the connection, never answer (a timeout)
        # path -> the pair names Kraken accepts there; any other answers Kraken's unknown pair
        self.kraken_pairs: dict[str, set[str]] = {}
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parsed = urllib.parse.urlparse(self.path)
                fake.requests.append((parsed.path, urllib.parse.parse_qs(parsed.query)))
                if fake.silent:
                    fake.release.wait(5)
                    return
                status, body = fake.routes.get(parsed.path, (404, '{"message":"NotFound"}'))
                pairs = fake.kraken_pairs.get(parsed.path)
                asked = urllib.parse.parse_qs(parsed.query).get("pair", [""])[0]
                if pairs is not None and asked not in pairs:
                    status, body = 200, KRAKEN_UNKNOWN_PAIR
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.release = threading.Event()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"


@pytest.fixture
def fake_rest(settings) -> Iterator[FakeRest]:
    fake = FakeRest()
    fake.thread.start()
    settings.BINANCE_REST_URL = fake.url
    settings.COINBASE_REST_URL = fake.url + "/"
    settings.KRAKEN_REST_URL = fake.url
    yield fake
    fake.release.set()
    fake.server.shutdown()
    fake.server.server_close()


def instrument(symbol, feed, feed_symbol, currency="USD"):
    return Instrument.objects.create(
        symbol=symbol,
        name=symbol,
        asset_class=AssetClass.CRYPTO,
        quote_currency=currency,
        feed=feed,
        feed_symbol=feed_symbol,
    )


def stored(inst):
    return list(
        DailyPrice.objects.filter(instrument=inst)
        .order_by("day")
        .values_list("day", "open", "high", "low", "close", "volume", "source")
    )


def test_binance_klines_documented_sample_becomes_a_day(db, fake_rest):
    fake_rest.routes["/api/v3/klines"] = (200, BINANCE_KLINES)
    pair = instrument("ETH-BTC", FeedKind.BINANCE, "ethbtc", "BTC")
    result = exchange_candles.backfill(
        instrument=pair, since=date(2017, 7, 1), today=date(2017, 7, 10)
    )
    assert (result.created, result.replaced, result.kept) == (1, 0, 0)
    assert stored(pair) == [
        (
            date(2017, 7, 3),
            Decimal("0.01634790"),
            Decimal("0.80000000"),
            Decimal("0.01575800"),
            Decimal("0.01577100"),
            Decimal("148976.11427815"),
            "exchange",
        )
    ]
    path, query = fake_rest.requests[0]
    assert path == "/api/v3/klines"
    assert query["symbol"] == ["ETHBTC"] and query["interval"] == ["1d"]
    assert query["startTime"] == ["1498867200000"]  # 2017-07-01T00:00Z
    assert query["endTime"] == ["1499644799999"]  # the end of 9 July, yesterday
    assert query["limit"] == ["1000"]


def test_coinbase_candles_documented_sample_keeps_the_numbers_digits(db, fake_rest):
    fake_rest.routes["/products/BTC-USD/candles"] = (200, COINBASE_CANDLES)
    btc = instrument("BTC-USD", FeedKind.COINBASE, "BTC-USD")
    exchange_candles.backfill(instrument=btc, since=date(2014, 11, 1), today=date(2014, 11, 20))
    # [time, low, high, open, close, volume]: JSON numbers read as Decimal, never as floats.
    assert stored(btc) == [
        (
            date(2014, 11, 7),
            Decimal("0.35"),
            Decimal("4.2"),
            Decimal("0.32"),
            Decimal("4.2"),
            Decimal("12.3"),
            "exchange",
        )
    ]
    path, query = fake_rest.requests[0]
    assert path == "/products/BTC-USD/candles"
    assert query["granularity"] == ["86400"]
    assert (query["start"], query["end"]) == (["2014-11-01T00:00:00Z"], ["2014-11-19T23:59:59Z"])


def test_kraken_ohlc_documented_sample_becomes_a_day(db, fake_rest):
    fake_rest.routes["/0/public/OHLC"] = (200, KRAKEN_OHLC)
    fake_rest.kraken_pairs["/0/public/OHLC"] = KRAKEN_REST_BTC_USD
    btc = instrument("BTC-USD", FeedKind.KRAKEN, "BTC/USD")  # as the WebSocket v2 feed names it
    exchange_candles.backfill(instrument=btc, since=date(2023, 7, 1), today=date(2023, 7, 8))
    assert stored(btc) == [
        (
            date(2023, 7, 6),
            Decimal("30306.1"),
            Decimal("30306.2"),
            Decimal("30305.7"),
            Decimal("30305.7"),
            Decimal("3.39243896"),
            "exchange",
        )
    ]
    path, query = fake_rest.requests[0]
    assert path == "/0/public/OHLC"
    assert (query["pair"], query["interval"]) == (["XBTUSD"], ["1440"])


@pytest.mark.parametrize(
    ("feed_symbol", "rest_pair"),
    [("BTC/USD", "XBTUSD"), ("DOGE/EUR", "XDGEUR"), ("ETH/BTC", "ETHXBT"), ("SOL/USD", "SOLUSD"),
     ("XBTUSD", "XBTUSD")],
)  # fmt: skip
def test_kraken_rest_names_bitcoin_and_dogecoin_its_own_way(feed_symbol, rest_pair):
    """AssetPairs' altnames (docs.kraken.com, "Get Tradable Asset Pairs": "XETHXXBT" is
    "ETHXBT", "XXBTZUSD" is "XBTUSD"); the WebSocket v2 names say BTC and DOGE."""
    assert exchange_candles.kraken_rest_pair(feed_symbol) == rest_pair


def test_todays_unfinished_candle_is_not_stored(db, fake_rest):
    fake_rest.routes["/0/public/OHLC"] = (200, KRAKEN_OHLC)
    btc = instrument("BTC-USD", FeedKind.KRAKEN, "BTC/USD")
    # 6 July 2023 is "today": its candle is still moving (Kraken's last entry always is).
    exchange_candles.backfill(instrument=btc, since=date(2023, 7, 1), today=date(2023, 7, 6))
    assert stored(btc) == []


@pytest.mark.parametrize(
    ("feed", "feed_symbol", "route", "answer", "message"),
    [
        (FeedKind.BINANCE, "NOPE", "/api/v3/klines", (400, BINANCE_INVALID_SYMBOL),
         "HTTP 400: {\"code\": -1121, \"msg\": \"Invalid symbol.\"}"),
        (FeedKind.KRAKEN, "NOPE/USD", "/0/public/OHLC", (200, KRAKEN_UNKNOWN_PAIR),
         "Kraken OHLC for NOPE/USD (NOPEUSD): EQuery:Unknown asset pair"),
        (FeedKind.COINBASE, "BTC-USD", "/products/BTC-USD/candles",
         (200, "[[1415398768, 0.32, 4.2, 0.35, -4.2, 12.3]]"),
         "Coinbase BTC-USD 2014-11-07: close -4.2 is not positive"),
        (FeedKind.COINBASE, "BTC-USD", "/products/BTC-USD/candles", (200, "<html>busy</html>"),
         "not JSON"),
    ],
)  # fmt: skip
def test_a_refusal_or_bad_answer_is_named_and_stores_nothing(
    db, fake_rest, feed, feed_symbol, route, answer, message
):
    fake_rest.routes[route] = answer
    inst = instrument("X-USD", feed, feed_symbol)
    with pytest.raises(exchange_candles.BackfillError) as caught:
        exchange_candles.backfill(instrument=inst, since=date(2014, 11, 1), today=date(2024, 1, 1))
    assert message in str(caught.value)
    assert stored(inst) == []


def test_an_exchange_that_never_answers_times_out(db, fake_rest, monkeypatch):
    monkeypatch.setattr(exchange_candles, "REQUEST_TIMEOUT", 0.5)
    fake_rest.silent = True
    btc = instrument("BTC-USD", FeedKind.KRAKEN, "BTC/USD")
    with pytest.raises(exchange_candles.BackfillError, match="timed out"):
        exchange_candles.backfill(instrument=btc, since=date(2023, 7, 1), today=date(2023, 7, 8))


def test_an_import_wins_over_the_exchange_and_the_exchange_over_the_bars(db, fake_rest):
    fake_rest.routes["/0/public/OHLC"] = (200, KRAKEN_OHLC)
    btc = instrument("BTC-USD", FeedKind.KRAKEN, "BTC/USD")
    assert prices_csv.import_prices(
        instrument=btc, text=io.StringIO("date,close\n2023-07-06,30000\n")
    ).ok
    result = exchange_candles.backfill(
        instrument=btc, since=date(2023, 7, 1), today=date(2023, 7, 8)
    )
    assert (result.created, result.replaced, result.kept) == (0, 0, 1)
    assert stored(btc)[0][4:] == (Decimal("30000"), None, "csv")
    DailyPrice.objects.filter(instrument=btc).update(source="bars")
    exchange_candles.backfill(instrument=btc, since=date(2023, 7, 1), today=date(2023, 7, 8))
    assert stored(btc)[0][4:] == (Decimal("30305.7"), Decimal("3.39243896"), "exchange")


def test_backfillprices_command_and_the_celery_task(db, fake_rest, capsys):
    fake_rest.routes["/api/v3/klines"] = (200, BINANCE_KLINES)
    pair = instrument("ETH-BTC", FeedKind.BINANCE, "ETHBTC", "BTC")
    call_command("backfillprices", "eth-btc", "--since", "2017-07-01")
    assert "ETH-BTC: 1 days added, 0 replaced, 0 kept (imported)." in capsys.readouterr().out
    assert tasks.backfill_instrument_prices(pair.id, 10_000) == 1  # the same day, replaced
    simulated = instrument("SIM", FeedKind.SIMULATED, "SIM")
    assert tasks.backfill_instrument_prices(simulated.id, 7) == 0  # no REST candles: skipped
    assert len(fake_rest.requests) == 2
