"""The demo world: its market to watch and the candles every instrument starts with."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.utils import timezone

from portfolio.demo import HISTORY_MINUTES, MARKET_SYMBOL, demo_seed
from portfolio.models import AssetClass, FeedKind, Holding, Instrument, PriceBar


def test_the_demo_has_btc_usdt_with_two_hours_of_candles_ending_at_its_price_once(db):
    demo_seed()
    market = Instrument.objects.get(symbol=MARKET_SYMBOL)
    assert (market.name, market.asset_class, market.quote_currency, market.feed) == (
        "Bitcoin / Tether",
        AssetClass.CRYPTO,
        "USDT",
        FeedKind.SIMULATED,
    )
    assert not Holding.objects.filter(instrument=market).exists()  # to watch, not held
    bars = list(PriceBar.objects.filter(instrument=market).order_by("start"))
    assert HISTORY_MINUTES <= len(bars) <= HISTORY_MINUTES + 1
    now = timezone.now()
    assert bars[-1].start >= now - timedelta(minutes=2)
    assert bars[0].start >= now - timedelta(minutes=HISTORY_MINUTES + 1)
    assert bars[-1].close == Decimal("97000")  # the history ends where the live price starts
    assert all(b.low <= min(b.open, b.close) <= max(b.open, b.close) <= b.high for b in bars)
    # Every instrument of the demo has candles, not only the market.
    assert set(PriceBar.objects.values_list("instrument__symbol", flat=True).distinct()) == set(
        Instrument.objects.values_list("symbol", flat=True)
    )

    # Every start of the demo seeds again: the candles the live feed made since stay as they are.
    live = {f: Decimal("50000") for f in ("open", "high", "low", "close")}
    PriceBar.objects.filter(pk=bars[-2].pk).update(**live)
    demo_seed()
    assert PriceBar.objects.filter(instrument=market).count() == len(bars)
    kept = PriceBar.objects.get(pk=bars[-2].pk)
    assert {f: getattr(kept, f) for f in live} == live
