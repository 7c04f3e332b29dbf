"""Celery tasks of the portfolio app: thin adapters to services."""

from __future__ import annotations

from celery import shared_task

from portfolio import services


# Acknowledged as it starts, not after (settings.CELERY_TASK_ACKS_LATE): it may run longer than
# the broker's visibility timeout, which would hand a late-acknowledged run to a second worker.
# A run a worker dies in is lost; the next minute's takes its place.
@shared_task(soft_time_limit=50, time_limit=60, acks_late=False)
def snapshot_valuations() -> int:
    """Celery beat, every minute: store each portfolio's value for the performance page."""
    from streaming.tasks import value_pending

    value_pending()  # what ingest batches queued before this one left (streaming/tasks.py)
    return services.valuation_snapshots_take()
