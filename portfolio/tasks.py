"""Celery tasks of the portfolio app: thin adapters to services."""

from __future__ import annotations

from celery import shared_task

from portfolio import services


@shared_task(soft_time_limit=50, time_limit=60)
def snapshot_valuations() -> int:
    """Celery beat, every minute: store each portfolio's value for the performance page."""
    from streaming.tasks import value_pending

    value_pending()  # what ingest batches queued before this one left (streaming/tasks.py)
    return services.valuation_snapshots_take()
