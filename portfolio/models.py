"""Instruments, their latest quotes, portfolios and holdings. Money and quantities are Decimal."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

# Prices: up to 10^14 with 10 decimals (covers BTC in satoshi-priced pairs and sub-cent tokens).
PRICE = {"max_digits": 24, "decimal_places": 10}
# Quantities: crypto goes to 18 decimals on chain; 12 is what exchanges trade.
QUANTITY = {"max_digits": 30, "decimal_places": 12}
# Money amounts (cost basis) in the instrument's quote currency.
MONEY = {"max_digits": 28, "decimal_places": 10}

currency_code = RegexValidator(r"^[A-Z0-9]{3,5}$", "Use an ISO-style currency code, e.g. USD.")


class AssetClass(models.TextChoices):
    CRYPTO = "crypto", "Crypto"
    EQUITY = "equity", "Equity"
    ETF = "etf", "ETF"
    FX = "fx", "FX rate"
    COMMODITY = "commodity", "Commodity"
    BOND = "bond", "Bond"


class FeedKind(models.TextChoices):
    SIMULATED = "simulated", "Simulated (GBM)"
    REPLAY = "replay", "CSV replay"
    BINANCE = "binance", "Binance"
    COINBASE = "coinbase", "Coinbase Exchange"
    KRAKEN = "kraken", "Kraken"


class Instrument(models.Model):
    symbol = models.CharField(
        max_length=32, unique=True, help_text="Livefolio's symbol, e.g. BTC-USD."
    )
    name = models.CharField(max_length=120)
    asset_class = models.CharField(max_length=16, choices=AssetClass.choices)
    quote_currency = models.CharField(max_length=5, validators=[currency_code])
    feed = models.CharField(max_length=16, choices=FeedKind.choices)
    feed_symbol = models.CharField(
        max_length=64, help_text="The symbol as the feed knows it, e.g. BTCUSDT on Binance."
    )
    active = models.BooleanField(default=True, help_text="Inactive instruments are not streamed.")

    class Meta:
        ordering = ["symbol"]
        constraints = [
            models.UniqueConstraint(
                fields=["feed", "feed_symbol"], name="instrument_unique_feed_symbol"
            ),
        ]

    def __str__(self) -> str:
        return self.symbol


class Quote(models.Model):
    """The latest price of an instrument. One row per instrument: a newer exchange time wins."""

    instrument = models.OneToOneField(
        Instrument, on_delete=models.CASCADE, primary_key=True, related_name="quote"
    )
    price = models.DecimalField(**PRICE)
    bid = models.DecimalField(**PRICE, null=True, blank=True)
    ask = models.DecimalField(**PRICE, null=True, blank=True)
    exchange_ts = models.DateTimeField(help_text="When the exchange stamped this price (UTC).")
    received_at = models.DateTimeField(help_text="When Livefolio stored it (UTC).")
    source = models.CharField(max_length=16, choices=FeedKind.choices)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(price__gt=0), name="quote_price_positive"),
            models.CheckConstraint(
                condition=Q(bid__isnull=True) | Q(ask__isnull=True) | Q(bid__lte=F("ask")),
                name="quote_bid_not_above_ask",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.instrument_id} {self.price} @ {self.exchange_ts:%Y-%m-%d %H:%M:%S}"

    def age(self, now: datetime | None = None) -> timedelta:
        return (now or timezone.now()) - self.exchange_ts

    def is_stale(self, now: datetime | None = None) -> bool:
        return self.age(now) > timedelta(seconds=settings.LIVEFOLIO_STALE_SECONDS)


class Portfolio(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="portfolios"
    )
    name = models.CharField(max_length=80)
    base_currency = models.CharField(max_length=5, default="USD", validators=[currency_code])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["owner_id", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "name"], name="portfolio_unique_name_per_owner"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Holding(models.Model):
    """A position, stored for fast valuation; the ledger derives it from transactions."""

    portfolio = models.ForeignKey(Portfolio, on_delete=models.CASCADE, related_name="holdings")
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="holdings")
    quantity = models.DecimalField(**QUANTITY)
    cost_basis = models.DecimalField(
        **MONEY, default=Decimal("0"), help_text="Total cost in the instrument's quote currency."
    )

    class Meta:
        ordering = ["portfolio_id", "instrument__symbol"]
        constraints = [
            models.UniqueConstraint(
                fields=["portfolio", "instrument"], name="holding_one_per_instrument"
            ),
            models.CheckConstraint(
                condition=Q(cost_basis__gte=0), name="holding_cost_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} {self.instrument}"


class PriceBar(models.Model):
    """One UTC minute of an instrument's prices, built from stored ticks (candles, 24 h stats)."""

    instrument = models.ForeignKey(Instrument, on_delete=models.CASCADE, related_name="bars")
    start = models.DateTimeField(help_text="Start of the minute (UTC).")
    open = models.DecimalField(**PRICE)
    high = models.DecimalField(**PRICE)
    low = models.DecimalField(**PRICE)
    close = models.DecimalField(**PRICE)
    # Exchange times of the ticks that set open and close: a late tick cannot move them wrongly.
    open_ts = models.DateTimeField()
    close_ts = models.DateTimeField()

    class Meta:
        ordering = ["instrument_id", "start"]
        constraints = [
            models.UniqueConstraint(fields=["instrument", "start"], name="bar_one_per_minute"),
            models.CheckConstraint(
                condition=Q(low__lte=F("high")) & Q(low__gt=0),
                name="bar_low_positive_not_above_high",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.instrument_id} {self.start:%Y-%m-%d %H:%M} {self.close}"


class FeedStatus(models.Model):
    """The health of one feed process, written by it every few seconds (one row per feed)."""

    feed = models.CharField(max_length=16, choices=FeedKind.choices, unique=True)
    state = models.CharField(max_length=16, help_text="connecting, connected, backoff or stopped")
    heartbeat_at = models.DateTimeField(help_text="When the feed process last wrote this row.")
    connected_since = models.DateTimeField(null=True, blank=True)
    last_message_at = models.DateTimeField(null=True, blank=True)
    messages = models.PositiveBigIntegerField(default=0)
    messages_per_s = models.DecimalField(max_digits=12, decimal_places=1, default=Decimal("0"))
    reconnects = models.PositiveBigIntegerField(default=0)
    gaps = models.PositiveBigIntegerField(default=0)
    checksum_failures = models.PositiveBigIntegerField(default=0)
    malformed_frames = models.PositiveBigIntegerField(default=0)
    out_of_order = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0)
    symbols = models.JSONField(default=dict, help_text="Feed symbol -> time of its last message.")

    # A feed process that has not written for this long is presumed dead.
    ALIVE_WITHIN = timedelta(seconds=15)

    class Meta:
        ordering = ["feed"]
        verbose_name_plural = "feed statuses"

    def __str__(self) -> str:
        return f"{self.feed}: {self.state}"

    def is_alive(self, now: datetime | None = None) -> bool:
        return (now or timezone.now()) - self.heartbeat_at <= self.ALIVE_WITHIN

    def last_message_age(self, now: datetime | None = None) -> timedelta | None:
        return (now or timezone.now()) - self.last_message_at if self.last_message_at else None
