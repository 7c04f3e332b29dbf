"""A socket that stays open but goes silent must not keep saying "Live": the page pings a quiet
socket, and after two ping intervals without any frame it says "Stalled", dims the numbers,
counts down to its next attempt and says how old its data is; "Live" comes back only with a
fresh snapshot. The silence is real: daphne is frozen with SIGSTOP (its sockets stay open)."""

import itertools
import os
import re
import signal
import sys
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from portfolio import services
from tests.browser import log_in
from tests.conftest import PASSWORD, Process, free_port, stack_env

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PING_SECONDS = 2


@pytest.fixture
def daphne_with_fast_pings(transactional_db, redis_client, tmp_path):
    port = free_port()
    server = Process(
        "daphne",
        [
            *(sys.executable, "-m", "streaming.serve", "-b", "127.0.0.1", "-p", str(port)),
            "portfolio.asgi:application",
        ],
        stack_env(
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            LIVEFOLIO_PAGE_PING_SECONDS=str(PING_SECONDS),
        ),
        tmp_path,
    )
    server.wait_for_output("Listening on TCP address")
    try:
        yield f"http://127.0.0.1:{port}", server.proc.pid
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)  # a frozen server cannot stop
        server.stop()


def status_texts(page, seconds: float) -> list[str]:
    """The status pill's text every 250 ms for ``seconds``."""
    texts = []
    for _ in range(int(seconds * 4)):
        texts.append(page.locator("#status").inner_text())
        page.wait_for_timeout(250)
    return texts


def test_a_silent_socket_goes_stalled_counts_down_and_is_live_again_on_fresh_data(
    world, daphne_with_fast_pings, page
):
    base_url, pid = daphne_with_fast_pings
    services.quotes_store(
        updates=[services.QuoteUpdate(world["btc"].id, Decimal("500"), timezone.now(), "simulated")]
    )
    # Backoff delays at the top of their jittered range, so each countdown lasts whole seconds.
    page.add_init_script("Math.random = () => 0.999;")
    log_in(page, base_url, "alice", PASSWORD)
    status = page.locator("#status")
    expect(status).to_have_text("Live")
    total = page.locator('[data-field="total"]')
    expect(total).to_have_text("$1,000.00")
    assert (
        page.evaluate("getComputedStyle(document.querySelector('[data-field=total]')).opacity")
        == "1"
    )

    os.kill(pid, signal.SIGSTOP)
    try:
        # No frame and no pong for two intervals: stalled, within a few seconds of the second.
        expect(status).to_have_attribute(
            "data-state", "stalled", timeout=(3 * PING_SECONDS + 2) * 1000
        )
        expect(status).to_contain_text("updated")
        expect(page.locator("body")).to_have_class(re.compile(r"\bis-stalled\b"))
        opacity = page.evaluate(
            "getComputedStyle(document.querySelector('[data-field=total]')).opacity"
        )
        assert float(opacity) < 1  # the numbers are dimmed
        texts = status_texts(page, 10 * PING_SECONDS)
    finally:
        os.kill(pid, signal.SIGCONT)

    assert not any(t == "Live" for t in texts), texts
    # The countdown counts: some attempt's "in N s" is followed by "in N-1 s".
    counts = [int(m.group(1)) for t in texts if (m := re.search(r"in (\d+) s", t))]
    assert any(b == a - 1 for a, b in itertools.pairwise(counts)), texts
    # And the age of the data grows.
    ages = [int(m.group(1)) for t in texts if (m := re.search(r"updated (\d+) s ago", t))]
    assert ages and ages[-1] > ages[0] >= 2 * PING_SECONDS, texts

    # Fresh data (the snapshot of a new connection) makes the page live again.
    expect(status).to_have_text("Live", timeout=30_000)
    expect(page.locator("body")).not_to_have_class(re.compile(r"\bis-stalled\b"))
    expect(total).to_have_text("$1,000.00")
    assert page.console_errors == []
