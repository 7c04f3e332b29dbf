"""One number formatter per kind, the same on the server (template filters) and in the browser
(static/js/format.js): prices at the instrument's precision, money to the currency's decimals,
quantities trimmed, thousands separators everywhere, relative times that never say "0 minutes".

Thousands separators and decimal points are those of the en-US locale in Unicode CLDR (the
browser runs with locale en-US): group "," every three digits, decimal ".", e.g. "1,234.56"
(https://cldr.unicode.org/translation/number-currency-formats/number-and-currency-patterns,
pattern "#,##0.###"). Rounding is half-up on the server (Decimal ROUND_HALF_UP) and
"halfExpand" in Intl.NumberFormat (ECMA-402 default), which agree for positive and negative
amounts: https://tc39.es/ecma402/#sec-intl.numberformat-internal-slots (roundingMode)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from portfolio.templatetags.livefolio import ago, money, price, quantity
from tests.browser import log_in
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# value, asset class, shown
PRICES = [
    ("97117.5618", "crypto", "97,117.56"),  # the 24 h stats printed 97,117.5618
    ("232.4467000000", "equity", "232.45"),  # the feed status page printed 232.4467000000
    ("1.0412", "fx", "1.04120"),  # an FX price printed $1.04 beside an 8-decimal bid
    ("151.2345", "fx", "151.235"),  # a rate of 10 or more (USDJPY) to 3 decimals
    ("0.012345", "crypto", "0.0123"),
    ("0.00001234", "crypto", "0.00001234"),
    ("-42.565", "crypto", "-42.57"),  # a change: half away from zero on both sides
    ("0", "equity", "0.00"),
]
# value, shown
QUANTITIES = [
    ("1200.000000000000", "1,200"),
    ("0.500000000000", "0.5"),
    ("-3", "-3"),
    ("1234567.123456789012", "1,234,567.123456789012"),
]
# amount, shown (the ledger printed raw 61000 and 2800.575 USD)
MONEY = [("61000", "61,000.00"), ("2800.575", "2,800.58"), ("-1234.5", "-1,234.50"), ("0", "0.00")]


@pytest.mark.parametrize(("value", "asset_class", "shown"), PRICES)
def test_the_server_shows_a_price_at_its_instruments_precision(value, asset_class, shown):
    assert price(Decimal(value), asset_class) == shown


@pytest.mark.parametrize(("value", "shown"), QUANTITIES)
def test_the_server_trims_a_quantity(value, shown):
    assert quantity(Decimal(value)) == shown


@pytest.mark.parametrize(("amount", "shown"), MONEY)
def test_the_server_shows_money_to_two_decimals(amount, shown):
    assert money(Decimal(amount)) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "just now"),
        (0.4, "just now"),
        (1, "1 s ago"),
        (59, "59 s ago"),
        (60, "1 min ago"),
        (3599, "59 min ago"),
        (7200, "2 h ago"),
        (86400, "1 day ago"),
        (3 * 86400 + 5, "3 days ago"),
    ],
)
def test_relative_times_never_say_zero_minutes(seconds, shown):
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert ago(now - timedelta(seconds=seconds), now) == shown


def test_the_browser_formats_every_number_like_the_server(world, daphne_server, page):
    log_in(page, daphne_server, "alice", PASSWORD)
    shown = page.evaluate(
        """async ([prices, quantities, money]) => {
            const f = await import("/static/js/format.js");
            return {
                prices: prices.map(([v, cls]) => f.price(v, f.priceDecimals(v, cls))),
                quantities: quantities.map(([v]) => f.quantity(v)),
                money: money.map(([v]) => f.money(v, "USD")),
                priced: f.price("2800.575", 2, "USD"),
                percent: [
                    f.percent("19323.51", {signed: true}),
                    f.percent("-0.5"),
                    f.percent("0", {signed: true}),
                ],
            };
        }""",
        [PRICES, QUANTITIES, MONEY],
    )
    assert shown["prices"] == [p[2] for p in PRICES]
    assert shown["quantities"] == [q[1] for q in QUANTITIES]
    assert shown["money"] == [
        "$" + m[1] if not m[1].startswith("-") else "-$" + m[1][1:] for m in MONEY
    ]
    assert shown["priced"] == "$2,800.58"
    assert shown["percent"] == ["+19,323.51%", "-0.50%", "0.00%"]


def test_the_instrument_page_shows_every_price_at_one_precision(world, daphne_server, page):
    """An FX instrument: price, bid and ask to the pipette, the chart's axis with separators."""
    from django.utils import timezone

    from portfolio import services
    from portfolio.models import AssetClass, FeedKind, Instrument

    eurusd = Instrument.objects.create(
        symbol="EURUSD",
        name="Euro in US dollars",
        asset_class=AssetClass.FX,
        quote_currency="USD",
        feed=FeedKind.SIMULATED,
        feed_symbol="EURUSD",
    )
    services.quotes_store(
        updates=[
            services.QuoteUpdate(
                eurusd.id,
                Decimal("1.0412"),
                timezone.now(),
                "simulated",
                Decimal("1.04118"),
                Decimal("1.04123456"),
            )
        ]
    )
    log_in(page, daphne_server, "alice", PASSWORD)
    page.goto(f"{daphne_server}/i/EURUSD/")
    expect(page.locator("#price")).to_have_text("$1.04120")
    expect(page.locator("#bid")).to_have_text("1.04118")
    expect(page.locator("#ask")).to_have_text("1.04123")


def test_an_instruments_own_precision_set_in_the_admin_wins_everywhere(world, daphne_server, page):
    """An operator sets BTC-USD's decimals to 1 (its tick size on some exchanges): the server's
    filter, the browser's formatter, the instrument page and the live portfolio page all show
    its prices to one decimal, not the rule's two."""
    from django.utils import timezone

    from portfolio import services
    from portfolio.models import Instrument

    btc = world["btc"]
    Instrument.objects.filter(pk=btc.pk).update(price_decimals=1)
    btc.refresh_from_db()
    assert price(Decimal("97117.5618"), btc) == "97,117.6"
    assert price(Decimal("97117.5618"), "crypto") == "97,117.56"  # the rule without it
    services.quotes_store(
        updates=[
            services.QuoteUpdate(
                btc.id, Decimal("97117.5618"), timezone.now(), "simulated", None, None
            )
        ]
    )
    log_in(page, daphne_server, "alice", PASSWORD)
    assert page.evaluate(
        """async () => {
            const f = await import("/static/js/format.js");
            const value = "97117.5618";
            return [f.priceDecimals(value, "crypto", 1), f.priceDecimals(value, "crypto")];
        }"""
    ) == [1, 2]
    page.goto(f"{daphne_server}/i/BTC-USD/")
    expect(page.locator("#price")).to_have_text("$97,117.6")
    page.goto(f"{daphne_server}/")
    expect(page.locator("table.positions")).to_contain_text("$97,117.6")
