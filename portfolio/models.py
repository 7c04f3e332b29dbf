"""Instruments, their latest quotes, portfolios, their transaction ledger and what it derives.

Money and quantities are Decimal. ``Transaction`` rows are the truth; ``Holding``, ``Lot`` and
``CashBalance`` are derived from them by ``services.holdings_recompute`` and stored for fast
valuation.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.validators import (
    MaxValueValidator,
    ProhibitNullCharactersValidator,
    RegexValidator,
)
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from portfolio.ledger import CostBasis, TxKind

# Prices: up to 10^14 with 10 decimals (covers BTC in satoshi-priced pairs and sub-cent tokens).
PRICE = {"max_digits": 24, "decimal_places": 10}
# Quantities: crypto goes to 18 decimals on chain; 12 is what exchanges trade.
QUANTITY = {"max_digits": 30, "decimal_places": 12}
# Money amounts (cost basis) in the instrument's quote currency.
MONEY = {"max_digits": 28, "decimal_places": 10}

currency_code = RegexValidator(r"^[A-Z0-9]{3,5}$", "Use an ISO-style currency code, e.g. USD.")
# Pages and sockets carry a symbol as URL path segments (/i/BTC/USD/): any visible characters
# but spaces, and a "/" only between two parts that are not "." or ".." (a browser resolves
# those segments away before the request is sent).
instrument_symbol = RegexValidator(
    r"^(?!\.\.?(?:/|$))(?!.*/\.\.?(?:/|$))[^\s/\x00-\x1f\x7f]+(?:/[^\s/\x00-\x1f\x7f]+)*\Z",
    'Use visible characters without spaces; a "/" goes only between two parts (BTC/USD), '
    'and no part may be "." or "..".',
)


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
    CCXT = "ccxt", "Any exchange (ccxt)"


# A ccxt exchange id (ccxt.exchanges: okx, bybit, binanceusdm, ...): lowercase letters and digits.
exchange_id = RegexValidator(
    r"^[a-z][a-z0-9]{1,31}\Z", "Use a ccxt exchange id, e.g. okx or bybit."
)


def feed_process(feed: str, exchange: str = "") -> str:
    """The name of the feed process that streams an instrument, as its health row names it:
    the feed kind, or ``ccxt:<exchange>`` (ccxt runs one process per exchange)."""
    return f"{feed}:{exchange}" if feed == FeedKind.CCXT else feed


class Instrument(models.Model):
    symbol = models.CharField(
        max_length=32,
        unique=True,
        validators=[instrument_symbol],
        help_text="Livefolio's symbol, e.g. BTC-USD or BTC/USD.",
    )
    name = models.CharField(max_length=120)
    asset_class = models.CharField(max_length=16, choices=AssetClass.choices)
    quote_currency = models.CharField(max_length=5, validators=[currency_code])
    feed = models.CharField(max_length=16, choices=FeedKind.choices)
    exchange = models.CharField(
        max_length=32,
        blank=True,
        validators=[exchange_id],
        help_text="Feed ccxt only: the ccxt exchange id, e.g. okx or bybit.",
    )
    feed_symbol = models.CharField(
        max_length=64,
        help_text="The symbol as the feed knows it, e.g. BTCUSDT on Binance; "
        "for ccxt the exchange's market symbol, e.g. BTC/USDT.",
    )
    active = models.BooleanField(default=True, help_text="Inactive instruments are not streamed.")
    price_decimals = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(12)],
        help_text="Decimals its prices are shown with (the exchange's tick size), e.g. 2 for "
        "BTC/USDT, 5 for EURUSD. Empty: from the asset class and the price's size.",
    )

    class Meta:
        ordering = ["symbol"]
        constraints = [
            models.UniqueConstraint(
                fields=["feed", "exchange", "feed_symbol"], name="instrument_unique_feed_symbol"
            ),
            # ccxt streams from the exchange the instrument names; the other feeds have one.
            models.CheckConstraint(
                condition=(Q(feed="ccxt") & ~Q(exchange="")) | (~Q(feed="ccxt") & Q(exchange="")),
                name="instrument_exchange_only_for_ccxt",
            ),
        ]

    def __str__(self) -> str:
        return self.symbol

    @property
    def feed_process(self) -> str:
        return feed_process(self.feed, self.exchange)


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
    reference_price = models.DecimalField(
        **PRICE,
        null=True,
        blank=True,
        help_text="The previous UTC day's last price: the base of the day change.",
    )
    reference_ts = models.DateTimeField(
        null=True, blank=True, help_text="When the reference price was stamped (UTC)."
    )

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(price__gt=0), name="quote_price_positive"),
            models.CheckConstraint(
                condition=Q(reference_price__isnull=True) | Q(reference_price__gt=0),
                name="quote_reference_price_positive",
            ),
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


# The ledger's cost-basis methods, as a user reads them in forms and the admin.
COST_BASIS_CHOICES = [
    (CostBasis.FIFO, "FIFO (oldest lot first)"),
    (CostBasis.LIFO, "LIFO (newest lot first)"),
    (CostBasis.HIFO, "HIFO (highest cost first)"),
    (CostBasis.AVERAGE, "Average cost"),
]


class Portfolio(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="portfolios"
    )
    name = models.CharField(max_length=80)
    base_currency = models.CharField(max_length=5, default="USD", validators=[currency_code])
    cost_basis_method = models.CharField(
        max_length=8,
        choices=COST_BASIS_CHOICES,
        default=CostBasis.FIFO,
        help_text="Which lots a sale closes first; changing it recomputes the holdings.",
    )
    allow_short = models.BooleanField(
        default=False, help_text="Allow selling more than is held (opens a short position)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    recomputed_at = models.DateTimeField(
        null=True, blank=True, help_text="When holdings were last recomputed from the ledger."
    )

    class Meta:
        ordering = ["owner_id", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "name"], name="portfolio_unique_name_per_owner"
            ),
            models.CheckConstraint(
                condition=Q(cost_basis_method__in=[method.value for method in CostBasis]),
                name="portfolio_cost_basis_method_known",
            ),
        ]

    def __str__(self) -> str:
        return self.name


# The ledger's kinds, as a user reads them in forms and the admin.
TX_KIND_CHOICES = [
    (TxKind.BUY, "Buy"),
    (TxKind.SELL, "Sell"),
    (TxKind.DIVIDEND, "Dividend"),
    (TxKind.INTEREST, "Interest"),
    (TxKind.FEE, "Fee"),
    (TxKind.DEPOSIT, "Deposit"),
    (TxKind.WITHDRAWAL, "Withdrawal"),
    (TxKind.SPLIT, "Split"),
    (TxKind.TRANSFER_IN, "Transfer in"),
    (TxKind.TRANSFER_OUT, "Transfer out"),
    (TxKind.EXCHANGE, "Currency exchange"),
]
TRADE_KINDS = (TxKind.BUY, TxKind.SELL, TxKind.TRANSFER_IN, TxKind.TRANSFER_OUT)
AMOUNT_KINDS = (TxKind.DIVIDEND, TxKind.INTEREST, TxKind.FEE, TxKind.DEPOSIT, TxKind.WITHDRAWAL)
CASH_ONLY_KINDS = (TxKind.DEPOSIT, TxKind.WITHDRAWAL)


class Transaction(models.Model):
    """One entry of a portfolio's ledger: the only thing a user records by hand or imports."""

    portfolio = models.ForeignKey(Portfolio, on_delete=models.CASCADE, related_name="transactions")
    kind = models.CharField(max_length=16, choices=TX_KIND_CHOICES)
    instrument = models.ForeignKey(
        Instrument,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="transactions",
        help_text="Required for trades, splits and dividends; empty for deposits and withdrawals.",
    )
    quantity = models.DecimalField(**QUANTITY, default=Decimal("0"))
    price = models.DecimalField(**PRICE, default=Decimal("0"), help_text="Per unit.")
    fees = models.DecimalField(**MONEY, default=Decimal("0"))
    amount = models.DecimalField(
        **MONEY,
        default=Decimal("0"),
        help_text="Gross amount of a dividend, interest, fee, deposit or withdrawal.",
    )
    ratio = models.DecimalField(
        max_digits=24,
        decimal_places=12,
        null=True,
        blank=True,
        help_text="Split ratio: 2 for 2-for-1, 0.1 for a 1-for-10 reverse split.",
    )
    currency = models.CharField(max_length=5, validators=[currency_code], blank=True)
    # A currency exchange sells ``amount`` of ``currency`` and buys ``to_amount`` of
    # ``to_currency`` (its fee is in ``currency``): one row, so neither half can go missing.
    to_amount = models.DecimalField(
        **MONEY,
        default=Decimal("0"),
        help_text="Currency exchange: the amount bought, in the currency bought.",
    )
    to_currency = models.CharField(
        max_length=5,
        validators=[currency_code],
        blank=True,
        help_text="Currency exchange: the currency bought.",
    )
    executed_at = models.DateTimeField()
    note = models.CharField(
        max_length=200, blank=True, validators=[ProhibitNullCharactersValidator()]
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-executed_at", "-id"]
        indexes = [models.Index(fields=["portfolio", "executed_at"], name="tx_portfolio_time")]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=[kind.value for kind in TxKind]), name="tx_kind_known"
            ),
            models.CheckConstraint(
                condition=Q(quantity__gte=0) & Q(price__gte=0) & Q(fees__gte=0) & Q(amount__gte=0),
                name="tx_amounts_not_negative",
            ),
            models.CheckConstraint(
                condition=~Q(kind__in=TRADE_KINDS)
                | (Q(instrument__isnull=False) & Q(quantity__gt=0) & Q(amount=0)),
                name="tx_trade_has_instrument_and_quantity",
            ),
            models.CheckConstraint(
                condition=~Q(kind__in=AMOUNT_KINDS) | (Q(amount__gt=0) & Q(quantity=0)),
                name="tx_cash_kind_has_amount",
            ),
            models.CheckConstraint(
                condition=~Q(kind__in=CASH_ONLY_KINDS) | Q(instrument__isnull=True),
                name="tx_deposit_withdrawal_without_instrument",
            ),
            models.CheckConstraint(
                condition=(Q(kind=TxKind.SPLIT) & Q(ratio__gt=0) & Q(instrument__isnull=False))
                | (~Q(kind=TxKind.SPLIT) & Q(ratio__isnull=True)),
                name="tx_ratio_only_for_split",
            ),
            models.CheckConstraint(
                condition=Q(kind=TxKind.SPLIT) | ~Q(currency=""),
                name="tx_currency_required",
            ),
            models.CheckConstraint(
                condition=(
                    Q(kind=TxKind.EXCHANGE)
                    & Q(amount__gt=0)
                    & Q(to_amount__gt=0)
                    & Q(quantity=0)
                    & Q(price=0)
                    & Q(instrument__isnull=True)
                    & ~Q(to_currency="")
                    & ~Q(to_currency=F("currency"))
                )
                | (~Q(kind=TxKind.EXCHANGE) & Q(to_amount=0) & Q(to_currency="")),
                name="tx_exchange_sells_one_currency_for_another",
            ),
        ]

    def __str__(self) -> str:
        what = self.instrument or self.currency
        return f"{self.get_kind_display()} {what} {self.executed_at:%Y-%m-%d}"


class Holding(models.Model):
    """A position derived from the ledger (``services.holdings_recompute``), stored for fast
    valuation. A closed position stays with quantity 0 to keep its realized P&L and income."""

    portfolio = models.ForeignKey(Portfolio, on_delete=models.CASCADE, related_name="holdings")
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="holdings")
    quantity = models.DecimalField(**QUANTITY, help_text="Negative when short.")
    cost_basis = models.DecimalField(
        **MONEY,
        default=Decimal("0"),
        help_text="Total cost of the open lots in the instrument's currency (proceeds if short).",
    )
    currency = models.CharField(max_length=5, blank=True)
    realized_pnl = models.DecimalField(**MONEY, default=Decimal("0"))
    income = models.DecimalField(
        **MONEY, default=Decimal("0"), help_text="Dividends received, in the position's currency."
    )
    # In the portfolio's base currency, each trade and payment at its own date's FX rate (null:
    # a rate was missing). They do not move with today's rate.
    cost_basis_base = models.DecimalField(
        **MONEY, null=True, blank=True, help_text="Cost of the open lots in the base currency."
    )
    realized_pnl_base = models.DecimalField(**MONEY, null=True, blank=True)
    income_base = models.DecimalField(**MONEY, null=True, blank=True)
    fx_note = models.CharField(
        max_length=300,
        blank=True,
        help_text="Which trades had no FX history on their date and used the latest rate.",
    )

    class Meta:
        ordering = ["portfolio_id", "instrument__symbol"]
        constraints = [
            models.UniqueConstraint(
                fields=["portfolio", "instrument"], name="holding_one_per_instrument"
            ),
            # A long position costs something; a short one holds the proceeds (negative).
            models.CheckConstraint(
                condition=Q(quantity__gte=0, cost_basis__gte=0)
                | Q(quantity__lt=0, cost_basis__lte=0),
                name="holding_cost_sign_matches_quantity",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} {self.instrument}"


class Lot(models.Model):
    """An open lot of a holding, derived from the ledger by the portfolio's cost-basis method."""

    holding = models.ForeignKey(Holding, on_delete=models.CASCADE, related_name="lots")
    transaction = models.ForeignKey(
        Transaction, on_delete=models.CASCADE, related_name="lots", help_text="What opened it."
    )
    opened_at = models.DateTimeField()
    quantity = models.DecimalField(**QUANTITY)
    cost = models.DecimalField(**MONEY)
    cost_base = models.DecimalField(
        **MONEY, null=True, blank=True, help_text="In the base currency at acquisition."
    )

    class Meta:
        ordering = ["holding_id", "opened_at", "id"]

    def __str__(self) -> str:
        return f"{self.quantity} @ {self.opened_at:%Y-%m-%d}"


class CashBalance(models.Model):
    """Cash of one portfolio in one currency, with the income and fees that moved it (derived)."""

    portfolio = models.ForeignKey(Portfolio, on_delete=models.CASCADE, related_name="cash")
    currency = models.CharField(max_length=5, validators=[currency_code])
    amount = models.DecimalField(
        **MONEY, help_text="May be negative: not everyone records deposits."
    )
    income = models.DecimalField(**MONEY, default=Decimal("0"))
    income_base = models.DecimalField(
        **MONEY,
        null=True,
        blank=True,
        help_text="Income in the base currency, each payment at its date's FX rate.",
    )
    fees = models.DecimalField(**MONEY, default=Decimal("0"))

    class Meta:
        ordering = ["portfolio_id", "currency"]
        constraints = [
            models.UniqueConstraint(fields=["portfolio", "currency"], name="cash_one_per_currency"),
        ]

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"


class ValuationSnapshot(models.Model):
    """A portfolio's value at one instant (Celery beat), the series performance is measured on."""

    portfolio = models.ForeignKey(Portfolio, on_delete=models.CASCADE, related_name="snapshots")
    taken_at = models.DateTimeField()
    value = models.DecimalField(**MONEY, help_text="Market value in the base currency.")
    net_flows = models.DecimalField(
        **MONEY,
        default=Decimal("0"),
        help_text="Deposits minus withdrawals up to taken_at, in the base currency.",
    )

    class Meta:
        ordering = ["portfolio_id", "taken_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["portfolio", "taken_at"], name="snapshot_one_per_instant"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.portfolio_id} {self.value} @ {self.taken_at:%Y-%m-%d %H:%M}"


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


class PriceSource(models.TextChoices):
    """Where a day's prices came from; a source of higher rank is never overwritten by a lower."""

    BARS = "bars", "Feed's 1-minute bars"
    EXCHANGE = "exchange", "Exchange REST candles"
    CSV = "csv", "CSV import"


# An operator's CSV wins over an exchange's candles, which win over our own bars' roll-up.
PRICE_SOURCE_RANK = {PriceSource.BARS: 0, PriceSource.EXCHANGE: 1, PriceSource.CSV: 2}


class DailyPrice(models.Model):
    """One UTC day of an instrument's prices (FX instruments alike): the price history past
    valuations and FX conversions at a trade's date read. Days without a row (weekends,
    holidays) carry the previous close forward (``day_values.close_on``)."""

    instrument = models.ForeignKey(
        Instrument, on_delete=models.CASCADE, related_name="daily_prices"
    )
    day = models.DateField(help_text="The UTC calendar day.")
    open = models.DecimalField(**PRICE, null=True, blank=True)
    high = models.DecimalField(**PRICE, null=True, blank=True)
    low = models.DecimalField(**PRICE, null=True, blank=True)
    close = models.DecimalField(**PRICE)
    volume = models.DecimalField(**QUANTITY, null=True, blank=True)
    source = models.CharField(max_length=16, choices=PriceSource.choices)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["instrument_id", "day"]
        constraints = [
            models.UniqueConstraint(fields=["instrument", "day"], name="daily_price_one_per_day"),
            models.CheckConstraint(
                condition=Q(close__gt=0)
                & (Q(open__isnull=True) | Q(open__gt=0))
                & (Q(low__isnull=True) | Q(low__gt=0))
                & (Q(high__isnull=True) | Q(low__isnull=True) | Q(low__lte=F("high")))
                & (Q(volume__isnull=True) | Q(volume__gte=0)),
                name="daily_price_positive_low_not_above_high",
            ),
            models.CheckConstraint(
                condition=Q(source__in=PriceSource.values), name="daily_price_source_known"
            ),
        ]
        # How many closes an instrument has and its newest write, read from the index alone:
        # whether a portfolio's kept past values still hold (selectors.past_values._history_key).
        indexes = [models.Index(fields=["instrument", "updated_at"], name="daily_price_writes")]

    def __str__(self) -> str:
        return f"{self.instrument_id} {self.day} {self.close}"


class FeedStatus(models.Model):
    """The health of one feed process, written by it every few seconds (one row per feed)."""

    feed = models.CharField(
        max_length=48, unique=True, help_text="The feed process: a feed kind, or ccxt:<exchange>."
    )
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
    markets = models.JSONField(
        default=list,
        blank=True,
        help_text="ccxt: the exchange's market symbols, as the process last loaded them.",
    )

    class Meta:
        ordering = ["feed"]
        verbose_name_plural = "feed statuses"

    def __str__(self) -> str:
        return f"{self.feed}: {self.state}"

    @staticmethod
    def alive_within() -> timedelta:
        """The process writes this row every LIVEFOLIO_FEED_HEARTBEAT_SECONDS; three missed
        writes mean it is dead or stalled."""
        return timedelta(seconds=3 * settings.LIVEFOLIO_FEED_HEARTBEAT_SECONDS)

    def is_alive(self, now: datetime | None = None) -> bool:
        return (now or timezone.now()) - self.heartbeat_at <= self.alive_within()

    def shown_state(self, now: datetime | None = None) -> str:
        """The state the process last reported, or "down" once its heartbeat has stopped (a
        killed process never writes "stopped")."""
        return self.state if self.is_alive(now) else "down"

    def last_message_age(self, now: datetime | None = None) -> timedelta | None:
        return (now or timezone.now()) - self.last_message_at if self.last_message_at else None
