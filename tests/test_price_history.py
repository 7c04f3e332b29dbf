"""Daily price history: CSV import (admin and command, all or nothing), the bars' roll-up, the
close on any day with gaps carried forward, FX rates on a date."""

import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from portfolio import day_values, price_history, services
from portfolio.importers import prices_csv
from portfolio.models import AssetClass, DailyPrice, FeedKind, Instrument, PriceSource

FRI, SAT, SUN, MON = date(2026, 3, 6), date(2026, 3, 7), date(2026, 3, 8), date(2026, 3, 9)


def stored(instrument):
    return list(
        DailyPrice.objects.filter(instrument=instrument)
        .order_by("day")
        .values_list("day", "open", "high", "low", "close", "volume", "source")
    )


def import_text(instrument, text):
    return prices_csv.import_prices(instrument=instrument, text=io.StringIO(text))


def fx_instrument(symbol="EURUSD", quote_currency="USD"):
    return Instrument.objects.create(
        symbol=symbol,
        name=symbol,
        asset_class=AssetClass.FX,
        quote_currency=quote_currency,
        feed=FeedKind.SIMULATED,
        feed_symbol=symbol,
    )


def test_a_weekend_carries_fridays_close_and_says_so():
    series = [(date(2026, 3, 5), Decimal("10")), (FRI, Decimal("11")), (MON, Decimal("12"))]
    friday = day_values.close_on(series, FRI)
    assert (friday.close, friday.priced_on, friday.carried) == (Decimal("11"), FRI, False)
    sunday = day_values.close_on(series, SUN)
    assert (sunday.close, sunday.priced_on, sunday.carried) == (Decimal("11"), FRI, True)
    assert day_values.close_on(series, date(2026, 3, 4)) is None  # before the first day
    days = day_values.closes_between(series, date(2026, 3, 4), MON)
    assert [(c.day, c.close, c.carried) for c in days] == [
        (date(2026, 3, 5), Decimal("10"), False),
        (FRI, Decimal("11"), False),
        (SAT, Decimal("11"), True),
        (SUN, Decimal("11"), True),
        (MON, Decimal("12"), False),
    ]


def test_a_price_file_is_stored_exactly_and_a_second_import_replaces_its_days(world):
    btc = world["btc"]
    result = import_text(
        btc,
        "date,close,open,high,low,volume\n"
        "2026-03-06,68000.12345678,67000,69000.5,66000,1234.5\n"
        "2026-03-09,70000,,,,\n",
    )
    assert result.ok and (result.created, result.replaced) == (2, 0)
    assert stored(btc) == [
        (
            FRI,
            Decimal("67000"),
            Decimal("69000.5"),
            Decimal("66000"),
            Decimal("68000.12345678"),
            Decimal("1234.5"),
            "csv",
        ),
        (MON, None, None, None, Decimal("70000"), None, "csv"),
    ]
    # Columns in any order, close only; Monday is replaced, Tuesday added.
    result = import_text(btc, "close,date\n71000,2026-03-09\n72000,2026-03-10\n")
    assert result.ok and (result.created, result.replaced) == (1, 1)
    assert [(d, c) for d, *_, c, _, _ in stored(btc)] == [
        (FRI, Decimal("68000.12345678")),
        (MON, Decimal("71000")),
        (date(2026, 3, 10), Decimal("72000")),
    ]


def test_every_bad_price_row_is_named_and_nothing_is_stored(world):
    btc = world["btc"]
    assert import_text(btc, "date,close\n2026-03-01,100\n").ok
    before = stored(btc)
    result = import_text(
        btc,
        "date,close,open,high,low,volume\n"
        "2026-03-02,101,100,102,99,10\n"
        "03/03/2026,101,,,,\n"
        "2026-03-04,,,,,\n"
        "2026-03-05,-5,,,,\n"
        "2026-03-06,abc,,,,\n"
        "2026-03-07,100,,99,,\n"
        "2026-03-08,100,99,,100.5,\n"
        "2026-03-09,1.00000000001,,,,\n"
        "2026-03-10,100,,,,-1\n"
        "2026-03-02,100,,,,\n",
    )
    assert [str(e) for e in result.errors] == [
        "line 3: date: '03/03/2026' is not an ISO-8601 date (e.g. 2026-03-01)",
        "line 4: close: is empty",
        "line 5: close: must be positive, got -5",
        "line 6: close: 'abc' is not a number",
        "line 7: high: 99 is below close 100",
        "line 8: low: 100.5 is above open 99; low: 100.5 is above close 100",
        "line 9: close: 1.00000000001 has more than 10 decimal places",
        "line 10: volume: must not be negative, got -1",
        "line 11: date: 2026-03-02 is already on line 2",
    ]
    assert result.rows == 10
    assert stored(btc) == before  # not even the good row on line 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "line 1: the file is empty"),
        ("date,close\n", "line 1: the file has a header and no prices"),
        ("date,price\n2026-03-01,1\n", "line 1: unknown column 'price': the columns are "
         "date, close, open, high, low, volume"),
        ("close,open\n1,1\n", "line 1: missing the 'date' column"),
    ],
)  # fmt: skip
def test_a_file_without_the_right_header_is_refused_by_name(world, text, message):
    result = import_text(world["btc"], text)
    assert message in [str(e) for e in result.errors]
    assert not DailyPrice.objects.exists()


def test_importprices_command_imports_or_fails_naming_the_rows(world, tmp_path, capsys):
    good = tmp_path / "btc.csv"
    good.write_text("date,close\n2026-03-06,68000\n2026-03-09,70000\n", encoding="utf-8")
    call_command("importprices", "btc-usd", str(good))
    assert "Imported 2 days of BTC-USD (2 new, 0 replaced)." in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text("date,close\n2026-03-10,71000\n2026-03-11,zero\n", encoding="utf-8")
    with pytest.raises(CommandError, match="nothing imported: 1 bad rows out of 2"):
        call_command("importprices", "BTC-USD", str(bad))
    assert "line 3: close: 'zero' is not a number" in capsys.readouterr().err
    assert [row[0] for row in stored(world["btc"])] == [FRI, MON]
    with pytest.raises(CommandError, match="no instrument with the symbol 'NOPE'"):
        call_command("importprices", "NOPE", str(good))


def test_an_operator_imports_prices_in_the_admin(world, admin_client):
    btc = world["btc"]
    url = reverse("admin:portfolio_instrument_import_prices", args=[btc.id])
    change = admin_client.get(reverse("admin:portfolio_instrument_change", args=[btc.id]))
    assert url in change.content.decode()  # the instrument page links to the import
    bad = SimpleUploadedFile("p.csv", b"date,close\n2026-03-06,68000\n2026-03-07,-1\n")
    page = admin_client.post(url, {"file": bad})
    assert page.status_code == 200
    body = page.content.decode()
    assert "Nothing imported: 1 bad rows." in body
    assert "line 3: close: must be positive, got -1" in body
    assert not DailyPrice.objects.filter(instrument=btc).exists()
    good = SimpleUploadedFile("p.csv", b"\xef\xbb\xbfdate,close\r\n2026-03-06,68000\r\n")
    response = admin_client.post(url, {"file": good}, follow=True)
    assert "Imported 1 days of BTC-USD (1 new, 0 replaced)." in response.content.decode()
    assert stored(btc) == [(FRI, None, None, None, Decimal("68000"), None, "csv")]
    listing = admin_client.get(reverse("admin:portfolio_dailyprice_changelist"))
    assert listing.status_code == 200 and "68000" in listing.content.decode()


def test_one_minute_bars_roll_up_into_days_without_overwriting_an_import(world):
    btc = world["btc"]
    day1 = datetime(2026, 3, 5, 23, 58, 30, tzinfo=UTC)
    ticks = [
        (day1, "100"),
        (day1 + timedelta(seconds=20), "104"),
        (day1 + timedelta(seconds=50), "98"),
        (day1 + timedelta(minutes=1), "101"),  # 23:59:30, the day's last
        (day1 + timedelta(minutes=2), "200"),  # 00:00:30 on 6 March
        (day1 + timedelta(minutes=3), "210"),
    ]
    services.bars_record(
        updates=[
            services.QuoteUpdate(
                instrument_id=btc.id, price=Decimal(p), exchange_ts=at, source="simulated"
            )
            for at, p in ticks
        ]
    )
    assert price_history.daily_prices_from_bars(since=date(2026, 3, 5), until=FRI) == 2
    assert stored(btc) == [
        (date(2026, 3, 5), Decimal("100"), Decimal("104"), Decimal("98"), Decimal("101"), None,
         "bars"),
        (FRI, Decimal("200"), Decimal("210"), Decimal("200"), Decimal("210"), None, "bars"),
    ]  # fmt: skip
    # An operator's import wins over the roll-up, run again later.
    assert import_text(btc, "date,close\n2026-03-06,205\n").ok
    assert price_history.daily_prices_from_bars(since=date(2026, 3, 5), until=FRI) == 1
    assert stored(btc)[1][4:] == (Decimal("205"), None, PriceSource.CSV)
    assert stored(btc)[0][6] == PriceSource.BARS


def test_fx_rates_on_a_date_come_from_history_carried_inverted_or_the_latest_quote(world):
    eurusd = fx_instrument("EURUSD", "USD")
    usdjpy = fx_instrument("USD-JPY", "JPY")
    assert import_text(eurusd, "date,close\n2026-03-06,1.08\n2026-03-09,1.10\n").ok
    services.quotes_store(
        updates=[
            services.QuoteUpdate(
                instrument_id=usdjpy.id,
                price=Decimal("150"),
                exchange_ts=datetime(2026, 3, 9, tzinfo=UTC),
                source="simulated",
            )
        ]
    )
    fx = price_history.FxHistory(base_currency="EUR", currencies=["USD", "JPY", "GBP"])
    sunday = fx.rate_on("USD", SUN)  # 1 USD in EUR on Sunday: Friday's 1 / 1.08
    assert (sunday.rate, sunday.how, sunday.priced_on) == (1 / Decimal("1.08"), "carried", FRI)
    assert fx.rate_on("USD", MON).how == "history"
    assert fx.rate_on("USD", date(2026, 3, 1)) is None  # before history, and EURUSD has no quote
    assert fx.rate_on("GBP", MON) is None  # no instrument converts it
    assert fx.rate_on("EUR", MON).rate == 1
    in_usd = price_history.FxHistory(base_currency="USD", currencies=["JPY", "EUR"])
    yen = in_usd.rate_on("JPY", MON)  # no JPY history: today's quote stands in, visibly
    assert (yen.rate, yen.how, yen.from_history) == (1 / Decimal("150"), "latest quote", False)
    assert in_usd.rate_on("EUR", MON).rate == Decimal("1.10")


def test_the_hourly_beat_task_rolls_up_todays_bars(world):
    from django.conf import settings
    from django.utils import timezone

    from portfolio import tasks

    now = timezone.now()
    services.bars_record(
        updates=[
            services.QuoteUpdate(
                instrument_id=world["eth"].id,
                price=Decimal("2500"),
                exchange_ts=now,
                source="simulated",
            )
        ]
    )
    assert settings.CELERY_BEAT_SCHEDULE["daily-prices-from-bars"]["task"] == (
        "portfolio.tasks.roll_up_daily_prices"
    )
    assert tasks.roll_up_daily_prices() == 1
    assert stored(world["eth"]) == [
        (now.date(), Decimal("2500"), Decimal("2500"), Decimal("2500"), Decimal("2500"), None,
         "bars")
    ]  # fmt: skip
