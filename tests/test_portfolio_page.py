"""The portfolio page's value history endpoint: owner only, ranges, points from the snapshots,
long ranges thinned for the chart."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from portfolio import wire
from portfolio.models import ValuationSnapshot
from portfolio.selectors import snapshot_history


def history(client, user, portfolio, **params):
    client.force_login(user)
    return client.get(reverse("portfolio-history", args=[portfolio.id]), params)


@pytest.fixture
def alice_snapshots(world):
    """Alice's snapshots 2 hours, 3 days, 20 days and 200 days ago (oldest first)."""
    now = timezone.now()
    portfolio = world["portfolios"]["alice"]
    made = []
    for age, value in (
        (timedelta(days=200), "900.5"),
        (timedelta(days=20), "1000"),
        (timedelta(days=3), "1100.25"),
        (timedelta(hours=2), "1234.56"),
    ):
        made.append(
            ValuationSnapshot.objects.create(
                portfolio=portfolio, taken_at=now - age, value=Decimal(value)
            )
        )
    return made


@pytest.mark.django_db
def test_one_day_is_the_snapshots_oldest_first_as_decimal_strings_and_longer_ranges_are_daily(
    client, world, alice_snapshots
):
    alice, portfolio = world["users"]["alice"], world["portfolios"]["alice"]
    body = history(client, alice, portfolio, range="1D").json()
    assert body["source"] == "snapshots"
    assert [p["value"] for p in body["points"]] == ["1234.56"]
    points = history(client, alice, portfolio, range="1d").json()["points"]  # any case
    assert points == [{"at": wire.iso(alice_snapshots[-1].taken_at), "value": "1234.56"}]
    # 1W and longer come from the ledger, a point a day (tests/test_value_series.py), not from
    # these snapshots.
    week = history(client, alice, portfolio, range="1W").json()
    assert week["source"] == "ledger" and len(week["points"]) == 8
    assert "1100.25" not in {p["value"] for p in week["points"]}


@pytest.mark.django_db
def test_history_defaults_to_one_day_and_is_empty_without_snapshots(client, world):
    response = history(client, world["users"]["alice"], world["portfolios"]["alice"])
    assert response.status_code == 200
    assert response.json() == {"points": [], "source": "snapshots"}


@pytest.mark.django_db
def test_history_of_another_users_portfolio_is_a_404(client, world, alice_snapshots):
    response = history(client, world["users"]["bob"], world["portfolios"]["alice"], range="MAX")
    assert response.status_code == 404
    assert b"1234.56" not in response.content


@pytest.mark.django_db
def test_history_with_an_unknown_range_is_a_400_naming_range(client, world):
    response = history(client, world["users"]["alice"], world["portfolios"]["alice"], range="2D")
    assert response.status_code == 400
    body = response.json()
    assert body["field"] == "range"
    assert body["error"].startswith("range must be one of 1D, 1W, 1M, YTD, 1Y, MAX")
    assert "'2D'" in body["error"]


@pytest.mark.django_db
def test_a_long_range_is_thinned_to_at_most_500_points_keeping_the_newest(world):
    portfolio = world["portfolios"]["alice"]
    now = timezone.now()
    ValuationSnapshot.objects.bulk_create(
        ValuationSnapshot(
            portfolio=portfolio,
            taken_at=now - timedelta(minutes=10 * i),
            value=Decimal(10_000 - i),
        )
        for i in range(1, 2001)  # two weeks of 10-minute snapshots
    )
    points = snapshot_history.value_history(portfolio=portfolio, period="1M", now=now)
    assert 250 <= len(points) <= snapshot_history.HISTORY_MAX_POINTS
    assert points[-1]["value"] == "9999.00"  # the newest snapshot survives
    ats = [p["at"] for p in points]
    assert ats == sorted(ats) and len(set(ats)) == len(ats)
    # A short range under the limit is returned whole: 10 to 1440 minutes old, both ends in.
    assert len(snapshot_history.value_history(portfolio=portfolio, period="1D", now=now)) == 144
