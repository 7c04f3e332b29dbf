"""The demo world of the embedded default: a few instruments, a demo user and portfolio, and
a past: daily closes of every instrument since before the first transaction, so the value chart
and the returns show a year from the first second."""

from __future__ import annotations

import math
import random
from datetime import date, datetime, timedelta
from decimal import Decimal, localcontext

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from portfolio import services
from portfolio.ledger import TxKind
from portfolio.models import (
    AssetClass,
    DailyPrice,
    FeedKind,
    Instrument,
    Portfolio,
    PriceBar,
    PriceSource,
)

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
        start = (now - timedelta(days=400)).replace(hour=14, minute=30, second=0, microsecond=0)
        # The history first: each trade's cost is converted at its own date's FX rate.
        _demo_daily_history(instruments, start, now)
        _demo_ledger(portfolio, instruments, start)
    return portfolio


# The demo ledger's trades at past dates: (symbol, days after the start, price). A path of
# daily closes passes through each of them and ends at today's price.
NVDA_SALE = (200, Decimal("118.40"))
FX_ANCHORS = ((0, Decimal("1.03")), (200, Decimal("1.12")))
# How far a day's close strays from the straight path between two anchors, by asset class.
WOBBLE = {AssetClass.CRYPTO: 0.08, AssetClass.EQUITY: 0.04, AssetClass.ETF: 0.03}


def _anchors(start: date, today: date) -> dict[str, list[tuple[date, Decimal]]]:
    anchors: dict[str, list[tuple[date, Decimal]]] = {}
    for week, (symbol, *_rest, price, _quantity, unit_cost) in enumerate(INSTRUMENTS, start=1):
        points = [(start + timedelta(days=week * 7), Decimal(unit_cost))]
        if symbol == "NVDA":
            points.append((start + timedelta(days=NVDA_SALE[0]), NVDA_SALE[1]))
        anchors[symbol] = [*points, (today, Decimal(price))]
    fx = [(start + timedelta(days=d), rate) for d, rate in FX_ANCHORS]
    anchors[FX[0]] = [*fx, (today, Decimal(FX[4]))]
    return anchors


def demo_closes(
    anchors: list[tuple[date, Decimal]], *, first: date, wobble: float, trading_days_only: bool
) -> list[tuple[date, Decimal]]:
    """Daily closes from ``first`` to the last anchor: through every anchor exactly, between two
    anchors their geometric path with a deterministic wave that is zero at both ends, and the
    first anchor's price before it. Weekends are left out for exchange-traded instruments
    (their closes are carried, as for a real market)."""
    out = []
    day = first
    phase = (first.toordinal() * 7 + len(anchors) * 13 + int(anchors[-1][1])) % 360 / 57.3
    while day <= anchors[-1][0]:
        if not (trading_days_only and day.weekday() >= 5) or any(day == a for a, _ in anchors):
            out.append((day, _close_on(anchors, day, wobble, phase)))
        day += timedelta(days=1)
    return out


def _close_on(
    anchors: list[tuple[date, Decimal]], day: date, wobble: float, phase: float
) -> Decimal:
    if day <= anchors[0][0]:
        left, right = (anchors[0][0] - timedelta(days=60), anchors[0][1]), anchors[0]
    else:
        index = next(i for i, (a, _) in enumerate(anchors) if a >= day)
        left, right = anchors[index - 1], anchors[index]
    span = (right[0] - left[0]).days
    u = 1 - (right[0] - day).days / span
    level = math.log(float(left[1])) * (1 - u) + math.log(float(right[1])) * u
    waves = max(1, span // 25)
    # Two waves of unrelated lengths, each instrument with its own phase: zero at both anchors.
    wave = 0.6 * math.sin(2 * math.pi * waves * u + phase) + 0.4 * math.sin(
        2 * math.pi * 2.7 * waves * u + 2 * phase
    )
    level += wobble * math.sin(math.pi * u) * wave
    price = Decimal(repr(math.exp(level)))
    places = Decimal("0.0001") if price < 10 else Decimal("0.01")
    return price.quantize(places)


def _demo_daily_history(instruments: dict, start: datetime, now: datetime) -> None:
    """Daily closes of every demo instrument from a week before the first transaction to today
    (source "bars", the lowest rank: the feed's own roll-up of today replaces today's)."""
    first, today = (start - timedelta(days=7)).date(), now.date()
    rows = []
    for symbol, anchors in _anchors(start.date(), today).items():
        instrument = instruments[symbol]
        if DailyPrice.objects.filter(instrument=instrument).exists():
            continue
        closes = demo_closes(
            anchors,
            first=first,
            wobble=WOBBLE.get(instrument.asset_class, 0.01),
            trading_days_only=instrument.asset_class != AssetClass.CRYPTO,
        )
        rows += [
            DailyPrice(instrument=instrument, day=day, close=close, source=PriceSource.BARS)
            for day, close in closes
        ]
    DailyPrice.objects.bulk_create(rows, batch_size=2000)


def _demo_ledger(portfolio: Portfolio, instruments: dict, start: datetime) -> None:
    """Deposits, buys at past dates, one partial sell and a dividend."""
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
