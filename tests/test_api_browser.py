"""What a person sees of the API: the token page, and the browser's own session on /ws/v1/."""

import re

import pytest
from playwright.sync_api import expect

from streaming import tokens
from tests.browser import log_in, screenshot
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_user_creates_a_token_sees_it_once_and_revokes_it(world, daphne_server, page):
    log_in(page, daphne_server, "alice", PASSWORD)
    page.click("text=API tokens")
    expect(page.locator("h1")).to_have_text("API tokens")
    page.fill("#id_name", "rebalancing bot")
    page.click("text=Create token")
    shown = page.locator("#new-token")
    expect(shown).to_have_text(re.compile(r"^lf_[A-Za-z0-9-]{8}_\S{40,}$"))
    assert tokens.token_authenticate(shown.inner_text()).username == "alice"
    row = page.locator('tr[data-token="rebalancing bot"]')
    expect(row).to_contain_text("active")
    screenshot(page, "api-tokens-created")
    page.reload()  # a reload is a GET: the token is not shown again
    expect(page.locator("#new-token")).to_have_count(0)
    row.locator("text=Revoke").click()
    expect(page.locator(".notice")).to_contain_text("no longer opens connections")
    expect(row).to_contain_text("revoked")
    screenshot(page, "api-tokens-revoked")
    assert page.console_errors == []


def test_the_browser_session_authenticates_on_the_api_from_the_same_origin(
    world, daphne_server, page
):
    log_in(page, daphne_server, "bob", PASSWORD)
    welcome = page.evaluate(
        """() => new Promise((resolve, reject) => {
            const ws = new WebSocket(`ws://${location.host}/ws/v1/`);
            ws.onmessage = (e) => { resolve(JSON.parse(e.data)); ws.close(); };
            ws.onerror = () => reject(new Error("refused"));
        })"""
    )
    assert (welcome["type"], welcome["user"]) == ("welcome", "bob")
