"""Feed health tells the truth: a feed process that stops writing its heartbeat reads "down"
after three heartbeat periods, in the admin, on /status/feeds/ and in /healthz, whatever the age
of its prices; a live feed on a quiet market is healthy.

(The same with a real feed process killed and stopped: tests/faults/test_feed_health.py.)"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from portfolio.models import FeedStatus
from streaming.feeds.base import FeedStats

pytestmark = pytest.mark.django_db


def report(feed: str = "simulated", state: str = "connected", **stats) -> FeedStatus:
    """What a feed process writes on each heartbeat (streaming/runner.py)."""
    from portfolio.services import feed_status_record

    status = FeedStats(feed=feed)
    status.set_state(state)
    status.record_message("BTC-USD")
    return feed_status_record(stats=status.as_dict() | stats)


def age_heartbeat(feed: str, seconds: float) -> None:
    FeedStatus.objects.filter(feed=feed).update(
        heartbeat_at=timezone.now() - timedelta(seconds=seconds)
    )


def shown_state(html: str, feed: str) -> str:
    row = re.search(rf'<tr data-feed="{feed}">(.*?)</tr>', html, re.S).group(1)
    return re.findall(r"<td>(.*?)</td>", row)[0]


def test_a_process_is_down_after_three_missed_heartbeats_not_before(settings):
    settings.LIVEFOLIO_FEED_HEARTBEAT_SECONDS = 2
    status = report()
    beat = status.heartbeat_at
    assert status.shown_state(beat + timedelta(seconds=6)) == "connected"
    assert status.is_alive(beat + timedelta(seconds=6))
    assert status.shown_state(beat + timedelta(seconds=6.5)) == "down"
    assert not status.is_alive(beat + timedelta(seconds=6.5))


def test_a_dead_feed_reads_down_in_the_admin_and_on_the_status_page(world, admin_client, settings):
    settings.LIVEFOLIO_FEED_HEARTBEAT_SECONDS = 2
    report()
    page = admin_client.get(reverse("feed-status")).content.decode()
    assert shown_state(page, "simulated") == "connected"
    age_heartbeat("simulated", 7)  # more than three heartbeats without a word
    page = admin_client.get(reverse("feed-status")).content.decode()
    assert shown_state(page, "simulated") == "down"
    changelist = admin_client.get(reverse("admin:portfolio_feedstatus_changelist"))
    cells = re.findall(r'<td class="field-current_state">(.*?)</td>', changelist.content.decode())
    assert cells == ["down"]


def test_healthz_fails_on_a_dead_feed_process_while_its_price_is_still_fresh(world, settings):
    settings.LIVEFOLIO_FEED_HEARTBEAT_SECONDS = 2
    settings.LIVEFOLIO_STALE_SECONDS = 3600
    from streaming.tasks import ingest_quotes

    ingest_quotes(
        [
            {"instrument": i.id, "price": "10", "ts": timezone.now().isoformat()}
            | {"source": "simulated"}
            for i in (world["btc"], world["eth"])
        ]
    )
    report()
    ok = Client().get("/healthz?check=feeds")
    assert ok.status_code == 200, ok.json()
    age_heartbeat("simulated", 7)
    down = Client().get("/healthz?check=feeds")
    assert down.status_code == 503
    simulated = down.json()["checks"]["feeds"]["feeds"]["simulated"]
    assert simulated["process"] == "down"
    assert simulated["stale"] is False  # the price is fresh: the heartbeat is what says dead


def test_healthz_fails_on_a_feed_with_active_instruments_that_never_reported(world):
    response = Client().get("/healthz?check=feeds")
    assert response.status_code == 503
    assert response.json()["checks"]["feeds"]["feeds"]["simulated"]["process"] == "never reported"


def test_a_live_connected_feed_on_a_quiet_market_is_healthy(world, settings):
    # No price for far longer than LIVEFOLIO_STALE_SECONDS, but the process beats and its
    # connection is up: a quiet market, not a dead feed.
    settings.LIVEFOLIO_STALE_SECONDS = 1
    report()
    FeedStatus.objects.filter(feed="simulated").update(
        last_message_at=timezone.now() - timedelta(hours=1)
    )
    response = Client().get("/healthz?check=feeds")
    assert response.status_code == 200, response.json()
    simulated = response.json()["checks"]["feeds"]["feeds"]["simulated"]
    assert (simulated["process"], simulated["state"], simulated["stale"]) == (
        "alive",
        "connected",
        True,
    )


def test_a_live_process_whose_connection_stays_down_fails_healthz(world, settings):
    settings.LIVEFOLIO_STALE_SECONDS = 60
    report(state="backoff")
    FeedStatus.objects.filter(feed="simulated").update(
        last_message_at=timezone.now() - timedelta(seconds=61)
    )
    response = Client().get("/healthz?check=feeds")
    assert response.status_code == 503
    assert response.json()["checks"]["feeds"]["feeds"]["simulated"]["state"] == "backoff"
    report(state="backoff")  # a reconnect a moment after the last message: not yet a failure
    assert Client().get("/healthz?check=feeds").status_code == 200


def test_metrics_say_whether_each_feed_process_is_alive(world, admin_client, settings):
    settings.LIVEFOLIO_FEED_HEARTBEAT_SECONDS = 2
    report()
    text = admin_client.get("/metrics").content.decode()
    assert 'livefolio_feed_process_alive{feed="simulated"} 1.0' in text
    age_heartbeat("simulated", 7)
    text = admin_client.get("/metrics").content.decode()
    assert 'livefolio_feed_process_alive{feed="simulated"} 0.0' in text
