"""The demo world of the embedded default: a few instruments, a demo user and portfolio."""

from __future__ import annotations

from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from portfolio import services
from portfolio.models import AssetClass, FeedKind, Instrument, Portfolio

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo"

# symbol, name, asset class, start price, demo quantity, demo unit cost
INSTRUMENTS = [
    ("BTC-USD", "Bitcoin", AssetClass.CRYPTO, "97000", "0.5", "61000"),
    ("ETH-USD", "Ether", AssetClass.CRYPTO, "3500", "4", "2400"),
    ("SOL-USD", "Solana", AssetClass.CRYPTO, "180", "60", "95"),
    ("AAPL", "Apple Inc.", AssetClass.EQUITY, "230", "25", "172.5"),
    ("MSFT", "Microsoft Corp.", AssetClass.EQUITY, "420", "10", "310"),
    ("NVDA", "NVIDIA Corp.", AssetClass.EQUITY, "140", "40", "48.2"),
    ("VOO", "Vanguard S&P 500 ETF", AssetClass.ETF, "520", "12", "401"),
]


@transaction.atomic
def demo_seed() -> Portfolio:
    """Create (or top up) the demo world; safe to run at every start."""
    user_model = get_user_model()
    user, created = user_model.objects.get_or_create(username=DEMO_USERNAME)
    if created:
        user.set_password(DEMO_PASSWORD)
        user.save()
    portfolio = Portfolio.objects.filter(owner=user, name="Demo").first()
    if portfolio is None:
        portfolio = services.portfolio_create(owner=user, name="Demo", base_currency="USD")
    now = timezone.now()
    for symbol, name, asset_class, price, quantity, unit_cost in INSTRUMENTS:
        instrument, _ = Instrument.objects.get_or_create(
            symbol=symbol,
            defaults={
                "name": name,
                "asset_class": asset_class,
                "quote_currency": "USD",
                "feed": FeedKind.SIMULATED,
                "feed_symbol": symbol,
            },
        )
        services.quotes_store(
            updates=[
                services.QuoteUpdate(
                    instrument_id=instrument.id,
                    price=Decimal(price),
                    exchange_ts=now,
                    source=FeedKind.SIMULATED,
                )
            ]
        )
        if not portfolio.holdings.filter(instrument=instrument).exists():
            services.holding_set(
                portfolio=portfolio,
                instrument=instrument,
                quantity=Decimal(quantity),
                cost_basis=Decimal(quantity) * Decimal(unit_cost),
            )
    return portfolio
