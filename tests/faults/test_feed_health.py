"""A real feed process stalled, then killed: its health reads "down" by its heartbeat, in the
admin, on /status/feeds/ and in /healthz, while its last price is still fresh."""

import asyncio
import os
import re
import signal
import sys
import urllib.error
import urllib.request

from tests.conftest import password_hash
from tests.faults.conftest import wait_until
from tests.faults.live import log_in

HEARTBEAT = "1"  # LIVEFOLIO_FEED_HEARTBEAT_SECONDS: "down" after three missed heartbeats


def healthz(base: str) -> int:
    try:
        with urllib.request.urlopen(f"{base}/healthz?check=feeds", timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def page(base: str, path: str, cookie: str) -> str:
    request = urllib.request.Request(f"{base}{path}", headers={"Cookie": cookie})
    with urllib.request.urlopen(request, timeout=20) as response:
        return response.read().decode()


def status_page_state(base: str, cookie: str) -> str:
    html = page(base, "/status/feeds/", cookie)
    row = re.search(r'<tr data-feed="simulated">(.*?)</tr>', html, re.S)
    return re.findall(r"<td>(.*?)</td>", row.group(1))[0] if row else ""


def admin_state(base: str, cookie: str) -> str:
    html = page(base, "/admin/portfolio/feedstatus/", cookie)
    return re.findall(r'<td class="field-current_state">(.*?)</td>', html)[0]


async def test_a_stalled_then_killed_feed_process_reads_down_by_its_heartbeat(stack):
    stack.sql(
        "INSERT INTO auth_user (username, password, is_superuser, is_staff, is_active, "
        "first_name, last_name, email, date_joined) "
        "VALUES ('operator', %s, true, true, true, '', '', '', now()) "
        "ON CONFLICT (username) DO NOTHING",
        password_hash(),
    )
    # Prices stay fresh for an hour: only the process heartbeat can say the feed is dead.
    base = await asyncio.to_thread(
        stack.daphne, LIVEFOLIO_STALE_SECONDS="3600", LIVEFOLIO_FEED_HEARTBEAT_SECONDS=HEARTBEAT
    )
    await asyncio.to_thread(stack.worker)
    # No supervisor: nothing starts a new process that would report "connected" again.
    feed = stack.spawn(
        "runfeed",
        [sys.executable, "manage.py", "runfeed", "simulated", "--rate", "20"],
        LIVEFOLIO_FEED_HEARTBEAT_SECONDS=HEARTBEAT,
    )
    cookie = await asyncio.to_thread(log_in, base, "operator")
    await asyncio.to_thread(
        wait_until, lambda: healthz(base) == 200, timeout=60, what="a healthy feed"
    )
    assert await asyncio.to_thread(status_page_state, base, cookie) == "connected"
    assert await asyncio.to_thread(admin_state, base, cookie) == "connected"
    await asyncio.to_thread(
        wait_until,
        lambda: stack.sql("SELECT count(*) FROM portfolio_quote")[0][0] > 0,
        timeout=60,
        what="the feed's first prices stored",
    )
    pid = feed.proc.pid

    # Stalled: the process is there but does nothing (SIGSTOP), so it writes no heartbeat.
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.to_thread(
            wait_until, lambda: healthz(base) == 503, timeout=30, what="/healthz to fail"
        )
        assert await asyncio.to_thread(status_page_state, base, cookie) == "down"
    finally:
        os.kill(pid, signal.SIGCONT)
    await asyncio.to_thread(
        wait_until, lambda: healthz(base) == 200, timeout=30, what="the feed alive again"
    )
    assert await asyncio.to_thread(status_page_state, base, cookie) == "connected"

    # Killed: it never writes "stopped"; its last word was "connected", and the heartbeat
    # that stops is what turns it into "down".
    os.kill(pid, signal.SIGKILL)
    assert await asyncio.to_thread(feed.proc.wait, 10) == -signal.SIGKILL
    await asyncio.to_thread(
        wait_until,
        lambda: (
            admin_state(base, cookie) == "down"
            and status_page_state(base, cookie) == "down"
            and healthz(base) == 503
        ),
        timeout=30,
        what='"down" in the admin, on /status/feeds/ and in /healthz',
    )
    assert stack.sql("SELECT state FROM portfolio_feedstatus WHERE feed = 'simulated'") == [
        ("connected",)
    ]
    newest, now = stack.sql("SELECT max(exchange_ts), now() FROM portfolio_quote")[0]
    assert (now - newest).total_seconds() < 3600  # by price age alone it would look alive
