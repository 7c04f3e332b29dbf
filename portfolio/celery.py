"""The Celery application. On the embedded default tasks run in process (eager)."""

import gc
import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")

app = Celery("livefolio")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def _start_heartbeat(sender, **kwargs) -> None:
    """Every worker says it is alive in Redis; /healthz and /metrics read it."""
    from portfolio import health

    health.start_worker_heartbeat(f"{sender.hostname}/{os.getpid()}")


@worker_ready.connect
def _freeze_start_up(**kwargs) -> None:
    """What start-up loaded (Django, Celery, the tasks) lives as long as the worker: the cyclic
    collector need not walk it in every full collection (~70 ms each with books cached for
    1,000 portfolios; docs/performance.md). Forked pool children inherit it frozen."""
    gc.freeze()
