"""Every page at a phone's width (360 px) and a desktop's (1366 px), in light and dark: nothing
scrolls sideways, axe-core finds no serious or critical WCAG 2.1 A/AA violation (contrast
included), and each is photographed for docs/screenshots/."""

import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone
from playwright.sync_api import expect

from portfolio import services
from portfolio.ledger import TxKind
from portfolio.models import (
    AssetClass,
    FeedKind,
    FeedStatus,
    Instrument,
    PriceBar,
    ValuationSnapshot,
)
from tests.browser import log_in, screenshot
from tests.conftest import PASSWORD, ROOT

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SIZES = {"phone": (360, 740), "desktop": (1366, 900)}
# axe-core from npm (package.json devDependencies), evaluated through the DevTools protocol: the
# pages' Content-Security-Policy stays on (an injected <script> would be refused).
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"


def in_thread(fn, *args):
    """Run a service in a worker thread: services publish after commit through async_to_sync,
    which refuses to run in this thread while Playwright's event loop does."""

    def run():
        try:
            return fn(*args)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def furnish(world) -> dict:
    """Alice is staff, holds BTC with a sale behind it, owns an empty second portfolio; a feed has
    reported, and there are prices (one FX) with bids and asks."""
    alice = world["users"]["alice"]
    alice.is_staff = True
    alice.save()
    now = timezone.now()
    eurusd = Instrument.objects.create(
        symbol="EURUSD",
        name="Euro in US dollars",
        asset_class=AssetClass.FX,
        quote_currency="USD",
        feed=FeedKind.SIMULATED,
        feed_symbol="EURUSD",
    )
    # Yesterday's closes first: the day change has a reference price.
    services.quotes_store(
        updates=[
            services.QuoteUpdate(
                world["btc"].id, Decimal("95000"), now - timedelta(days=1), "simulated"
            ),
            services.QuoteUpdate(
                world["eth"].id, Decimal("3600"), now - timedelta(days=1), "simulated"
            ),
        ]
    )
    services.quotes_store(
        updates=[
            services.QuoteUpdate(
                world["btc"].id,
                Decimal("97117.5618"),
                now,
                "simulated",
                Decimal("97117.5"),
                Decimal("97118.25"),
            ),
            # Older than LIVEFOLIO_STALE_SECONDS (120): a stale row, in the stale amber.
            services.QuoteUpdate(
                world["eth"].id, Decimal("3512.4467"), now - timedelta(seconds=150), "simulated"
            ),
            services.QuoteUpdate(
                eurusd.id, Decimal("1.0412"), now, "simulated", Decimal("1.04118"), None
            ),
        ]
    )
    # Value snapshots of the last hours: the value chart draws a line and the returns strip has
    # figures.
    for i, value in enumerate(("204100", "207950", "206300", "209800", "208700")):
        ValuationSnapshot.objects.create(
            portfolio=world["portfolios"]["alice"],
            taken_at=now - timedelta(minutes=50 * (5 - i)),
            value=Decimal(value),
        )
    # Twelve 1-minute candles, as a feed that started a few minutes ago leaves them.
    minute = now.replace(second=0, microsecond=0)
    for i in range(12, 0, -1):
        base = Decimal("97000") + Decimal(i * 7 % 23) * 5
        start = minute - timedelta(minutes=i)
        PriceBar.objects.create(
            instrument=world["btc"],
            start=start,
            open=base,
            high=base + 40,
            low=base - 35,
            close=base + 12,
            open_ts=start,
            close_ts=start + timedelta(seconds=59),
        )
    FeedStatus.objects.create(
        feed=FeedKind.SIMULATED,
        state="connected",
        heartbeat_at=now,
        connected_since=now - timedelta(minutes=5),
        last_message_at=now,
        messages=12345,
        messages_per_s=Decimal("10.0"),
    )

    def ledger():
        portfolio = world["portfolios"]["alice"]
        at = datetime(2026, 1, 6, 15, 0, tzinfo=UTC)
        services.transaction_add(
            portfolio=portfolio, kind=TxKind.DEPOSIT, amount=Decimal("1000"), executed_at=at
        )
        services.transaction_add(
            portfolio=portfolio,
            kind=TxKind.BUY,
            instrument=world["eth"],
            quantity=Decimal("10"),
            price=Decimal("100"),
            executed_at=at + timedelta(minutes=1),
        )
        services.transaction_add(
            portfolio=portfolio,
            kind=TxKind.SELL,
            instrument=world["btc"],
            quantity=Decimal("0.5"),
            price=Decimal("61000"),
            fees=Decimal("2.575"),
            executed_at=datetime(2026, 2, 1, 12, 0, tzinfo=UTC),
        )
        return services.portfolio_create(owner=alice, name="Empty")

    empty = in_thread(ledger)
    return {"empty": empty}


def pages(world, extra) -> dict[str, str]:
    pid = world["portfolios"]["alice"].id
    tx = world["portfolios"]["alice"].transactions.order_by("id").first()
    return {
        "portfolio": f"/p/{pid}/",
        "portfolio-empty": f"/p/{extra['empty'].id}/",
        "instrument": "/i/BTC-USD/",
        "instrument-fx": "/i/EURUSD/",
        "transactions": f"/p/{pid}/transactions/",
        "transaction-add": f"/p/{pid}/transactions/add/",
        "transaction-edit": f"/p/{pid}/transactions/{tx.id}/edit/",
        "import": f"/p/{pid}/import/",
        "performance": f"/p/{pid}/performance/",
        "settings": f"/p/{pid}/settings/",
        "new-portfolio": "/portfolios/new/",
        "tokens": "/settings/tokens/",
        "feed-status": "/status/feeds/",
    }


def accessibility_problems(page) -> list[str]:
    """axe-core's serious and critical violations of WCAG 2.x A and AA on the page as it is."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text())
    violations = page.evaluate(
        """async () => {
            const result = await axe.run(document, {
                runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]},
            });
            return result.violations
                .filter((v) => v.impact === "serious" || v.impact === "critical")
                .map((v) => `${v.id} (${v.impact}): ` +
                    v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", "));
        }"""
    )
    return violations


def overflow(page) -> dict:
    """How much wider than the viewport the document is, and the widest elements sticking out."""
    return page.evaluate(
        """() => {
            const width = document.documentElement.clientWidth;
            const clipped = (el) => {
                for (let a = el.parentElement; a; a = a.parentElement) {
                    if (getComputedStyle(a).overflowX !== "visible") return true;
                }
                return false;
            };
            const culprits = [...document.querySelectorAll("body *")]
                .filter((el) => el.getBoundingClientRect().right > width + 0.5)
                .filter((el) => !clipped(el))
                .slice(0, 5)
                .map((el) => el.tagName + (el.id ? "#" + el.id : "") + "." + el.className);
            return {scroll: document.documentElement.scrollWidth, width, culprits};
        }"""
    )


def positions_fit(page, size: str) -> None:
    """The holdings need no sideways scroll; a phone shows symbol, price, value and day %."""
    table = page.locator(".table-scroll").first
    assert table.evaluate("(e) => e.scrollWidth <= e.clientWidth"), size
    shown = page.locator(".positions thead th:visible button.sort")
    if size == "phone":
        expect(shown).to_have_text(["Instrument", "Price", "Value", "Day change"])
        day = page.locator("tr[data-instrument] td.day").first
        assert re.fullmatch(r"[+-]?\d+\.\d\d%", day.inner_text().strip()), day.inner_text()
        # The total and the day change lead the page, above the returns and the chart.
        total = page.locator('[data-field="total"]').bounding_box()
        assert total["y"] + total["height"] <= 740
    else:
        expect(shown).to_have_count(10)


def says_what_to_do_next(page, urls) -> None:
    """A new portfolio: the next steps, not empty figures, an empty chart and a bare table."""
    empty = page.locator('[data-field="empty"]')
    expect(empty).to_be_visible()
    pid = urls["portfolio-empty"].strip("/").split("/")[-1]
    expect(empty.get_by_role("link", name="Add a transaction")).to_have_attribute(
        "href", f"/p/{pid}/transactions/add/"
    )
    expect(empty.get_by_role("link", name="Import a CSV")).to_have_attribute(
        "href", f"/p/{pid}/import/"
    )
    for field in ("figures", "positions", "value-section", "allocation"):
        expect(page.locator(f'[data-field="{field}"]')).to_be_hidden()
    expect(page.locator("#returns-pending")).to_be_visible()
    assert "— · —" not in page.locator("main").inner_text()


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_every_page_fits_a_phone_and_a_desktop_without_sideways_scroll(
    world, daphne_server, chromium, theme
):
    extra = furnish(world)
    urls = pages(world, extra)
    problems = []
    for size, (width, height) in SIZES.items():
        context = chromium.new_context(
            locale="en-US",
            timezone_id="UTC",
            viewport={"width": width, "height": height},
            color_scheme=theme,
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
        page.goto(f"{daphne_server}/login/")
        shot = f"login-{size}-{theme}"
        measured = overflow(page)
        if measured["scroll"] > measured["width"]:
            problems.append((shot, measured))
        screenshot(page, shot)
        if size == "desktop":
            problems.extend((shot, v) for v in accessibility_problems(page))
        log_in(page, daphne_server, "alice", PASSWORD)
        for name, path in urls.items():
            response = page.goto(f"{daphne_server}{path}")
            assert response.ok, f"{path}: HTTP {response.status}"
            if name.startswith("portfolio") or name.startswith("instrument"):
                expect(page.locator("#status")).to_have_attribute("data-state", "live")
                page.wait_for_timeout(300)  # the snapshot drawn at the next frame
            if name == "portfolio":
                positions_fit(page, size)
            if name == "portfolio-empty":
                says_what_to_do_next(page, urls)
            measured = overflow(page)
            shot = f"{name}-{size}-{theme}"
            if measured["scroll"] > measured["width"]:
                problems.append((shot, measured))
            screenshot(page, shot)
            if size == "desktop":
                problems.extend((shot, v) for v in accessibility_problems(page))
        assert errors == []
        context.close()
    assert problems == [], "\n".join(f"{shot}: {m}" for shot, m in problems)


def test_an_unknown_instrument_is_the_apps_own_404_page(world, daphne_server, page):
    log_in(page, daphne_server, "alice", PASSWORD)
    response = page.goto(f"{daphne_server}/i/NOPE-USD/")
    assert response.status == 404
    expect(page.locator("h1")).to_have_text("Not found")
    expect(page.locator(".topbar .brand")).to_be_visible()


def test_the_ledger_and_the_feed_status_show_formatted_numbers(world, daphne_server, page):
    furnish(world)
    log_in(page, daphne_server, "alice", PASSWORD)
    pid = world["portfolios"]["alice"].id
    page.goto(f"{daphne_server}/p/{pid}/transactions/")
    sale = page.locator("tr[data-transaction]").first
    expect(sale).to_contain_text("61,000.00")  # the price, at BTC's precision
    expect(sale).to_contain_text("2.58")  # fees 2.575, money to 2 decimals
    expect(page.locator("tr.realization")).to_contain_text("30,247.43 USD")
    assert "61000" not in page.locator("#transactions").inner_text()
    # Headers keep their padding: AMOUNT and CURRENCY do not run together.
    amount, currency = (
        page.locator("#transactions thead th", has_text=name).bounding_box()
        for name in ("Amount", "Currency")
    )
    assert amount["x"] + amount["width"] <= currency["x"]
    gap = page.evaluate(
        "getComputedStyle(document.querySelector('#transactions thead th')).paddingRight"
    )
    assert gap != "0px"

    page.goto(f"{daphne_server}/status/feeds/")
    btc = page.locator('tr[data-instrument="BTC-USD"]')
    expect(btc).to_contain_text("97,117.56")
    expect(page.locator('tr[data-instrument="EURUSD"]')).to_contain_text("1.04120")
    text = page.locator("main").inner_text()
    assert "0 minutes" not in text and "97117.5618" not in text
    assert "just now" in text or " s ago" in text
