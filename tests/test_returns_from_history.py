"""Returns over any range of days from the ledger and the price history: TWR of daily
sub-periods, XIRR as spreadsheets compute it."""

from __future__ import annotations

import io
import itertools
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from hypothesis import given, settings
from hypothesis import strategies as st

from portfolio import day_values, performance, services
from portfolio.importers import prices_csv
from portfolio.ledger import TxKind
from portfolio.models import AssetClass, FeedKind, Instrument
from portfolio.selectors import past_values

D = Decimal


def make_portfolio(name="Returns"):
    owner = get_user_model().objects.create(username=f"owner-{name}")
    portfolio = services.portfolio_create(owner=owner, name=name, base_currency="USD")
    acme = Instrument.objects.create(
        symbol="ACME",
        name="Acme",
        asset_class=AssetClass.EQUITY,
        quote_currency="USD",
        feed=FeedKind.SIMULATED,
        feed_symbol="ACME",
    )
    return portfolio, acme


def record(portfolio, day, kind, **fields):
    services.transaction_add(
        portfolio=portfolio,
        kind=kind,
        executed_at=datetime(day.year, day.month, day.day, 15, tzinfo=UTC),
        **fields,
    )


def test_xirr_from_the_ledger_equals_excels_documented_example(db):
    """Microsoft Support, "XIRR function" (Excel), example: -10,000 on 1-Jan-08, 2,750 on
    1-Mar-08, 4,250 on 30-Oct-08, 3,250 on 15-Feb-09, 2,750 on 1-Apr-09: 0.373362535
    (https://support.microsoft.com/en-us/office/xirr-function-de1242ec-6477-445b-b11b-a303ad9adc9d).
    Here as a ledger: 10,000 deposited and invested in 100 ACME at 100; on each of the next
    dates 25 shares are sold at that day's close and the proceeds withdrawn; on 1 April 2009
    the last 25 are worth 25 x 110 = 2,750. ACME's history has only those five days."""
    portfolio, acme = make_portfolio()
    history = (
        "date,close\n2008-01-01,100\n2008-03-01,110\n2008-10-30,170\n2009-02-15,130\n"
        "2009-04-01,110\n"
    )
    assert prices_csv.import_prices(instrument=acme, text=io.StringIO(history)).ok
    record(portfolio, date(2008, 1, 1), TxKind.DEPOSIT, amount=D(10000))
    record(portfolio, date(2008, 1, 1), TxKind.BUY, instrument=acme, quantity=D(100), price=D(100))
    for day, price in (
        (date(2008, 3, 1), 110),
        (date(2008, 10, 30), 170),
        (date(2009, 2, 15), 130),
    ):
        record(portfolio, day, TxKind.SELL, instrument=acme, quantity=D(25), price=D(price))
        record(portfolio, day, TxKind.WITHDRAWAL, amount=D(25 * price))
    returns, values = past_values.portfolio_returns(
        portfolio=portfolio, start=date(2007, 12, 31), end=date(2009, 4, 1)
    )
    assert values[0].value == 0 and values[-1].value == D(2750)
    assert returns.irr_annualized
    # Excel stops within 0.000001 %; the exact root is 0.3733625335... (tests/test_performance.py).
    assert abs(returns.irr_rate - D("0.373362535")) < D("1e-8")
    assert [(f.at.date(), f.amount) for f in returns.irr.flows] == [
        (date(2007, 12, 31), D(0)),
        (date(2008, 1, 1), D(-10000)),
        (date(2008, 3, 1), D(2750)),
        (date(2008, 10, 30), D(4250)),
        (date(2009, 2, 15), D(3250)),
        (date(2009, 4, 1), D(2750)),
    ]
    # Only the ends and each flow's eve are valued (between flows the daily returns chain to
    # the same number); an eve without a close of its own is valued at the last one, and says so.
    assert [(v.day, v.value, v.carried) for v in values] == [
        (date(2007, 12, 31), D(0), ()),
        (date(2008, 2, 29), D(10000), ("ACME",)),  # 100 x the close of 1 January
        (date(2008, 10, 29), D(8250), ("ACME",)),  # 75 x the close of 1 March
        (date(2009, 2, 14), D(8500), ("ACME",)),  # 50 x the close of 30 October
        (date(2009, 4, 1), D(2750), ()),
    ]


def test_twr_chains_daily_sub_periods_with_flows_at_the_start_of_their_day(db):
    """1,000 deposited and invested on day 1 at 100; ACME closes at 110 on day 3 (+10 %); on
    day 4 another 1,100 is deposited and invested at 110; day 6 closes at 121 (+10 %). The
    deposits do not count as performance: TWR = 1.10 x 1.10 - 1 = 21 %."""
    portfolio, acme = make_portfolio("twr")
    d1 = date(2026, 3, 2)
    history = f"date,close\n{d1},100\n{d1 + timedelta(2)},110\n{d1 + timedelta(5)},121\n"
    assert prices_csv.import_prices(instrument=acme, text=io.StringIO(history)).ok
    record(portfolio, d1, TxKind.DEPOSIT, amount=D(1000))
    record(portfolio, d1, TxKind.BUY, instrument=acme, quantity=D(10), price=D(100))
    d4 = d1 + timedelta(3)
    record(portfolio, d4, TxKind.DEPOSIT, amount=D(1100))
    record(portfolio, d4, TxKind.BUY, instrument=acme, quantity=D(10), price=D(110))
    returns, values = past_values.portfolio_returns(
        portfolio=portfolio, start=d1 - timedelta(1), end=d1 + timedelta(5)
    )
    # The range's ends and the eve of each deposit: the day before the first (nothing held),
    # the 4th (10 x 110) and the 7th (20 x 121).
    assert [(v.day, v.value) for v in values] == [
        (d1 - timedelta(1), 0),
        (d4 - timedelta(1), 1100),
        (d1 + timedelta(5), 2420),
    ]
    assert returns.twr.cumulative == D("0.21")
    assert [(sp.start_value, sp.flow, sp.end_value) for sp in returns.twr.sub_periods] == [
        (D(0), D(1000), D(1100)),
        (D(1100), D(1100), D(2420)),
    ]
    assert not returns.irr_annualized  # six days: the rate for the range, not a year's


def test_returns_need_a_ledger(db):
    portfolio, _ = make_portfolio("empty")
    with pytest.raises(performance.PerformanceError, match="no transactions"):
        past_values.portfolio_returns(
            portfolio=portfolio, start=date(2026, 1, 1), end=date(2026, 2, 1)
        )


# --- Properties of the pure math ---------------------------------------------------------

START = date(2025, 1, 1)


@st.composite
def histories(draw):
    """Daily values and flows where money in at the start of a day never goes below zero."""
    n = draw(st.integers(3, 30))
    values, flows = [], []
    previous = D(draw(st.integers(100, 10_000)))
    values.append(day_values.DayValue(START, previous, previous, D(0)))
    for i in range(1, n):
        day = START + timedelta(days=i)
        flow = D(draw(st.integers(-int(previous) // 2, 5_000))) if draw(st.booleans()) else None
        invested = previous + (flow or 0)
        growth = D(draw(st.integers(80, 125))) / 100
        value = (invested * growth).quantize(D("0.01"))
        if flow is not None:
            flows.append((day, flow))
        values.append(day_values.DayValue(day, value, value, D(0)))
        previous = value
    return values, flows


@settings(max_examples=100, deadline=None)
@given(history=histories())
def test_without_flows_twr_is_the_value_return(history):
    values, _ = history
    end = values[-1].day
    returns = day_values.range_returns(values, [], start=START, end=end)
    expected = values[-1].value / values[0].value - 1
    assert abs(returns.twr.cumulative - expected) < D("1e-25")  # 40 digits against 28


@settings(max_examples=100, deadline=None)
@given(history=histories(), cut=st.integers(1, 28))
def test_twr_over_a_to_c_chains_a_to_b_and_b_to_c(history, cut):
    values, flows = history
    end = values[-1].day
    middle = START + timedelta(days=min(cut, len(values) - 2))
    whole = day_values.range_returns(values, flows, start=START, end=end).twr.cumulative
    first = day_values.range_returns(values, flows, start=START, end=middle).twr.cumulative
    second = day_values.range_returns(values, flows, start=middle, end=end).twr.cumulative
    assert abs((1 + first) * (1 + second) - 1 - whole) < D("1e-25")


@settings(max_examples=100, deadline=None)
@given(history=histories(), cut=st.integers(0, 28))
def test_the_days_a_range_reads_give_the_same_returns_as_every_day(history, cut):
    """Only the ends and each flow's eve are valued for a range: with just those values the
    TWR, its working and the IRR are exactly those computed from every day's value."""
    values, flows = history
    start = START + timedelta(days=min(cut, len(values) - 2))
    end = values[-1].day
    every_day = day_values.range_returns(values, flows, start=start, end=end)
    read = set(day_values.range_days(flows, start=start, end=end))
    only = day_values.range_returns(
        [v for v in values if v.day in read], flows, start=start, end=end
    )
    assert only == every_day


def test_a_chart_of_ten_years_has_at_most_500_evenly_spaced_points_ending_today():
    today = date(2026, 12, 7)
    first = today - timedelta(days=3650)
    days = day_values.chart_days(first, today)
    assert len(days) <= day_values.CHART_POINTS == 500
    assert days[0] == first and days[-1] == today
    assert {(b - a).days for a, b in itertools.pairwise(days[1:])} == {8}
    # A year fits: every day.
    assert day_values.chart_days(today - timedelta(days=365), today) == [
        today - timedelta(days=365 - n) for n in range(366)
    ]


# --- On the performance page -------------------------------------------------------------


def twr_ledger(name="page"):
    portfolio, acme = make_portfolio(name)
    d1 = date(2026, 3, 2)
    history = f"date,close\n{d1},100\n{d1 + timedelta(2)},110\n{d1 + timedelta(5)},121\n"
    assert prices_csv.import_prices(instrument=acme, text=io.StringIO(history)).ok
    record(portfolio, d1, TxKind.DEPOSIT, amount=D(1000))
    record(portfolio, d1, TxKind.BUY, instrument=acme, quantity=D(10), price=D(100))
    d4 = d1 + timedelta(3)
    record(portfolio, d4, TxKind.DEPOSIT, amount=D(1100))
    record(portfolio, d4, TxKind.BUY, instrument=acme, quantity=D(10), price=D(110))
    return portfolio


def test_the_performance_page_shows_returns_over_a_chosen_range_with_the_working(db, client):
    from django.urls import reverse

    portfolio = twr_ledger()
    client.force_login(portfolio.owner)
    url = reverse("performance", args=[portfolio.id])
    page = client.get(url, {"from": "2026-03-01", "to": "2026-03-07"}).content.decode()
    section = page[page.index('id="from-history"') :]
    assert '<td class="num twr">21.00%</td>' in section
    assert '<td class="muted irr-basis">for the period</td>' in section
    assert section.count('class="history-sub-period"') == 2
    # The IRR's working: nothing at the start, the two deposits paid in, 20 x 121 received.
    flows = re.findall(
        r'<tr class="history-irr-flow"><td>([^<]*)</td><td class="num">([^<]*)</td>', section
    )
    assert flows == [
        ("2026-03-01", "0.00"),
        ("2026-03-02", "-1,000.00"),
        ("2026-03-05", "-1,100.00"),
        ("2026-03-07", "2,420.00"),
    ]
    # The ends (1 and 7 March) and the eve of the second deposit (the 4th): each has its own
    # close (the 1st holds nothing).
    assert "3 days valued (the range's ends and the eve of each deposit or withdrawal:" in section
    assert "0 with a close carried from an earlier day." in section
    # By default: from the day before the first transaction to today, whatever today is.
    default = client.get(url).content.decode()
    assert 'name="from" value="2026-03-01"' in default
    bad = client.get(url, {"from": "1 March"}).content.decode()
    assert "from: &#x27;1 March&#x27; is not a date like 2026-03-01" in bad


def test_another_users_performance_page_is_a_404(db, client):
    from django.urls import reverse

    portfolio = twr_ledger("private")
    outsider = get_user_model().objects.create(username="outsider")
    client.force_login(outsider)
    assert client.get(reverse("performance", args=[portfolio.id])).status_code == 404


def test_a_day_before_an_instruments_first_close_leaves_it_out_and_says_so():
    from portfolio import ledger

    at = datetime(2025, 1, 1, 12, tzinfo=UTC)
    entries = [
        ledger.LedgerEntry(ref=1, kind="DEPOSIT", executed_at=at, currency="EUR", amount=D(50)),
        ledger.LedgerEntry(
            ref=2, kind="BUY", executed_at=at + timedelta(days=1), currency="USD",
            instrument="X", quantity=D(2), price=D(10),
        ),
    ]  # fmt: skip
    states = ledger.daily_states(entries, first=START, last=START + timedelta(days=3))
    rates = {"EUR": D(1), "USD": D("0.5")}
    values = day_values.daily_values(
        states,
        closes={"X": [(START + timedelta(days=2), D(12))]},
        fx=lambda currency, day: rates.get(currency),
    )
    assert [(v.value, v.carried, v.missing) for v in values] == [
        (D(50), (), ()),
        (D(40), (), ("X: no close",)),  # 50 EUR - 20 USD at 0.5; X has no close yet
        (D(52), (), ()),  # + 2 x 12 USD at 0.5
        (D(52), ("X",), ()),  # the 3rd's close carried
    ]
