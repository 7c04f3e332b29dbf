"""The live portfolio page says which positions were converted at today's FX rate for want of
FX history on their trades' dates (docs/fx.md)."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from playwright.sync_api import expect

from portfolio import services
from portfolio.ledger import TxKind
from portfolio.models import AssetClass, FeedKind, Instrument
from tests.browser import log_in
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _euro_portfolio(world) -> int:
    """Alice's second portfolio, in EUR, buys BTC-USD; EURUSD has a quote but no history."""
    try:
        eurusd = Instrument.objects.create(
            symbol="EURUSD",
            name="Euro in dollars",
            asset_class=AssetClass.FX,
            quote_currency="USD",
            feed=FeedKind.SIMULATED,
            feed_symbol="EURUSD",
        )
        now = datetime.now(UTC)
        services.quotes_store(
            updates=[
                services.QuoteUpdate(
                    instrument_id=eurusd.id, price=Decimal("1.25"), exchange_ts=now,
                    source="simulated",
                )
            ]
        )  # fmt: skip
        portfolio = services.portfolio_create(
            owner=world["users"]["alice"], name="Euros", base_currency="EUR"
        )
        services.transaction_add(
            portfolio=portfolio, kind=TxKind.BUY, instrument=world["btc"],
            quantity=Decimal("1"), price=Decimal("500"),
            executed_at=datetime(2026, 1, 7, tzinfo=UTC),
        )  # fmt: skip
        return portfolio.id
    finally:
        connection.close()  # the thread's own database connection


def test_a_position_converted_at_todays_rate_is_named_on_the_page(world, daphne_server, page):
    with ThreadPoolExecutor(max_workers=1) as pool:
        portfolio_id = pool.submit(_euro_portfolio, world).result()
    log_in(page, daphne_server, "alice", PASSWORD)
    page.goto(f"{daphne_server}/p/{portfolio_id}/")
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    expect(page.locator('[data-field="fx_notes"]')).to_have_text(
        "At today's FX rate, for want of history: BTC-USD: 1 transaction(s) (2026-01-07) "
        "converted at the latest USD rate: no FX history on or before their dates"
    )
    assert page.console_errors == []
