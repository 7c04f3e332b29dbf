"""daphne restarted under a page with many live connections: they come back spread out in time
(exponential backoff, full jitter: no thundering herd) and resync to the current numbers."""

import statistics
import time
from datetime import UTC, datetime

import pytest
from playwright.sync_api import expect

from tests.browser import log_in
from tests.conftest import PASSWORD, free_port

pytestmark = pytest.mark.browser

EXTRA_CONNECTIONS = 12

OPEN_CONNECTIONS = """async (count) => {
    const { LiveConnection } = await import("/static/js/live.js");
    window.trace = [];
    window.extra = [];
    for (let i = 0; i < count; i++) {
        const trace = [];
        window.trace.push(trace);
        const c = new LiveConnection({
            path: "/ws/portfolio/",
            onMessage: () => {},
            onStatus: ({ state, retryAt }) =>
                trace.push({ state, delay: retryAt ? retryAt - Date.now() : null }),
        });
        window.extra.push(c);
        c.connect();
    }
}"""


def tick(stack, price: str) -> None:
    stack.send_batch(
        [
            {
                "instrument": stack.world["btc"],
                "price": price,
                "ts": datetime.now(UTC).isoformat(),
                "source": "simulated",
            }
        ]
    )


def live_count(page) -> int:
    return page.evaluate("window.trace.filter(t => t.at(-1)?.state === 'live').length")


def test_daphne_restart_clients_reconnect_with_jittered_backoff_and_resync(stack, page):
    port = free_port()
    # daphne exits on SIGTERM without running disconnect handlers, so the old sockets' cap
    # entries linger up to 30 s (UserConnections.ttl); room for both keeps this test about
    # reconnect timing. The cap itself is tested in tests/test_websocket_hostile.py.
    cap = {"LIVEFOLIO_WS_MAX_PER_USER": "40"}
    base = stack.daphne(port=port, **cap)
    stack.worker()
    tick(stack, "100")
    log_in(page, base, "alice", PASSWORD)
    total = page.locator('[data-field="total"]')
    expect(total).to_have_text("$200.00")
    page.evaluate(OPEN_CONNECTIONS, EXTRA_CONNECTIONS)
    deadline = time.monotonic() + 30
    while live_count(page) < EXTRA_CONNECTIONS and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live_count(page) == EXTRA_CONNECTIONS

    stack.processes[0].stop()  # daphne goes away
    tick(stack, "110")  # nobody hears this one live
    time.sleep(5)  # a few reconnect attempts fail meanwhile
    traces = page.evaluate("window.trace")
    attempts = [
        [s["delay"] for s in t if s["state"] == "reconnecting" and s["delay"]] for t in traces
    ]
    first = [a[0] for a in attempts]
    # Attempt n waits a uniform time up to 0.5 s x 2^(n-1) (at least 0.25 s): spread, growing.
    assert all(240 <= d <= 510 for d in first), first
    assert len({round(d) for d in first}) >= EXTRA_CONNECTIONS - 2, (
        f"reconnects in lockstep: {first}"
    )
    assert statistics.pstdev(first) > 20
    for delays in attempts:
        for n, delay in enumerate(delays, start=1):
            assert delay <= 500 * 2 ** (n - 1) + 10
    assert max(d for a in attempts for d in a[2:]) > 500, "backoff never grew"

    stack.daphne(port=port, name="daphne-restarted", **cap)
    expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=40_000)
    expect(total).to_have_text("$220.00")  # the fresh snapshot has what changed meanwhile
    deadline = time.monotonic() + 40
    while live_count(page) < EXTRA_CONNECTIONS and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live_count(page) == EXTRA_CONNECTIONS
    assert all("WebSocket" in e or "ERR_CONNECTION_REFUSED" in e for e in page.console_errors)
