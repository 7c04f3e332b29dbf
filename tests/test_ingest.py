"""Ingest stores the newest quote, values the portfolios holding it, tells only their owners."""

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer

from portfolio import services
from portfolio.models import PriceBar, Quote
from streaming import events
from streaming.tasks import ingest_quotes, parse_batch
from tests.conftest import ROOT
from tests.websocket import as_sent

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def tick(instrument, price, ts, **extra):
    return {
        "instrument": instrument.id,
        "price": price,
        "ts": ts.isoformat(),
        "source": "simulated",
        **extra,
    }


def store(instrument, price, ts):
    return services.quotes_store(
        updates=[
            services.QuoteUpdate(
                instrument_id=instrument.id,
                price=Decimal(price),
                exchange_ts=ts,
                source="simulated",
            )
        ]
    )


def test_newer_exchange_time_wins_and_older_or_equal_changes_nothing(world):
    btc = world["btc"]
    assert store(btc, "100", T0) == [btc.id]
    assert store(btc, "101", T0 + timedelta(seconds=1)) == [btc.id]
    assert store(btc, "99", T0) == []  # older
    assert store(btc, "98", T0 + timedelta(seconds=1)) == []  # duplicate time
    quote = Quote.objects.get(instrument=btc)
    assert quote.price == Decimal("101")
    assert quote.exchange_ts == T0 + timedelta(seconds=1)


@pytest.mark.parametrize(
    "price", ["1E+2", "1E-8", "0.00000001", "123456789012.12345678", "99999999999999.9999999999"]
)
def test_a_stored_price_is_the_decimal_sent_whatever_its_notation(world, price):
    # Rows reach PostgreSQL as one JSON document of decimal strings (services._upsert).
    btc = world["btc"]
    ts = T0 + timedelta(microseconds=123456)
    ingest_quotes([tick(btc, price, ts, bid=price, ask=price)])
    quote = Quote.objects.get(instrument=btc)
    assert (quote.price, quote.bid, quote.ask) == (Decimal(price),) * 3
    assert quote.exchange_ts == ts
    bar = PriceBar.objects.get(instrument=btc)
    assert (bar.open, bar.close, bar.open_ts) == (Decimal(price), Decimal(price), ts)


def test_newest_tick_in_one_batch_wins_whatever_the_order(world):
    btc = world["btc"]
    ingest_quotes([tick(btc, "102", T0 + timedelta(seconds=2)), tick(btc, "101", T0)])
    assert Quote.objects.get(instrument=btc).price == Decimal("102")


def test_running_the_same_batch_twice_has_no_second_effect(world):
    batch = [tick(world["btc"], "100.5", T0), tick(world["eth"], "3000", T0)]
    assert ingest_quotes(batch) == 2
    assert ingest_quotes(batch) == 0
    assert Quote.objects.count() == 2


def test_unknown_instrument_is_ignored_and_the_rest_stored(world):
    batch = [
        {"instrument": 999999, "price": "1", "ts": T0.isoformat(), "source": "simulated"},
        tick(world["btc"], "100", T0),
    ]
    assert ingest_quotes(batch) == 1
    assert Quote.objects.get().instrument_id == world["btc"].id


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"price": "-1"}, "price must be positive"),
        ({"price": "abc"}, "ConversionSyntax"),
        ({"price": 1.5}, "price must be a decimal string, not a float"),
        ({"price": "NaN"}, "price must be finite"),
        ({"price": "1E+14"}, "price 1E+14 is too large: at most 14 digits before the point"),
        ({"price": "0.00000000004"}, "price 0.00000000004 rounds to 0 at 10 decimal places"),
        ({"bid": "1E+15", "ask": "2E+15"}, "bid 1E+15 is too large"),
        ({"price": "99999999999999.99999999995"}, "is too large"),  # rounds up to 10**14
        ({"bid": "11", "ask": "10"}, "bid 11 is above ask 10"),
        ({"ts": "2026-11-27T12:00:00"}, "ts must carry a timezone"),
        ({"source": "nasdaq"}, "unknown source 'nasdaq'"),
    ],
)
def test_bad_items_are_dropped_with_a_reason_naming_the_field(world, caplog, item, reason):
    good = tick(world["eth"], "3000", T0)
    bad = tick(world["btc"], "100", T0) | item
    assert [u.instrument_id for u in parse_batch([bad, good])] == [world["eth"].id]
    assert reason in caplog.text
    assert "dropped item 0" in caplog.text


@pytest.mark.parametrize("price", ["1E+20", "0.00000000001", "99999999999999.99999999995"])
def test_a_price_the_database_cannot_store_drops_that_tick_not_the_batch(world, caplog, price):
    # numeric(24, 10): the first overflows it, the second rounds to 0 (quote_price_positive),
    # the third rounds up to 10**14 and overflows it.
    assert ingest_quotes([tick(world["btc"], price, T0), tick(world["eth"], "3000", T0)]) == 1
    assert [(q.instrument_id, q.price) for q in Quote.objects.all()] == [
        (world["eth"].id, Decimal("3000"))
    ]
    assert f"price {price} " in caplog.text


def ingest_scenario() -> dict:
    """Three batches through services.quotes_ingest on an empty database: repeats, a late tick,
    an unknown instrument. What it returns and leaves in the tables, as plain JSON."""
    from portfolio.models import Instrument

    made = {
        symbol: Instrument.objects.create(
            symbol=symbol, name=symbol, asset_class="crypto", quote_currency="USD",
            feed="simulated", feed_symbol=symbol,
        ).id
        for symbol in ("BTC-USD", "ETH-USD")
    }  # fmt: skip
    btc, eth = made["BTC-USD"], made["ETH-USD"]

    def update(instrument, price, seconds, bid=None):
        return services.QuoteUpdate(
            instrument_id=instrument,
            price=Decimal(price),
            bid=None if bid is None else Decimal(bid),
            ask=None if bid is None else Decimal(price),
            exchange_ts=T0 + timedelta(seconds=seconds),
            source="simulated",
        )

    batches = [
        [update(btc, "101", 1), update(btc, "100", 0, bid="99.5"), update(eth, "3000", 0),
         update(btc + eth + 100, "5", 0)],  # an instrument that does not exist
        [update(btc, "90", 0), update(eth, "3001", 61)],  # btc's is older than the stored one
        [update(eth, "3001", 61)],  # the same tick again
    ]  # fmt: skip

    def text(value):
        return value.isoformat() if isinstance(value, datetime) else str(value)

    names = {btc: "btc", eth: "eth"}
    return {
        "returned": [
            [[names[row[0]], *map(text, row[1:])] for row in services.quotes_ingest(updates=b)]
            for b in batches
        ],
        "quotes": [
            [names[q.instrument_id], *map(text, (q.price, q.bid, q.ask, q.exchange_ts))]
            for q in Quote.objects.order_by("instrument_id")
        ],
        "bars": [
            [names[b.instrument_id], *map(text, (b.start, b.open, b.high, b.low, b.close))]
            for b in PriceBar.objects.order_by("instrument_id", "start")
        ],
    }


SCENARIO_ON_SQLITE = """
import json, django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from tests.test_ingest import ingest_scenario
print(json.dumps(ingest_scenario()))
"""


@pytest.mark.django_db
def test_one_statement_on_postgresql_stores_and_returns_what_the_steps_do_on_sqlite(tmp_path):
    on_postgresql = ingest_scenario()
    T = "2026-11-27T12:00:00+00:00"
    assert on_postgresql["returned"] == [
        [
            ["btc", "BTC-USD", "101.0000000000", "None", "None", "2026-11-27T12:00:01+00:00"],
            ["eth", "ETH-USD", "3000.0000000000", "None", "None", T],
        ],
        [["eth", "ETH-USD", "3001.0000000000", "None", "None", "2026-11-27T12:01:01+00:00"]],
        [],
    ]
    assert on_postgresql["bars"] == [
        ["btc", T, "100.0000000000", "101.0000000000", "100.0000000000", "101.0000000000"],
        ["eth", T, "3000.0000000000", "3000.0000000000", "3000.0000000000", "3000.0000000000"],
        ["eth", "2026-11-27T12:01:00+00:00", *["3001.0000000000"] * 4],
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="portfolio.settings",
        LIVEFOLIO_SQLITE_PATH=str(tmp_path / "ingest.sqlite3"),
    )
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO_ON_SQLITE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    on_sqlite = json.loads(done.stdout.strip().splitlines()[-1])
    assert normalised(on_sqlite) == normalised(on_postgresql)


def normalised(tables: dict) -> dict:
    """Decimal strings as numbers, so "101" on SQLite equals "101.0000000000" on PostgreSQL."""

    def one(value):
        if isinstance(value, list):
            return [one(v) for v in value]
        try:
            return Decimal(value)
        except ArithmeticError:
            return value

    return {name: one(rows) for name, rows in tables.items()}


def deliveries(users, action):
    """What each user's group receives while ``action`` runs, all on one event loop (the pub/sub
    layer subscribes per event loop, as in a daphne process)."""

    async def receive_all(layer, channel):
        messages = []
        while True:
            try:
                messages.append(await asyncio.wait_for(layer.receive(channel), timeout=0.5))
            except TimeoutError:
                return messages

    async def run():
        layer = get_channel_layer()
        channels = {}
        for name, user in users.items():
            channels[name] = await layer.new_channel()
            await layer.group_add(events.user_group(user.id), channels[name])
        await sync_to_async(action)()
        return {name: await receive_all(layer, channel) for name, channel in channels.items()}

    return async_to_sync(run)()


def test_valuations_reach_each_holders_group_with_their_own_numbers(
    world, redis_client, django_capture_on_commit_callbacks
):
    def ingest_and_commit():
        with django_capture_on_commit_callbacks(execute=True):
            ingest_quotes([tick(world["btc"], "50000.10", T0)])

    got = deliveries(world["users"], ingest_and_commit)
    assert got["bob"] == []  # holds no BTC: hears nothing
    alice = as_sent(got["alice"][0])
    charlie = as_sent(got["charlie"][0])
    assert alice["type"] == "valuation" == charlie["type"]
    assert alice["portfolio"]["id"] == world["portfolios"]["alice"].id
    assert alice["portfolio"]["total"] == "100000.20"  # 2 x 50000.10
    assert charlie["portfolio"]["id"] == world["portfolios"]["charlie"].id
    assert charlie["portfolio"]["total"] == "150000.30"  # 3 x 50000.10
    assert len(got["alice"]) == len(got["charlie"]) == 1


def test_a_pass_publishes_its_valuations_in_chunks_as_it_computes_them(
    world, redis_client, django_capture_on_commit_callbacks, monkeypatch
):
    """The batch's quotes go with the first chunk; each further chunk is sent as soon as it is
    valued, not after the whole pass (streaming/tasks.py CHUNK)."""
    from streaming import tasks

    monkeypatch.setattr(tasks, "CHUNK", 1)
    sends = []
    publish = events.publish

    def recording(messages):
        sends.append([payload["type"] for _, payload in messages])
        publish(messages)

    monkeypatch.setattr(events, "publish", recording)

    def ingest_and_commit():
        with django_capture_on_commit_callbacks(execute=True):
            ingest_quotes([tick(world["btc"], "50000.10", T0)])

    got = deliveries(world["users"], ingest_and_commit)
    assert sends == [["quote", "valuation"], ["valuation"]]  # alice's, then charlie's
    assert [as_sent(m)["portfolio"]["total"] for m in got["alice"] + got["charlie"]] == [
        "100000.20",
        "150000.30",
    ]


def test_nothing_is_published_when_the_transaction_rolls_back(world, redis_client):
    # Without the on-commit capture the test transaction never commits: nothing may be sent.
    alice = {"alice": world["users"]["alice"]}
    got = deliveries(alice, lambda: ingest_quotes([tick(world["btc"], "50000", T0)]))
    assert got == {"alice": []}


def test_ticks_fold_into_one_minute_bars_whatever_order_and_repeats(world):
    from portfolio.models import PriceBar

    btc = world["btc"]
    t = T0.replace(second=5)
    ingest_quotes([tick(btc, "100", t), tick(btc, "104", t + timedelta(seconds=10))])
    ingest_quotes([tick(btc, "97", t + timedelta(seconds=20))])
    ingest_quotes([tick(btc, "101", t + timedelta(seconds=30))])
    ingest_quotes([tick(btc, "101", t + timedelta(seconds=30))])  # the same tick again
    ingest_quotes([tick(btc, "110", t + timedelta(seconds=62))])  # next minute
    bars = list(PriceBar.objects.filter(instrument=btc).order_by("start"))
    assert [(b.start, b.open, b.high, b.low, b.close) for b in bars] == [
        (T0, Decimal("100"), Decimal("104"), Decimal("97"), Decimal("101")),
        (T0 + timedelta(minutes=1), Decimal("110"), Decimal("110"), Decimal("110"), Decimal("110")),
    ]


def test_a_late_tick_older_than_the_stored_quote_moves_no_bar(world):
    from portfolio.models import PriceBar

    btc = world["btc"]
    ingest_quotes([tick(btc, "100", T0 + timedelta(seconds=30))])
    ingest_quotes([tick(btc, "50", T0 + timedelta(seconds=10))])  # older than the stored quote
    bar = PriceBar.objects.get(instrument=btc)
    assert (bar.open, bar.low, bar.close) == (Decimal("100"), Decimal("100"), Decimal("100"))
