"""The demo's market to watch: ``manage.py demo`` (embedded default, its own daphne and simulated
feed) shows BTC/USDT's order book, trade tape and candles on the first load, and they move."""

from __future__ import annotations

import os
import sys
from datetime import datetime

import pytest
from playwright.sync_api import expect

from tests.browser import log_in, poll, screenshot
from tests.conftest import Process, free_port

pytestmark = pytest.mark.browser

PAGE = "/i/BTC/USDT/"


def clock(text: str) -> datetime:
    """A tape row's time as the en-US page shows it (``5:04:09 AM``)."""
    return datetime.strptime(text.replace("\u202f", " "), "%I:%M:%S %p")


def test_the_demo_market_shows_a_live_book_tape_and_candles_from_the_first_load(tmp_path, page):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="portfolio.settings",
        LIVEFOLIO_SQLITE_PATH=str(tmp_path / "demo.sqlite3"),
        PYTHONUNBUFFERED="1",
    )
    demo = Process(
        "demo",
        [sys.executable, "manage.py", "demo", "--port", str(port), "--seed", "21"],
        env,
        tmp_path,
    )
    try:
        demo.wait_for_output("Log in as demo / demo", timeout=60)
        base = f"http://127.0.0.1:{port}"
        assert f"{base}{PAGE}" in demo.output()
        log_in(page, base, "demo", "demo")
        page.set_viewport_size({"width": 1366, "height": 900})
        page.goto(f"{base}{PAGE}")
        expect(page.locator("#status")).to_have_attribute("data-state", "live")
        expect(page.locator("h1")).to_contain_text("Bitcoin / Tether")

        # The first draw (the snapshot): ten levels a side, a full tape, two hours of candles.
        book_rows = page.locator("#book tr")
        expect(book_rows).to_have_count(10)
        expect(page.locator("#book-empty")).to_be_hidden()
        # One read of the whole table (it is redrawn live between two reads); a side with fewer
        # than ten levels leaves its cells empty.
        first_book, bid_texts, ask_texts = page.evaluate(
            """() => {
                const column = (n) => [...document.querySelectorAll(`#book td:nth-child(${n})`)];
                return [document.querySelector('#book').innerText,
                        column(2).map((td) => td.innerText),
                        column(3).map((td) => td.innerText)];
            }"""
        )
        bids = [float(t.replace(",", "")) for t in bid_texts if t]
        asks = [float(t.replace(",", "")) for t in ask_texts if t]
        assert bids and asks
        assert bids[0] < asks[0]
        assert bids == sorted(bids, reverse=True)
        assert asks == sorted(asks)
        trade_rows = page.locator("#trades tr")
        assert trade_rows.count() >= 20
        expect(page.locator("#trades-empty")).to_be_hidden()
        assert int(page.locator("#chart").get_attribute("data-bars")) >= 100
        expect(page.locator("#price")).not_to_have_text("—")
        assert "USDT" in page.locator("#price").inner_text()  # not an ISO currency: the code
        newest = page.locator("#trades tr").first.inner_text()
        times = [clock(t) for t in page.locator("#trades td:first-child").all_inner_texts()]
        assert times == sorted(times, reverse=True)  # the newest trade on top

        # Live: the book and the tape change as the simulated market trades.
        expect(page.locator("#book")).not_to_have_text(first_book, timeout=10_000)
        changed = poll(
            page, "() => document.querySelector('#trades tr').innerText", lambda t: t != newest
        )
        assert changed != newest
        # The volume beneath the candles: the size traded in each minute the tape has seen.
        assert int(page.locator("#chart").get_attribute("data-volume-bars")) >= 1
        screenshot(page, "demo-market-1366")

        page.set_viewport_size({"width": 360, "height": 800})
        expect(book_rows).to_have_count(10)
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 360, f"the page is {width} px wide at 360"
        screenshot(page, "demo-market-360")
    finally:
        demo.stop()
    assert page.console_errors == []
