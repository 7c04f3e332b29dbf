"""Celery beat's snapshot task runs in a real worker and is what the beat schedule names."""

import time

import pytest
from django.conf import settings

from portfolio.celery import app
from portfolio.models import ValuationSnapshot
from streaming.tasks import snapshot_valuations

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]


def test_beat_schedule_names_the_snapshot_task_every_minute():
    entry = settings.CELERY_BEAT_SCHEDULE["valuation-snapshots"]
    app.loader.import_default_modules()
    assert app.tasks[entry["task"]].name == snapshot_valuations.name  # registered under it
    assert entry["schedule"] == 60.0


def test_the_worker_stores_one_snapshot_per_portfolio(world, celery_worker):
    snapshot_valuations.delay()
    deadline = time.monotonic() + 30
    while ValuationSnapshot.objects.count() < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    snapshots = ValuationSnapshot.objects.order_by("portfolio_id")
    assert [s.portfolio_id for s in snapshots] == sorted(p.id for p in world["portfolios"].values())
    assert all(s.net_flows == 1000 for s in snapshots)  # each deposited 1000
