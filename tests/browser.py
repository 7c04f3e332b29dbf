"""Playwright helpers: Debian's Chromium (browser downloads fail here), artifacts on disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

from tests.conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"


def log_in(page: Page, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_selector('#status[data-state="live"]')


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    return path


def poll(page: Page, script: str, until: Callable[[Any], bool], tries: int = 50) -> Any:
    """``page.evaluate(script)`` every 100 ms until ``until`` holds of it (at most ``tries``
    times), and its last value: the pages' CSP forbids ``wait_for_function``'s eval, and a
    chart applies what it is told at its next frame."""
    for _ in range(tries):
        value = page.evaluate(script)
        if until(value):
            break
        page.wait_for_timeout(100)
    return value
