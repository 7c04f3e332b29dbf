from django.contrib import admin
from django.utils import timezone
from django.utils.timesince import timesince

from portfolio.models import FeedStatus, Holding, Instrument, Portfolio, Quote


class QuoteInline(admin.StackedInline):
    model = Quote
    can_delete = False
    readonly_fields = ("price", "bid", "ask", "exchange_ts", "received_at", "source")
    extra = 0

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Instrument)
class InstrumentAdmin(admin.ModelAdmin):
    list_display = (
        "symbol",
        "name",
        "asset_class",
        "quote_currency",
        "feed",
        "feed_symbol",
        "active",
        "latest_price",
        "price_age",
    )
    list_filter = ("asset_class", "feed", "active", "quote_currency")
    search_fields = ("symbol", "name", "feed_symbol")
    list_select_related = ("quote",)
    inlines = [QuoteInline]

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


@admin.register(Quote)
class QuoteAdmin(admin.ModelAdmin):
    list_display = ("instrument", "price", "bid", "ask", "exchange_ts", "received_at", "source")
    list_filter = ("source",)
    search_fields = ("instrument__symbol",)
    list_select_related = ("instrument",)
    readonly_fields = ("received_at",)


class HoldingInline(admin.TabularInline):
    model = Holding
    extra = 0
    autocomplete_fields = ("instrument",)


@admin.register(Portfolio)
class PortfolioAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "base_currency", "created_at")
    list_filter = ("base_currency",)
    search_fields = ("name", "owner__username")
    list_select_related = ("owner",)
    inlines = [HoldingInline]


@admin.register(Holding)
class HoldingAdmin(admin.ModelAdmin):
    list_display = ("portfolio", "instrument", "quantity", "cost_basis")
    list_filter = ("instrument__asset_class",)
    search_fields = ("portfolio__name", "instrument__symbol", "portfolio__owner__username")
    list_select_related = ("portfolio", "instrument")
    autocomplete_fields = ("instrument", "portfolio")


@admin.register(FeedStatus)
class FeedStatusAdmin(admin.ModelAdmin):
    """Feed health as the feed processes report it; read-only (the processes own these rows)."""

    list_display = (
        "feed",
        "state",
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
    readonly_fields = [f.name for f in FeedStatus._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(boolean=True, description="Process alive")
    def alive(self, obj: FeedStatus) -> bool:
        return obj.is_alive()

    @admin.display(description="Last message")
    def last_message(self, obj: FeedStatus) -> str:
        age = obj.last_message_age()
        return "never" if age is None else f"{age.total_seconds():.1f} s ago"
