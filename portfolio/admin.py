import io

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timesince

from portfolio import ledger, price_history, services
from portfolio.importers import prices_csv
from portfolio.models import (
    CashBalance,
    DailyPrice,
    FeedKind,
    FeedStatus,
    Holding,
    Instrument,
    Lot,
    Portfolio,
    Quote,
    Transaction,
    ValuationSnapshot,
    feed_process,
)


class QuoteInline(admin.StackedInline):
    model = Quote
    can_delete = False
    readonly_fields = ("price", "bid", "ask", "exchange_ts", "received_at", "source")
    extra = 0

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class InstrumentForm(forms.ModelForm):
    """An instrument on the ccxt feed names a ccxt exchange and one of that exchange's markets.

    The exchange ids are ccxt's own (``ccxt.pro.exchanges``: those it streams from). The market
    is checked against the list that exchange's feed process loaded from the exchange and
    stored with its health; before that process has run there is no list on this machine, and
    the feed itself reports a symbol the exchange does not list (log and feed health).
    """

    class Meta:
        model = Instrument
        fields = (
            "symbol",
            "name",
            "asset_class",
            "quote_currency",
            "feed",
            "exchange",
            "feed_symbol",
            "active",
            "price_decimals",
        )

    def clean(self):
        cleaned = super().clean()
        feed, exchange = cleaned.get("feed"), cleaned.get("exchange", "")
        symbol = cleaned.get("feed_symbol")
        if feed != FeedKind.CCXT:
            if exchange:
                self.add_error("exchange", "Only instruments on the ccxt feed name an exchange.")
            return cleaned
        if not exchange:
            if "exchange" not in self.errors:
                self.add_error("exchange", "The ccxt feed needs an exchange id, e.g. okx.")
            return cleaned
        # Imported here: ccxt.pro loads every exchange's module (~100 MiB), which no process
        # should carry for an admin form it may never show.
        import ccxt.pro

        if exchange not in ccxt.pro.exchanges:
            self.add_error(
                "exchange",
                f"ccxt has no WebSocket exchange {exchange!r}; use one of ccxt.pro.exchanges "
                f"({len(ccxt.pro.exchanges)} ids, e.g. okx, bybit, bitstamp).",
            )
            return cleaned
        status = FeedStatus.objects.filter(feed=feed_process(feed, exchange)).first()
        if symbol and status is not None and status.markets and symbol not in status.markets:
            self.add_error(
                "feed_symbol",
                f"{symbol!r} is not a market on {exchange} (of the {len(status.markets)} "
                "markets its feed loaded); use ccxt's unified symbol, e.g. BTC/USDT.",
            )
        return cleaned


@admin.register(Instrument)
class InstrumentAdmin(admin.ModelAdmin):
    form = InstrumentForm
    list_display = (
        "symbol",
        "name",
        "asset_class",
        "quote_currency",
        "feed",
        "exchange",
        "feed_symbol",
        "active",
        "latest_price",
        "price_age",
    )
    list_filter = ("asset_class", "feed", "exchange", "active", "quote_currency")
    search_fields = ("symbol", "name", "feed_symbol")
    list_select_related = ("quote",)
    inlines = [QuoteInline]
    readonly_fields = ("daily_prices",)

    @admin.display(description="Price history")
    def daily_prices(self, obj: Instrument) -> str:
        if obj.pk is None:
            return "Save the instrument first."
        first, last, count = price_history.history_span(instrument_id=obj.pk)
        stored = f"{count} days, {first} to {last}" if count else "no days stored"
        return format_html(
            '{} · <a href="{}">Import prices from CSV</a> · <a href="{}">Show</a>',
            stored,
            reverse("admin:portfolio_instrument_import_prices", args=[obj.pk]),
            reverse("admin:portfolio_dailyprice_changelist") + f"?instrument__id__exact={obj.pk}",
        )

    def get_urls(self):
        return [
            path(
                "<int:instrument_id>/import-prices/",
                self.admin_site.admin_view(self.import_prices_view),
                name="portfolio_instrument_import_prices",
            ),
            *super().get_urls(),
        ]

    def import_prices_view(self, request, instrument_id: int):
        instrument = get_object_or_404(Instrument, pk=instrument_id)
        if not self.has_change_permission(request, instrument):
            return redirect("admin:index")
        errors: list[str] = []
        form = PriceImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            raw = form.cleaned_data["file"].read()
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                errors = [f"the file is not UTF-8 text: {exc}"]
            else:
                result = prices_csv.import_prices(
                    instrument=instrument, text=io.StringIO(text, newline="")
                )
                if result.ok:
                    services.holdings_recompute_after_fx_history(instrument=instrument)
                    self.message_user(
                        request,
                        f"Imported {result.created + result.replaced} days of {instrument} "
                        f"({result.created} new, {result.replaced} replaced).",
                        messages.SUCCESS,
                    )
                    return redirect("admin:portfolio_instrument_change", instrument.pk)
                errors = [f"Nothing imported: {len(result.errors)} bad rows."]
                errors += [str(e) for e in result.errors]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "instrument": instrument,
            "form": form,
            "errors": errors,
            "span": price_history.history_span(instrument_id=instrument.pk),
            "title": f"Import daily prices of {instrument}",
        }
        return TemplateResponse(request, "admin/portfolio/instrument/import_prices.html", context)

    @admin.display(description="Latest price", ordering="quote__price")
    def latest_price(self, obj: Instrument) -> str:
        quote = getattr(obj, "quote", None)
        return f"{quote.price} {obj.quote_currency}" if quote else "—"

    @admin.display(description="Price age", ordering="quote__exchange_ts")
    def price_age(self, obj: Instrument) -> str:
        quote = getattr(obj, "quote", None)
        if quote is None:
            return "no price yet"
        age = timesince(quote.exchange_ts, timezone.now())
        return f"{age} (stale)" if quote.is_stale() else age


class PriceImportForm(forms.Form):
    file = forms.FileField(help_text="CSV: date,close[,open,high,low,volume]")


@admin.register(DailyPrice)
class DailyPriceAdmin(admin.ModelAdmin):
    """Daily price history; written by imports, exchange candles and the bars' roll-up."""

    list_display = ("instrument", "day", "open", "high", "low", "close", "volume", "source")
    list_filter = ("source", "instrument")
    search_fields = ("instrument__symbol",)
    list_select_related = ("instrument",)
    date_hierarchy = "day"


@admin.register(Quote)
class QuoteAdmin(admin.ModelAdmin):
    list_display = (
        "instrument",
        "price",
        "bid",
        "ask",
        "exchange_ts",
        "reference_price",
        "reference_ts",
        "received_at",
        "source",
    )
    list_filter = ("source",)
    search_fields = ("instrument__symbol",)
    list_select_related = ("instrument",)
    readonly_fields = ("received_at",)

    def save_model(self, request, obj, form, change) -> None:
        # A price typed by an operator is stored when they save it, as a feed's is.
        obj.received_at = timezone.now()
        super().save_model(request, obj, form, change)


class DerivedInline(admin.TabularInline):
    """Derived from the ledger: shown, never edited here (recompute instead)."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class HoldingInline(DerivedInline):
    model = Holding
    fields = ("instrument", "quantity", "cost_basis", "currency", "realized_pnl", "income")


class CashInline(DerivedInline):
    model = CashBalance
    fields = ("currency", "amount", "income", "fees")


@admin.action(description="Recompute holdings from the ledger")
def recompute_holdings(modeladmin, request, queryset) -> None:
    done = 0
    for portfolio in queryset:
        try:
            services.holdings_recompute(portfolio=portfolio)
            done += 1
        except ledger.LedgerError as exc:
            modeladmin.message_user(request, f"{portfolio}: {exc}", messages.ERROR)
    modeladmin.message_user(request, f"Recomputed {done} portfolio(s).", messages.SUCCESS)


class PortfolioAdminForm(forms.ModelForm):
    """Refuses a cost-basis method or short rule the ledger cannot be replayed with."""

    class Meta:
        model = Portfolio
        fields = ["owner", "name", "base_currency", "cost_basis_method", "allow_short"]

    def clean(self) -> dict:
        cleaned = super().clean()
        changed = {"cost_basis_method", "allow_short"} & set(self.changed_data)
        if self.instance.pk and changed and not self.errors:
            problem = services.ledger_problem(
                portfolio=self.instance,
                method=cleaned["cost_basis_method"],
                allow_short=cleaned["allow_short"],
            )
            if problem:
                self.add_error("allow_short", problem)
        return cleaned


@admin.register(Portfolio)
class PortfolioAdmin(admin.ModelAdmin):
    form = PortfolioAdminForm
    list_display = (
        "name",
        "owner",
        "base_currency",
        "cost_basis_method",
        "allow_short",
        "created_at",
    )
    list_filter = ("base_currency", "cost_basis_method")
    search_fields = ("name", "owner__username")
    list_select_related = ("owner",)
    inlines = [HoldingInline, CashInline]
    actions = [recompute_holdings]

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        if change and {"cost_basis_method", "allow_short"} & set(form.changed_data):
            services.holdings_recompute(portfolio=obj)


class LotInline(DerivedInline):
    model = Lot
    fields = ("opened_at", "quantity", "cost", "transaction")


@admin.register(Holding)
class HoldingAdmin(admin.ModelAdmin):
    """Holdings and their open lots per portfolio; derived, so read-only."""

    list_display = (
        "portfolio",
        "instrument",
        "quantity",
        "cost_basis",
        "currency",
        "realized_pnl",
        "income",
    )
    list_filter = ("portfolio", "instrument__asset_class")
    search_fields = ("portfolio__name", "instrument__symbol", "portfolio__owner__username")
    list_select_related = ("portfolio", "instrument")
    inlines = [LotInline]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Transaction)
class TransactionAdmin(admin.ModelAdmin):
    """The ledger. Recorded through the app's pages or imports (which check it); deleting here
    goes through the same service and recomputes."""

    list_display = (
        "executed_at",
        "portfolio",
        "kind",
        "instrument",
        "quantity",
        "price",
        "fees",
        "amount",
        "currency",
        "to_amount",
        "to_currency",
        "note",
    )
    list_filter = ("portfolio", "kind", "instrument")
    search_fields = ("portfolio__name", "instrument__symbol", "note")
    list_select_related = ("portfolio", "instrument")
    date_hierarchy = "executed_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def delete_model(self, request, obj) -> None:
        try:
            services.transaction_delete(tx=obj)
        except ValidationError as exc:
            self.message_user(request, " ".join(exc.messages), messages.ERROR)

    def delete_queryset(self, request, queryset) -> None:
        for tx in queryset.select_related("portfolio"):
            self.delete_model(request, tx)


@admin.register(ValuationSnapshot)
class ValuationSnapshotAdmin(admin.ModelAdmin):
    list_display = ("portfolio", "taken_at", "value", "net_flows")
    list_filter = ("portfolio",)
    date_hierarchy = "taken_at"


@admin.register(FeedStatus)
class FeedStatusAdmin(admin.ModelAdmin):
    """Feed health as the feed processes report it; read-only (the processes own these rows)."""

    list_display = (
        "feed",
        "current_state",
        "alive",
        "last_message",
        "messages_per_s",
        "reconnects",
        "gaps",
        "checksum_failures",
        "malformed_frames",
        "errors",
        "heartbeat_at",
    )
    # A ccxt exchange lists thousands of markets: the page shows how many, not each one.
    exclude = ("markets",)
    readonly_fields = [f.name for f in FeedStatus._meta.fields if f.name != "markets"] + [
        "markets_loaded"
    ]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="State", ordering="state")
    def current_state(self, obj: FeedStatus) -> str:
        return obj.shown_state()

    @admin.display(description="Markets loaded")
    def markets_loaded(self, obj: FeedStatus) -> str:
        return f"{len(obj.markets)} markets" if obj.markets else "—"

    @admin.display(boolean=True, description="Process alive")
    def alive(self, obj: FeedStatus) -> bool:
        return obj.is_alive()

    @admin.display(description="Last message")
    def last_message(self, obj: FeedStatus) -> str:
        age = obj.last_message_age()
        return "never" if age is None else f"{age.total_seconds():.1f} s ago"
