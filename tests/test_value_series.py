"""The value chart's long ranges come from the ledger, the price history and the FX history,
day by day back to the first transaction; 1D stays on the minute snapshots."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from portfolio import services
from portfolio.ledger import TxKind
from portfolio.models import AssetClass, DailyPrice, FeedKind, Instrument

D = Decimal
pytestmark = pytest.mark.django_db


def acme_close(first: date, day: date) -> Decimal:
    """ACME's close: 100 on the first day, 0.10 more every calendar day after it."""
    return D(100) + D((day - first).days) / 10


def eur_usd(first: date, day: date) -> Decimal:
    """1.10 USD a euro until 900 days after the first day, 1.20 from then."""
    return D("1.10") if (day - first).days < 900 else D("1.20")


def at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


@pytest.fixture
def three_years():
    """Dora's USD portfolio, first traded three years (and a bit) ago:

    - first day F: deposit 10,000 USD, buy 50 ACME at 100 (cash 5,000 USD);
    - F + 400: sell 20 ACME at that day's close, fee 10;
    - F + 800: deposit 1,000 EUR (kept as euro cash).

    ACME has a close on weekdays only (weekends carry Friday's close); EUR-USD on every day.
    """
    today = timezone.now().astimezone(UTC).date()
    first = today - timedelta(days=3 * 365 + 20)
    dora = get_user_model().objects.create(username="dora")
    portfolio = services.portfolio_create(owner=dora, name="Three years", base_currency="USD")
    acme = Instrument.objects.create(
        symbol="ACME",
        name="Acme",
        asset_class=AssetClass.EQUITY,
        quote_currency="USD",
        feed=FeedKind.SIMULATED,
        feed_symbol="ACME",
    )
    eurusd = Instrument.objects.create(
        symbol="EURUSD",
        name="Euro in dollars",
        asset_class=AssetClass.FX,
        quote_currency="USD",
        feed=FeedKind.SIMULATED,
        feed_symbol="EURUSD",
    )
    rows = []
    day = first - timedelta(days=30)  # history from before the first trade
    while day <= today:
        if day.weekday() < 5:
            rows.append(DailyPrice(instrument=acme, day=day, close=acme_close(first, day)))
        rows.append(DailyPrice(instrument=eurusd, day=day, close=eur_usd(first, day)))
        day += timedelta(days=1)
    for row in rows:
        row.source = "csv"
    DailyPrice.objects.bulk_create(rows)
    services.transaction_add(
        portfolio=portfolio, kind=TxKind.DEPOSIT, amount=D(10000), executed_at=at(first, 10)
    )
    services.transaction_add(
        portfolio=portfolio,
        kind=TxKind.BUY,
        instrument=acme,
        quantity=D(50),
        price=D(100),
        executed_at=at(first, 11),
    )
    sold_on = first + timedelta(days=400)
    while sold_on.weekday() >= 5:  # a trading day, so its close is its own
        sold_on += timedelta(days=1)
    services.transaction_add(
        portfolio=portfolio,
        kind=TxKind.SELL,
        instrument=acme,
        quantity=D(20),
        price=acme_close(first, sold_on),
        fees=D(10),
        executed_at=at(sold_on, 12),
    )
    services.transaction_add(
        portfolio=portfolio,
        kind=TxKind.DEPOSIT,
        amount=D(1000),
        currency="EUR",
        executed_at=at(first + timedelta(days=800), 9),
    )
    return {"user": dora, "portfolio": portfolio, "first": first, "sold_on": sold_on}


def series(client, story, range_):
    client.force_login(story["user"])
    response = client.get(
        reverse("portfolio-history", args=[story["portfolio"].id]), {"range": range_}
    )
    assert response.status_code == 200
    return response.json()


def last_weekday(day: date) -> date:
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return day


def hand_value(story, day: date) -> Decimal:
    """Dora's value at the end of ``day``, by hand: a weekend is valued at Friday's close."""
    first, sold_on = story["first"], story["sold_on"]
    acme = acme_close(first, last_weekday(day))
    if day < sold_on:  # 5,000 cash and 50 shares
        return D(5000) + 50 * acme
    # The sale: cash 5,000 + 20 x that day's close - 10 fee, and 30 shares left.
    value = D(5000) + 20 * acme_close(first, sold_on) - 10 + 30 * acme
    if day >= first + timedelta(days=800):  # the euro deposit, at that day's EUR-USD
        value += 1000 * eur_usd(first, day)
    return value


def test_max_starts_at_the_first_transaction_with_the_hand_computed_daily_values(
    client, three_years
):
    first = three_years["first"]
    today = timezone.now().astimezone(UTC).date()
    body = series(client, three_years, "MAX")
    assert body["source"] == "ledger" and body["problem"] is None
    points = body["points"]
    days = [date.fromisoformat(p["day"]) for p in points]
    # From the first transaction's day to today, each stamped at 00:00 UTC; more than three
    # years of days are more than a chart's 500 points: every third day back from today.
    assert days[0] == first and points[0]["at"] == f"{first.isoformat()}T00:00:00.000Z"
    assert days[-1] == today
    assert len(points) <= 500
    assert {(b - a).days for a, b in itertools.pairwise(days[1:])} == {3}
    assert (days[1] - days[0]).days <= 3
    assert body["missing_days"] == 0
    # By hand, point by point: before and after the sale, after the euro deposit at 1.10 and
    # at 1.20 USD a euro.
    assert [D(p["value"]) for p in points] == [hand_value(three_years, d) for d in days]
    # A weekend day carries Friday's close and is counted as such.
    assert body["carried_days"] == sum(1 for d in days if d.weekday() >= 5) > 0


def test_shorter_ranges_are_every_day_from_their_first_day(client, three_years):
    today = timezone.now().astimezone(UTC).date()
    week = series(client, three_years, "1W")["points"]
    assert [p["day"] for p in week] == [
        (today - timedelta(days=7 - i)).isoformat() for i in range(8)
    ]
    year = series(client, three_years, "1Y")["points"]
    assert len(year) in (366, 367)  # a calendar year back, either length of year
    for points in (week, year):
        days = [date.fromisoformat(p["day"]) for p in points]
        assert [D(p["value"]) for p in points] == [hand_value(three_years, d) for d in days]


def test_one_day_stays_on_the_minute_snapshots(client, three_years):
    from portfolio.models import ValuationSnapshot

    ValuationSnapshot.objects.create(
        portfolio=three_years["portfolio"],
        taken_at=timezone.now() - timedelta(minutes=5),
        value=D("12345.67"),
    )
    body = series(client, three_years, "1D")
    assert body["source"] == "snapshots"
    assert [p["value"] for p in body["points"]] == ["12345.67"]


def test_a_range_without_transactions_has_no_points_and_says_where_they_come_from(client, world):
    client.force_login(world["users"]["alice"])
    empty = services.portfolio_create(owner=world["users"]["alice"], name="Empty")
    body = client.get(reverse("portfolio-history", args=[empty.id]), {"range": "MAX"}).json()
    assert body["points"] == [] and body["source"] == "ledger"


def test_a_new_transaction_or_a_changed_close_shows_at_once(client, three_years):
    """The daily values are kept between requests; what they depend on changing (the ledger,
    a close replaced by a later import, a close added) is seen by the next request."""
    from portfolio import price_history

    today = timezone.now().astimezone(UTC).date()
    before = {p["day"]: D(p["value"]) for p in series(client, three_years, "1W")["points"]}
    services.transaction_add(
        portfolio=three_years["portfolio"],
        kind=TxKind.DEPOSIT,
        amount=D(500),
        executed_at=at(today, 0),
    )
    after = {p["day"]: D(p["value"]) for p in series(client, three_years, "1W")["points"]}
    assert after[today.isoformat()] == before[today.isoformat()] + 500
    # An operator's import replaces the close of a past day (same number of rows).
    acme = Instrument.objects.get(symbol="ACME")
    friday = last_weekday(today - timedelta(days=3))
    old_close = DailyPrice.objects.get(instrument=acme, day=friday).close
    price_history.daily_prices_store(
        instrument_id=acme.id,
        days=[price_history.DayPrices(day=friday, close=old_close + 10)],
        source="csv",
    )
    changed = {p["day"]: D(p["value"]) for p in series(client, three_years, "1W")["points"]}
    assert changed[friday.isoformat()] == after[friday.isoformat()] + 30 * 10
    # The same through the returns: Max's end value is today's.
    from portfolio.selectors import past_values

    results = past_values.period_returns(portfolio=three_years["portfolio"])
    last_value = results[-1].returns.irr.flows[-1].amount
    assert last_value == changed[today.isoformat()]
