"""What a person sees of the hardening: the lockout page, and pages working under the CSP."""

import pytest
from playwright.sync_api import expect

from tests.browser import screenshot
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_after_repeated_wrong_passwords_the_browser_shows_the_lockout_page(
    world, daphne_server, page
):
    for _ in range(5):
        page.goto(f"{daphne_server}/login/")
        page.fill("#id_username", "bob")
        page.fill("#id_password", "not-his-password")
        with page.expect_response(lambda r: r.request.method == "POST") as posted:
            page.click("button[type=submit]")
    assert posted.value.status == 429
    expect(page.locator("h1")).to_have_text("Too many failed log-ins")
    expect(page.locator("[role=alert]")).to_contain_text("after 5 failed attempts")
    expect(page.locator("main")).to_contain_text("Try again in 15 minutes.")
    screenshot(page, "locked-out")


def test_the_admin_and_the_live_page_run_under_the_csp_without_violations(
    world, daphne_server, page
):
    alice = world["users"]["alice"]
    alice.is_staff = alice.is_superuser = True
    alice.save()
    page.goto(f"{daphne_server}/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    page.goto(
        f"{daphne_server}/admin/portfolio/portfolio/{world['portfolios']['alice'].id}/change/"
    )
    expect(page.locator("#content h1")).to_contain_text("Change portfolio")
    # An inline script, which the policy must block, is reported as a console error.
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.injected = true'; document.body.appendChild(s); }"
    )
    assert page.evaluate("window.injected === undefined")
    violations = [e for e in page.console_errors if "Content Security Policy" in e]
    assert len(violations) == 1 and "script-src" in violations[0], page.console_errors
