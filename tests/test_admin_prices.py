"""An operator types prices in the admin: a first quote, and (below) a day's price history."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.urls import reverse
from django.utils import timezone

from portfolio.models import Quote


def test_an_operator_adds_a_first_quote_in_the_admin_and_it_is_stored(world, admin_client):
    eth = world["eth"]
    before = timezone.now()
    response = admin_client.post(
        reverse("admin:portfolio_quote_add"),
        {
            "instrument": eth.id,
            "price": "2345.67",
            "bid": "",
            "ask": "",
            "exchange_ts_0": "2026-03-02",
            "exchange_ts_1": "09:30:00",
            "source": "simulated",
            "reference_price": "",
            "reference_ts_0": "",
            "reference_ts_1": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    quote = Quote.objects.get(instrument=eth)
    assert quote.price == Decimal("2345.67")
    assert quote.exchange_ts == datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    assert before <= quote.received_at <= timezone.now() + timedelta(seconds=1)
    listing = admin_client.get(reverse("admin:portfolio_quote_changelist"))
    assert listing.status_code == 200
    assert "2345.67" in listing.content.decode()


def test_the_add_quote_form_names_a_bad_price_instead_of_failing(world, admin_client):
    response = admin_client.post(
        reverse("admin:portfolio_quote_add"),
        {
            "instrument": world["eth"].id,
            "price": "-1",
            "exchange_ts_0": "2026-03-02",
            "exchange_ts_1": "09:30:00",
            "source": "simulated",
        },
    )
    assert response.status_code == 200
    assert "Constraint “quote_price_positive” is violated." in response.content.decode()
    assert not Quote.objects.filter(instrument=world["eth"]).exists()
