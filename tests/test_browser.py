"""What a person sees: Chromium (Playwright) against a running daphne and Celery worker."""

import os
import sys
from datetime import UTC, datetime

import pytest
from playwright.sync_api import expect

from streaming.tasks import ingest_quotes
from tests.browser import log_in, screenshot
from tests.conftest import PASSWORD, Process, free_port, start_daphne

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def btc_tick(world, price: str) -> None:
    ingest_quotes.delay(
        [
            {
                "instrument": world["btc"].id,
                "price": price,
                "ts": datetime.now(UTC).isoformat(),
                "source": "simulated",
            }
        ]
    )


def row(page, symbol):
    return page.locator("tr[data-instrument]", has_text=symbol)


def test_logged_in_user_sees_holdings_and_an_ingested_tick_changes_value_and_total(
    world, celery_worker, daphne_server, page
):
    btc_tick(world, "50000")
    log_in(page, daphne_server, "alice", PASSWORD)
    btc = row(page, "BTC-USD")
    expect(btc.locator(".qty")).to_have_text("2")
    expect(btc.locator(".value")).to_have_text("$100,000.00")

    btc_tick(world, "50123.45")

    expect(btc.locator(".price")).to_have_text("$50,123.45")
    expect(btc.locator(".value")).to_have_text("$100,246.90")
    expect(page.locator('[data-field="total"]')).to_have_text("$100,246.90")
    expect(page.locator("#status")).to_have_text("Live")
    assert page.locator("tr[data-instrument]").count() == 1  # only alice's holding
    screenshot(page, "portfolio-live")
    assert page.console_errors == []


def test_anonymous_visitor_is_sent_to_the_login_page(daphne_server, page):
    page.goto(f"{daphne_server}/")
    expect(page).to_have_url(f"{daphne_server}/login/?next=/")
    expect(page.locator("h1")).to_have_text("Log in")


def test_wrong_password_shows_an_error_and_no_portfolio(world, daphne_server, page):
    page.goto(f"{daphne_server}/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "wrong")
    page.click("button[type=submit]")
    expect(page.locator("[role=alert]")).to_contain_text("correct username and password")


def test_a_seq_gap_discards_the_delta_and_redraws_from_a_fresh_snapshot(
    world, celery_worker, daphne_server, page
):
    btc_tick(world, "40000")
    log_in(page, daphne_server, "alice", PASSWORD)
    total = page.locator('[data-field="total"]')
    expect(total).to_have_text("$80,000.00")
    # A frame that skips sequence numbers, carrying numbers the server never sent.
    page.evaluate(
        """(portfolioId) => {
            const c = window.livefolioConnection;
            const bogus = {type: "valuation", seq: c.lastSeq + 5, ts: new Date().toISOString(),
                           portfolio: {id: portfolioId, name: "x", base_currency: "USD",
                                       total: "1.00",
                                       as_of: new Date().toISOString(), holdings: []}};
            c.receive({data: JSON.stringify(bogus)});
        }""",
        world["portfolios"]["alice"].id,
    )
    expect(page.locator("tr[data-instrument]")).to_have_count(1)
    expect(total).to_have_text("$80,000.00")
    btc_tick(world, "40001")  # deltas flow again after the resync snapshot
    expect(total).to_have_text("$80,002.00")


def test_page_reconnects_after_the_server_restarts_and_shows_what_changed_meanwhile(
    world, celery_worker, transactional_db, redis_client, tmp_path, page
):
    port = free_port()
    server = start_daphne(tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        btc_tick(world, "30000")
        log_in(page, base, "alice", PASSWORD)
        total = page.locator('[data-field="total"]')
        expect(total).to_have_text("$60,000.00")
        server.stop()
        expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
        expect(page.locator("#status")).to_contain_text("Reconnecting")
        btc_tick(world, "31000")  # nobody is connected to hear this valuation
        (tmp_path / "restarted").mkdir()
        server = start_daphne(tmp_path / "restarted", port)
        expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=40_000)
        expect(total).to_have_text("$62,000.00")  # from the fresh snapshot
    finally:
        server.stop()
    assert all("WebSocket" in e or "ERR_CONNECTION_REFUSED" in e for e in page.console_errors)


def test_demo_command_serves_moving_prices_for_the_demo_login(tmp_path, page):
    """The README's run command: embedded default, no services, prices move within seconds."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="portfolio.settings",
        LIVEFOLIO_SQLITE_PATH=str(tmp_path / "demo.sqlite3"),
        PYTHONUNBUFFERED="1",
    )
    demo = Process(
        "demo", [sys.executable, "manage.py", "demo", "--port", str(port)], env, tmp_path
    )
    try:
        demo.wait_for_output("Log in as demo / demo", timeout=60)
        assert f"http://127.0.0.1:{port}/" in demo.output()
        log_in(page, f"http://127.0.0.1:{port}", "demo", "demo")
        total = page.locator('[data-field="total"]')
        expect(page.locator("tr[data-instrument]")).to_have_count(8)  # EURUSD is only a rate
        expect(page.locator('[data-field="by_currency"] .alloc-row')).to_have_count(2)  # USD, EUR
        first = total.inner_text()
        expect(total).not_to_have_text(first, timeout=15_000)
        screenshot(page, "demo")
        # BTC/USDT: a simulated market with a live order book and a tape from the start.
        page.goto(f"http://127.0.0.1:{port}/i/BTC/USDT/")
        expect(page.locator("#book tr")).to_have_count(10, timeout=5_000)
        expect(page.locator("#book-empty")).to_be_hidden()
        expect(page.locator("#trades tr").first).to_be_visible(timeout=20_000)
        screenshot(page, "demo-market")
    finally:
        demo.stop()
    assert page.console_errors == []


def test_a_transaction_added_through_the_form_changes_the_holding_and_the_open_live_page(
    world, celery_worker, daphne_server, page
):
    btc_tick(world, "50000")
    log_in(page, daphne_server, "alice", PASSWORD)
    btc = row(page, "BTC-USD")
    expect(btc.locator(".qty")).to_have_text("2")
    expect(page.locator('[data-field="total"]')).to_have_text("$100,000.00")

    # A second tab records the purchase; the live tab is never reloaded.
    form = page.context.new_page()
    form.console_errors = []
    form.on("pageerror", lambda e: form.console_errors.append(str(e)))
    portfolio_id = world["portfolios"]["alice"].id
    form.goto(f"{daphne_server}/p/{portfolio_id}/transactions/add/")
    form.select_option("#id_kind", "SELL")
    form.select_option("#id_instrument", label="BTC-USD")
    form.fill("#id_executed_at", "2026-02-01T10:00")
    form.fill("#id_quantity", "5")
    form.fill("#id_price", "40000")
    form.click("#transaction-form button[type=submit]")
    expect(form.locator("#error-quantity")).to_contain_text("held 2, requested 5")
    form.select_option("#id_kind", "BUY")
    form.fill("#id_quantity", "1")
    form.click("#transaction-form button[type=submit]")
    expect(form).to_have_url(f"{daphne_server}/p/{portfolio_id}/transactions/")
    expect(form.locator("tr[data-transaction]", has_text="BTC-USD")).to_have_count(2)
    screenshot(form, "transactions-after-add")

    expect(btc.locator(".qty")).to_have_text("3")
    expect(btc.locator(".value")).to_have_text("$150,000.00")
    expect(page.locator('[data-field="cash_total"]')).to_have_text("-$40,000.00")
    expect(page.locator('[data-field="total"]')).to_have_text("$110,000.00")
    expect(btc.locator(".upnl")).to_have_text("+$109,000.00 (+265.85%)")  # cost 41,000
    screenshot(page, "portfolio-after-add")

    # Deleting it through its edit page puts the live tab back.
    form.locator("tr[data-transaction]", has_text="40,000.00").get_by_role(
        "link", name="Edit"
    ).click()
    form.get_by_role("button", name="Delete this transaction").click()
    expect(form.locator("tr[data-transaction]", has_text="BTC-USD")).to_have_count(1)
    expect(btc.locator(".qty")).to_have_text("2")
    expect(page.locator('[data-field="total"]')).to_have_text("$100,000.00")
    assert page.console_errors == [] and form.console_errors == []


def test_instrument_page_draws_candles_stats_and_position_and_follows_live_quotes(
    world, celery_worker, daphne_server, page
):
    btc_tick(world, "50000")
    log_in(page, daphne_server, "alice", PASSWORD)
    page.goto(f"{daphne_server}/i/BTC-USD/")
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    expect(page.locator("#price")).to_have_text("$50,000.00")
    expect(page.locator("#position")).to_have_text("2 ($100,000.00) in Alice's")
    expect(page.locator("#chart canvas").first).to_be_visible()
    btc_tick(world, "50250.5")
    expect(page.locator("#price")).to_have_text("$50,250.50")
    expect(page.locator("#stat-high")).to_have_text(
        "50,000.00"
    )  # the bar stats come from the snapshot
    screenshot(page, "instrument-live")
    assert page.console_errors == []


def test_instrument_page_of_an_unknown_symbol_is_a_404(world, daphne_server, page):
    log_in(page, daphne_server, "alice", PASSWORD)
    response = page.goto(f"{daphne_server}/i/NOPE/")
    assert response.status == 404


def test_theme_toggle_switches_and_is_remembered(world, daphne_server, page):
    log_in(page, daphne_server, "alice", PASSWORD)
    html = page.locator("html")
    background = "getComputedStyle(document.body).backgroundColor"
    before = page.evaluate(background)
    page.click("#theme-toggle")
    expect(html).to_have_attribute("data-theme", "dark")  # the context starts in light
    assert page.evaluate(background) != before
    screenshot(page, "portfolio-dark")
    page.reload()
    expect(html).to_have_attribute("data-theme", "dark")
    page.click("#theme-toggle")
    expect(html).to_have_attribute("data-theme", "light")
    assert page.evaluate(background) == before


def test_status_says_offline_when_the_network_goes_and_live_when_it_returns(
    world, celery_worker, daphne_server, page
):
    btc_tick(world, "1000")
    log_in(page, daphne_server, "alice", PASSWORD)
    page.context.set_offline(True)
    expect(page.locator("#status")).to_have_text("Offline")
    page.context.set_offline(False)
    expect(page.locator("#status")).to_have_text("Live")
    btc_tick(world, "1001")
    expect(page.locator('[data-field="total"]')).to_have_text("$2,002.00")


def test_a_valuation_valued_earlier_than_the_one_shown_is_ignored(
    world, celery_worker, daphne_server, page
):
    btc_tick(world, "40000")
    log_in(page, daphne_server, "alice", PASSWORD)
    total = page.locator('[data-field="total"]')
    expect(total).to_have_text("$80,000.00")
    # A valuation that crossed a later one in flight: in sequence, but valued before it.
    page.evaluate(
        """(portfolioId) => {
            const c = window.livefolioConnection;
            const late = {type: "valuation", seq: c.lastSeq + 1, ts: new Date().toISOString(),
                          portfolio: {id: portfolioId, name: "x", base_currency: "USD",
                                      total: "1.00", valued_at: "2000-01-01T00:00:00.000Z",
                                      holdings: []}};
            c.receive({data: JSON.stringify(late)});
        }""",
        world["portfolios"]["alice"].id,
    )
    # Updates are applied on the next animation frame: wait two, then look.
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    assert total.inner_text() == "$80,000.00"
    assert page.locator("tr[data-instrument]").count() == 1
    btc_tick(world, "40001")  # a real, later valuation still applies
    expect(total).to_have_text("$80,002.00")
