"""The demo world of the embedded default: a few instruments, a demo user and portfolio."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from portfolio import services
from portfolio.models import AssetClass, FeedKind, Instrument, Portfolio, TxKind

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo"

# symbol, name, asset class, currency, start price, demo quantity, demo unit cost
INSTRUMENTS = [
    ("BTC-USD", "Bitcoin", AssetClass.CRYPTO, "USD", "97000", "0.5", "61000"),
    ("ETH-USD", "Ether", AssetClass.CRYPTO, "USD", "3500", "4", "2400"),
    ("SOL-USD", "Solana", AssetClass.CRYPTO, "USD", "180", "60", "95"),
    ("AAPL", "Apple Inc.", AssetClass.EQUITY, "USD", "230", "25", "172.5"),
    ("MSFT", "Microsoft Corp.", AssetClass.EQUITY, "USD", "420", "10", "310"),
    ("NVDA", "NVIDIA Corp.", AssetClass.EQUITY, "USD", "140", "40", "48.2"),
    ("VOO", "Vanguard S&P 500 ETF", AssetClass.ETF, "USD", "520", "12", "401"),
    ("SAP", "SAP SE", AssetClass.EQUITY, "EUR", "240", "10", "180"),
]
# The rate SAP's euros are converted at: an FX instrument (no holding), streamed like the rest.
FX = ("EURUSD", "Euro in US dollars", AssetClass.FX, "USD", "1.08", None, None)


@transaction.atomic
def demo_seed() -> Portfolio:
    """Create (or top up) the demo world; safe to run at every start."""
    user_model = get_user_model()
    user, created = user_model.objects.get_or_create(username=DEMO_USERNAME)
    if created:
        user.set_password(DEMO_PASSWORD)
    # The demo login opens the admin too (instruments, feeds, tokens): the embedded demo listens
    # on 127.0.0.1 only.
    user.is_staff = user.is_superuser = True
    user.save()
    portfolio = Portfolio.objects.filter(owner=user, name="Demo").first()
    if portfolio is None:
        portfolio = services.portfolio_create(owner=user, name="Demo", base_currency="USD")
    now = timezone.now()
    instruments = {}
    for symbol, name, asset_class, currency, price, _quantity, _unit_cost in [*INSTRUMENTS, FX]:
        instrument, _ = Instrument.objects.get_or_create(
            symbol=symbol,
            defaults={
                "name": name,
                "asset_class": asset_class,
                "quote_currency": currency,
                "feed": FeedKind.SIMULATED,
                "feed_symbol": symbol,
            },
        )
        instruments[symbol] = instrument
        # Yesterday's close 2 % lower, so the day change column has something to say.
        for at, px in ((now - timedelta(days=1), Decimal(price) * Decimal("0.98")), (now, price)):
            services.quotes_store(
                updates=[
                    services.QuoteUpdate(
                        instrument_id=instrument.id,
                        price=Decimal(px),
                        exchange_ts=at,
                        source=FeedKind.SIMULATED,
                    )
                ]
            )
    if not portfolio.transactions.exists():
        _demo_ledger(portfolio, instruments, now)
    return portfolio


def _demo_ledger(portfolio: Portfolio, instruments: dict, now) -> None:
    """Deposits, buys at past dates, one partial sell and a dividend."""
    start = (now - timedelta(days=400)).replace(hour=14, minute=30, second=0, microsecond=0)
    costs: dict[str, Decimal] = {}
    for _symbol, _name, _class, currency, _price, quantity, unit_cost in INSTRUMENTS:
        costs[currency] = costs.get(currency, Decimal(0)) + Decimal(quantity) * Decimal(unit_cost)
    for currency, cost in costs.items():
        services.transaction_add(
            portfolio=portfolio,
            kind=TxKind.DEPOSIT,
            amount=(cost * Decimal("1.1") / 1000).to_integral_value() * 1000,
            currency=currency,
            executed_at=start,
            note=f"Initial deposit in {currency}",
        )
    for day, (symbol, *_rest, quantity, unit_cost) in enumerate(INSTRUMENTS, start=1):
        services.transaction_add(
            portfolio=portfolio,
            kind=TxKind.BUY,
            instrument=instruments[symbol],
            quantity=Decimal(quantity) * (2 if symbol == "NVDA" else 1),
            price=Decimal(unit_cost),
            fees=Decimal("4.95"),
            executed_at=start + timedelta(days=day * 7),
        )
    services.transaction_add(
        portfolio=portfolio,
        kind=TxKind.SELL,
        instrument=instruments["NVDA"],
        quantity=Decimal("40"),
        price=Decimal("118.40"),
        fees=Decimal("4.95"),
        executed_at=start + timedelta(days=200),
        note="Took half the NVIDIA profit",
    )
    services.transaction_add(
        portfolio=portfolio,
        kind=TxKind.DIVIDEND,
        instrument=instruments["AAPL"],
        amount=Decimal("6.25"),
        executed_at=start + timedelta(days=260),
        note="Quarterly dividend",
    )
