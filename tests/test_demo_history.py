"""The demo starts with a past: a year of daily closes behind its ledger, so the value chart and
the returns show a year from the first second."""

from __future__ import annotations

from datetime import UTC, date, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from portfolio import demo
from portfolio.ledger import TxKind
from portfolio.models import DailyPrice, Instrument, Transaction
from portfolio.selectors import past_values

pytestmark = pytest.mark.django_db


@pytest.fixture
def seeded(client):
    portfolio = demo.demo_seed()
    client.force_login(portfolio.owner)
    return portfolio


def test_after_seeding_max_spans_more_than_a_year_of_daily_values(client, seeded):
    body = client.get(reverse("portfolio-history", args=[seeded.id]), {"range": "MAX"}).json()
    assert body["source"] == "ledger" and body["problem"] is None
    days = [date.fromisoformat(p["day"]) for p in body["points"]]
    assert (days[-1] - days[0]).days >= 360
    assert days[-1] == timezone.now().astimezone(UTC).date()
    first_trade = Transaction.objects.filter(portfolio=seeded).order_by("executed_at").first()
    assert days[0] == first_trade.executed_at.astimezone(UTC).date()
    # Every holding has a close on every day it is held: nothing is left out of any day.
    assert body["missing_days"] == 0
    assert len({p["value"] for p in body["points"]}) > 300  # it moves


def test_after_seeding_every_return_period_has_numbers(client, seeded):
    results = past_values.period_returns(portfolio=seeded)
    assert [r.period for r in results] == ["1D", "1W", "1M", "YTD", "1Y", "MAX"]
    for r in results:
        assert r.problem is None and r.returns is not None, (r.period, r.problem)
        assert r.returns.irr_rate is not None, r.period
    assert results[-1].returns.irr_annualized  # Max is over a year
    page = client.get(reverse("performance", args=[seeded.id])).content.decode()
    assert 'id="history-returns"' in page
    live = client.get(reverse("portfolio", args=[seeded.id])).content.decode()
    max_cell = live[live.index('data-period="MAX"') :]
    max_cell = max_cell[: max_cell.index("</div>")]
    assert 'class="twr">—' not in max_cell and "%" in max_cell


def test_the_demo_closes_pass_through_its_trades_and_end_at_todays_price(seeded):
    """The NVIDIA buy (48.20), the NVIDIA sale (118.40) and today's price (140) are closes of
    the days they happened on; EUR-USD ends at 1.08."""
    nvda = Instrument.objects.get(symbol="NVDA")
    closes = dict(DailyPrice.objects.filter(instrument=nvda).values_list("day", "close"))
    for tx in Transaction.objects.filter(instrument=nvda):
        assert closes[tx.executed_at.astimezone(UTC).date()] == tx.price
    assert {tx.kind for tx in Transaction.objects.filter(instrument=nvda)} == {
        TxKind.BUY,
        TxKind.SELL,
    }
    today = timezone.now().astimezone(UTC).date()
    assert closes[today] == Decimal("140")
    eurusd = DailyPrice.objects.get(instrument__symbol="EURUSD", day=today)
    assert eurusd.close == Decimal("1.08")
    # Equities have no weekend closes (carried, as on a real market); crypto trades every day.
    saturday = next(
        today - timedelta(days=i) for i in range(7) if (today - timedelta(days=i)).weekday() == 5
    )
    assert saturday not in closes
    assert DailyPrice.objects.filter(instrument__symbol="BTC-USD", day=saturday).exists()


def test_the_demos_foreign_trades_are_converted_at_their_own_dates_rate(seeded):
    from portfolio.models import Holding

    sap = Holding.objects.get(portfolio=seeded, instrument__symbol="SAP")
    assert sap.fx_note == ""  # no "at today's FX rate, for want of history"
    assert sap.cost_basis_base is not None


def test_seeding_again_adds_no_second_history(seeded):
    count = DailyPrice.objects.count()
    demo.demo_seed()
    assert DailyPrice.objects.count() == count
