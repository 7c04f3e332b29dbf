"""The live portfolio page a trader keeps open: value chart with ranges (daily from the ledger
back to the first transaction), sortable holdings that
link to their instrument, flashes and stale badges, allocation bars, a phone-width layout."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone
from playwright.sync_api import expect

from portfolio import services
from portfolio.ledger import TxKind
from portfolio.models import DailyPrice, ValuationSnapshot
from streaming.tasks import ingest_quotes
from tests.browser import log_in, poll, screenshot
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def tick(instrument, price: str, at: datetime | None = None) -> None:
    ingest_quotes.delay(
        [
            {
                "instrument": instrument.id,
                "price": price,
                "ts": (at or datetime.now(UTC)).isoformat(),
                "source": "simulated",
            }
        ]
    )


def give_alice_ether(world) -> None:
    """Alice also buys 10 ETH (with a fresh 1000 deposit), so her table has two rows. Recorded in
    a worker thread: the services publish after commit through async_to_sync, which refuses to
    run in this thread while Playwright's event loop does."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(_buy_ether, world).result()


def _buy_ether(world) -> None:
    try:
        _record_ether(world)
    finally:
        connection.close()  # the thread's own database connection


def _record_ether(world) -> None:
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


def symbols(page) -> list[str]:
    return page.locator("tbody tr[data-instrument] a.symbol").all_inner_texts()


def open_alice(page, base_url, world) -> str:
    log_in(page, base_url, "alice", PASSWORD)
    url = f"{base_url}/p/{world['portfolios']['alice'].id}/"
    page.goto(url)
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    return url


def test_value_chart_draws_the_snapshots_and_range_buttons_switch_and_fetch(
    world, celery_worker, daphne_server, page
):
    portfolio = world["portfolios"]["alice"]
    now = timezone.now()
    for age, value in ((timedelta(hours=2), "95000"), (timedelta(days=3), "90000")):
        ValuationSnapshot.objects.create(
            portfolio=portfolio, taken_at=now - age, value=Decimal(value)
        )
    ValuationSnapshot.objects.create(
        portfolio=portfolio, taken_at=now - timedelta(days=90), value=Decimal("80000")
    )
    priced_at = datetime.now(UTC)
    tick(world["btc"], "50000", priced_at)
    open_alice(page, daphne_server, world)
    chart = page.locator('[data-field="chart"]')
    expect(chart.locator("canvas").first).to_be_visible()
    expect(chart).to_have_attribute("data-points", "1")  # 1D: the snapshot 2 hours ago
    buttons = page.locator(".ranges button")
    expect(buttons).to_have_count(5)
    expect(page.get_by_role("button", name="1D")).to_have_attribute("aria-pressed", "true")

    # 1D draws the minute snapshots; 1W and Max a point a day from the ledger (alice's first
    # transaction was on 5 January 2026), whatever snapshots there are.
    today = datetime.now(UTC).date()
    since_first = str((today - date(2026, 1, 5)).days + 1)
    for name, points in (("1W", "8"), ("Max", since_first), ("1D", "1")):
        with page.expect_response(lambda r: "history.json" in r.url) as response:
            page.get_by_role("button", name=name, exact=True).click()
        assert response.value.status == 200
        assert f"range={name.upper()}" in response.value.url
        expect(page.get_by_role("button", name=name, exact=True)).to_have_attribute(
            "aria-pressed", "true"
        )
        expect(page.locator('.ranges button[aria-pressed="true"]')).to_have_count(1)
        expect(chart).to_have_attribute("data-points", points)
    # The minute's snapshot is stamped when it was taken, after the prices it was computed
    # from: a valuation at prices older than it is still the newest value, and the line ends
    # there, with the total above it.
    ValuationSnapshot.objects.create(
        portfolio=portfolio, taken_at=datetime.now(UTC), value=Decimal("99000")
    )
    for name, points in (("1W", "8"), ("1D", "2")):
        with page.expect_response(lambda r: "history.json" in r.url):
            page.get_by_role("button", name=name, exact=True).click()
        expect(chart).to_have_attribute("data-points", points)
    # Each live valuation extends the line with the new total.
    tick(world["btc"], "50123.45", priced_at + timedelta(milliseconds=1))
    expect(page.locator('[data-field="total"]')).to_have_text("$100,246.90")
    plotted = "window.livefolioValueChart.series.data().map((p) => p.value)"
    values = poll(page, plotted, lambda v: v[-1] == 100246.9)
    assert values[-1] == 100246.9  # the line ends at the total
    assert values[0] == 95000  # the snapshot is still the start of 1D
    # Later prices add points, and every point stays in view: the time scale would otherwise
    # shift by a bar per new point and push the first snapshots off the left edge.
    for i in range(1, 4):
        page.wait_for_timeout(1100)  # a point per second: the chart's time is in seconds
        tick(world["btc"], f"{50200 + i}", datetime.now(UTC))
        expect(page.locator('[data-field="total"]')).to_have_text(f"${100400 + 2 * i:,}.00")
    in_view = """() => { const c = window.livefolioValueChart;
        const range = c.chart.timeScale().getVisibleLogicalRange();
        return [range.from, range.to, c.series.data().length]; }"""
    # The chart applies a fit at its next frame, after the point is added (which first shifts
    # the range by a bar): polled until then, as a person sees it.
    start, end, count = poll(page, in_view, lambda r: r[2] == 5 and r[0] <= 0 and r[1] >= 4)
    assert count == 5 and start <= 0 and end >= count - 1, (start, end, count)
    # Zoomed in by the person (on the last two points), the chart stays where they put it.
    page.evaluate(
        "() => window.livefolioValueChart.chart.timeScale()"
        ".setVisibleLogicalRange({from: 3, to: 4})"
    )
    assert poll(page, in_view, lambda r: r[:2] == [3, 4])[:2] == [3, 4]
    page.wait_for_timeout(1100)
    tick(world["btc"], "50210", datetime.now(UTC))
    expect(page.locator('[data-field="total"]')).to_have_text("$100,420.00")
    start, end, count = poll(page, in_view, lambda r: r[2] == 6)
    assert count == 6 and start >= 2, (start, end, count)
    # The bars: alice holds only BTC, all crypto, all USD.
    for field, key in (
        ("by_instrument", "BTC-USD"),
        ("by_asset_class", "crypto"),
        ("by_currency", "USD"),
    ):
        bar = page.locator(f'[data-field="{field}"] .alloc-row[data-key="{key}"]')
        expect(bar.locator(".alloc-pct")).to_have_text("100.00%")
    assert page.console_errors == []


def test_sorting_by_value_reorders_rows_and_a_second_click_reverses(
    world, celery_worker, daphne_server, page
):
    give_alice_ether(world)
    tick(world["btc"], "50000")  # 2 BTC = 100,000
    tick(world["eth"], "3000")  # 10 ETH = 30,000
    open_alice(page, daphne_server, world)
    expect(page.locator("tr[data-instrument]")).to_have_count(2)
    expect(page.locator("tr[data-instrument]", has_text="ETH-USD").locator(".value")).to_have_text(
        "$30,000.00"
    )
    value = page.locator("thead button.sort", has_text="Value")
    value.click()
    assert symbols(page) == ["BTC-USD", "ETH-USD"]
    expect(value.locator("xpath=..")).to_have_attribute("aria-sort", "descending")
    # Keyboard: the header is a real button.
    value.focus()
    page.keyboard.press("Enter")
    expect(value.locator("xpath=..")).to_have_attribute("aria-sort", "ascending")
    assert symbols(page) == ["ETH-USD", "BTC-USD"]
    # A live change that crosses the order moves the row.
    tick(world["eth"], "20000")  # 200,000 > 100,000
    expect(page.locator("tr[data-instrument]", has_text="ETH-USD").locator(".value")).to_have_text(
        "$200,000.00"
    )
    expect(page.locator("tbody tr[data-instrument] a.symbol")).to_have_text(["BTC-USD", "ETH-USD"])
    assert page.locator("thead th[aria-sort]").count() == 1
    assert page.console_errors == []


def test_price_changes_flash_green_up_and_red_down_and_old_prices_get_a_stale_badge(
    world, celery_worker, daphne_server, page
):
    give_alice_ether(world)
    tick(world["btc"], "50000")
    tick(world["eth"], "3000", at=datetime.now(UTC) - timedelta(hours=1))  # long stale
    open_alice(page, daphne_server, world)
    btc = page.locator("tr[data-instrument]", has_text="BTC-USD")
    eth = page.locator("tr[data-instrument]", has_text="ETH-USD")
    expect(eth.locator(".badge.stale")).to_be_visible()
    expect(btc.locator(".badge.stale")).to_be_hidden()
    tick(world["btc"], "50100")
    expect(btc.locator(".price")).to_have_text("$50,100.00")
    expect(btc.locator(".price")).to_have_class("num price flash-up")
    tick(world["btc"], "49900")
    expect(btc.locator(".price")).to_have_text("$49,900.00")
    expect(btc.locator(".price")).to_have_class("num price flash-down")
    # Once and briefly: at most 600 ms.
    duration = btc.locator(".price").evaluate("(e) => getComputedStyle(e).animationDuration")
    assert float(duration.removesuffix("s")) <= 0.6
    # Only the price flashes: value, changes, P&L, weight and the totals change quietly.
    for cell in (".value", ".day", ".upnl", ".rpnl", ".weight"):
        assert "flash" not in btc.locator(cell).get_attribute("class"), cell
    for field in ("total", "day_change", "unrealized_pnl"):
        assert "flash" not in page.locator(f'[data-field="{field}"]').get_attribute("class")
    assert page.console_errors == []


def test_a_symbol_links_to_its_instrument_page(world, celery_worker, daphne_server, page):
    tick(world["btc"], "50000")
    open_alice(page, daphne_server, world)
    page.get_by_role("link", name="BTC-USD").click()
    expect(page).to_have_url(f"{daphne_server}/i/BTC-USD/")
    expect(page.locator("#price")).to_have_text("$50,000.00")
    assert page.console_errors == []


def test_an_outsiders_portfolio_page_and_history_are_404(world, daphne_server, page):
    log_in(page, daphne_server, "bob", PASSWORD)
    alice = world["portfolios"]["alice"].id
    assert page.goto(f"{daphne_server}/p/{alice}/").status == 404
    assert page.goto(f"{daphne_server}/p/{alice}/history.json?range=MAX").status == 404


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_pages_fit_a_phone_and_a_desktop_in_both_themes(
    world, celery_worker, daphne_server, page, scheme
):
    """No horizontal page overflow at 360 px; screenshots of both pages for docs/screenshots."""
    give_alice_ether(world)
    now = timezone.now()
    for i, value in enumerate(("126000", "128500", "127200", "130000")):
        ValuationSnapshot.objects.create(
            portfolio=world["portfolios"]["alice"],
            taken_at=now - timedelta(hours=4 - i),
            value=Decimal(value),
        )
    tick(world["btc"], "50000")
    tick(world["eth"], "3000")
    page.emulate_media(color_scheme=scheme)
    url = open_alice(page, daphne_server, world)
    expect(page.locator('[data-field="chart"] canvas').first).to_be_visible()
    expect(page.locator("tr[data-instrument]")).to_have_count(2)
    for width, height, device in ((1280, 900, "desktop"), (360, 780, "phone")):
        page.set_viewport_size({"width": width, "height": height})
        for name, address in (("portfolio", url), ("instrument", f"{daphne_server}/i/BTC-USD/")):
            page.goto(address)
            expect(page.locator("#status")).to_have_attribute("data-state", "live")
            expect(page.locator("canvas").first).to_be_visible()
            page.wait_for_timeout(900)  # let the first-draw flashes fade for the picture
            screenshot(page, f"{name}-{device}-{scheme}")
            if device == "phone":
                assert page.evaluate("document.documentElement.scrollWidth") <= 360, name
                if name == "portfolio":  # the phone layout: symbols without their names
                    expect(page.locator("tbody th .name").first).to_be_hidden()
            elif name == "portfolio":  # every column of the holdings without scrolling sideways
                table = page.locator(".table-scroll").first
                assert table.evaluate("(e) => e.scrollWidth <= e.clientWidth"), table.evaluate(
                    "(e) => [e.scrollWidth, e.clientWidth]"
                )
    assert page.console_errors == []


def test_fifty_updates_a_second_end_on_the_latest_numbers_and_the_page_stays_usable(
    world, celery_worker, daphne_server, page
):
    """50 valuations a second for three seconds (in the page, past the server's own conflation):
    the page applies them per animation frame, ends on the last one, and still sorts on click."""
    import json

    from portfolio.selectors import live_states

    tick(world["btc"], "50000")
    log_in(page, daphne_server, "alice", PASSWORD)
    total = page.locator('[data-field="total"]')
    expect(total).to_have_text("$100,000.00")
    state = live_states.portfolio_states(portfolio_ids=[world["portfolios"]["alice"].id])[0]
    page.evaluate(
        """([state, count]) => new Promise((done) => {
            const c = window.livefolioConnection;
            let n = 0;
            const timer = setInterval(() => {
                n += 1;
                const valuedAt = new Date(Date.now() + 60000 + n).toISOString();
                const portfolio = {...state, total: `${100000 + n}.00`, valued_at: valuedAt};
                c.receive({data: JSON.stringify({type: "valuation", seq: c.lastSeq + 1,
                                                 ts: valuedAt, portfolio})});
                if (n === count) { clearInterval(timer); done(); }
            }, 20);
        })""",
        [json.loads(json.dumps(state)), 150],
    )
    expect(total).to_have_text("$100,150.00")
    assert page.locator("tr[data-instrument]").count() == 1
    page.click('button[data-sort="value"]')
    expect(page.locator('th:has(button[data-sort="value"])')).to_have_attribute(
        "aria-sort", "descending"
    )
    assert page.console_errors == []


def _give_alice_a_year_of_btc_closes(world, first: date) -> None:
    try:
        today = datetime.now(UTC).date()
        DailyPrice.objects.bulk_create(
            DailyPrice(
                instrument=world["btc"],
                day=first + timedelta(days=i),
                close=Decimal(400 + i),
                source="csv",
            )
            for i in range((today - first).days + 1)
        )
    finally:
        connection.close()


def test_max_range_draws_a_point_a_day_back_to_the_first_transaction(
    world, celery_worker, daphne_server, page
):
    """Alice's first transaction is on 5 January 2026 (2 BTC); BTC's daily closes run from that
    day at 400, 401, ... so the Max line starts there at 2 x 400 and rises a dollar x 2 a day."""
    first = date(2026, 1, 5)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(_give_alice_a_year_of_btc_closes, world, first).result()
    tick(world["btc"], "50000")
    open_alice(page, daphne_server, world)
    chart = page.locator('[data-field="chart"]')
    expect(chart.locator("canvas").first).to_be_visible()
    with page.expect_response(lambda r: "range=MAX" in r.url) as response:
        page.get_by_role("button", name="Max", exact=True).click()
    assert response.value.status == 200
    today = datetime.now(UTC).date()
    expect(chart).to_have_attribute("data-source", "ledger")
    expect(chart).to_have_attribute("data-first", "2026-01-05T00:00:00.000Z")
    plotted = "window.livefolioValueChart.series.data().map((p) => [p.time, p.value])"
    # Every day from the first transaction to today, then the live value at its right-hand end.
    days = (today - first).days + 1
    data = poll(page, plotted, lambda d: len(d) >= days)
    start = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp())
    assert data[0] == [start, 800]
    assert data[1] == [start + 86400, 802]
    assert [t for t, _ in data[:days]] == [start + 86400 * i for i in range(days)]
    assert data[-1][1] == 100000  # 2 BTC at the live 50,000
    screenshot(page, "value-chart-max-from-the-ledger")
    assert page.console_errors == []
