"""Celery tasks of the portfolio app: thin adapters to services."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from portfolio import price_history, services


@shared_task(soft_time_limit=50, time_limit=60)
def snapshot_valuations() -> int:
    """Celery beat, every minute: store each portfolio's value for the performance page."""
    from streaming.tasks import value_pending

    value_pending()  # what ingest batches queued before this one left (streaming/tasks.py)
    return services.valuation_snapshots_take()


@shared_task(soft_time_limit=240, time_limit=300)
def roll_up_daily_prices() -> int:
    """Celery beat, hourly: yesterday's and today's 1-minute bars into daily prices (UTC)."""
    today = timezone.now().date()
    return price_history.daily_prices_from_bars(since=today - timedelta(days=1), until=today)
