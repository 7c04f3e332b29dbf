"""The demo world of the embedded default: a few instruments, a demo user and portfolio."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal, localcontext

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from portfolio import services
from portfolio.models import AssetClass, FeedKind, Instrument, Portfolio, PriceBar, TxKind

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
# A market to watch (no holding): the demo's simulated feed runs an order book for each crypto
# instrument, and this is the pair the exchanges' own demos show.
MARKET_SYMBOL = "BTC/USDT"
MARKET = (MARKET_SYMBOL, "Bitcoin / Tether", AssetClass.CRYPTO, "USDT", "97000", None, None)
# Minutes of 1-minute bars each instrument starts with, so its candles are never empty.
HISTORY_MINUTES = 120
# The history's volatility per minute: the demo feed's, whose simulated clock runs 600 times
# faster than the real one (0.8 a year over 600 minutes), so old and live candles look alike.
HISTORY_SIGMA = Decimal("0.8") * (Decimal(600 * 60) / Decimal(365 * 24 * 3600)).sqrt()


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
    for symbol, name, asset_class, currency, price, _quantity, _unit_cost in [
        *INSTRUMENTS,
        FX,
        MARKET,
    ]:
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
        _demo_history(instrument, Decimal(price), now)
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


def _demo_history(instrument: Instrument, price: Decimal, now: datetime) -> None:
    """The last ``HISTORY_MINUTES`` of 1-minute bars, a random walk ending at ``price`` (the
    same walk for a symbol every time); nothing if the instrument already has bars then."""
    since = (now - timedelta(minutes=HISTORY_MINUTES)).replace(second=0, microsecond=0)
    if PriceBar.objects.filter(instrument=instrument, start__gte=since).exists():
        return
    rng = random.Random(instrument.symbol)
    quantum = Decimal("0.0001") if price >= 1 else Decimal("0.00000001")  # as the feed rounds
    # Four ticks a minute, walked backwards from now: the last one is the current price.
    per_tick = HISTORY_SIGMA / 2
    updates = []
    level = price
    at = now.replace(second=0, microsecond=0) - timedelta(seconds=15)
    while at >= since:
        updates.append(
            services.QuoteUpdate(
                instrument_id=instrument.id,
                price=level.quantize(quantum),
                exchange_ts=at,
                source=FeedKind.SIMULATED,
            )
        )
        with localcontext() as ctx:
            ctx.prec = 28
            level *= (per_tick * Decimal(repr(rng.gauss(0.0, 1.0)))).exp()
        at -= timedelta(seconds=15)
    services.bars_record(updates=updates)
