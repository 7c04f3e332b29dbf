"""Celery tasks of the portfolio app: thin adapters to services."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from portfolio import exchange_candles, price_history
from portfolio.models import Instrument


# The tasks here may run longer than the broker's visibility timeout: acknowledged as they start
# (settings.CELERY_TASK_ACKS_LATE would hand a late-acknowledged run to a second worker). Each is
# idempotent (a day's price is upserted by its source's rank), so a run lost with its worker is
# simply done again by the next schedule, and one delivered twice changes nothing.
@shared_task(soft_time_limit=240, time_limit=300, acks_late=False)
def roll_up_daily_prices() -> int:
    """Celery beat, hourly: yesterday's and today's 1-minute bars into daily prices (UTC)."""
    today = timezone.now().date()
    return price_history.daily_prices_from_bars(since=today - timedelta(days=1), until=today)


# Days a scheduled backfill asks the exchanges for (finished UTC days up to yesterday).
BACKFILL_DAYS = 7


@shared_task(soft_time_limit=50, time_limit=60, acks_late=False)
def backfill_daily_prices() -> int:
    """Celery beat: one backfill task per active instrument streamed from an exchange."""
    instruments = Instrument.objects.filter(
        active=True, feed__in=list(exchange_candles.READERS)
    ).values_list("id", flat=True)
    for instrument_id in instruments:
        backfill_instrument_prices.delay(instrument_id, BACKFILL_DAYS)
    return len(instruments)


@shared_task(
    autoretry_for=(exchange_candles.BackfillError,),
    retry_backoff=30,
    retry_backoff_max=1800,
    retry_jitter=True,
    max_retries=5,
    soft_time_limit=120,
    time_limit=150,
    acks_late=False,
)
def backfill_instrument_prices(instrument_id: int, days: int) -> int:
    """One instrument's last ``days`` finished days from its exchange's REST candles."""
    instrument = Instrument.objects.filter(pk=instrument_id).first()
    if instrument is None or instrument.feed not in exchange_candles.READERS:
        return 0
    since = timezone.now().date() - timedelta(days=days)
    stored = exchange_candles.backfill(instrument=instrument, since=since)
    return stored.created + stored.replaced
