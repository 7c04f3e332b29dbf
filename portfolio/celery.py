"""The Celery application. On the embedded default tasks run in process (eager)."""

import gc
import os

from celery import Celery, states
from celery.signals import task_postrun, task_prerun, worker_init, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")

app = Celery("livefolio")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _claim_redis_namespace(**kwargs) -> None:
    """The worker's start-up (before its pool forks): refuse an ambiguous Redis namespace,
    announce ours (streaming/namespace.py). SystemExit, because Celery logs and ignores a
    signal handler's ordinary exceptions."""
    from django.core.exceptions import ImproperlyConfigured

    from streaming import namespace

    try:
        namespace.claim()
    except ImproperlyConfigured as exc:
        raise SystemExit(f"livefolio: {exc}") from exc


@worker_ready.connect
def _start_heartbeat(sender, **kwargs) -> None:
    """Every worker says it is alive in Redis; /healthz and /metrics read it."""
    from streaming import health

    health.start_worker_heartbeat(f"{sender.hostname}/{os.getpid()}")


@worker_ready.connect
def _freeze_start_up(**kwargs) -> None:
    """What start-up loaded (Django, Celery, the tasks) lives as long as the worker: the cyclic
    collector need not walk it in every full collection, a pause inside a pass that grows with
    the books cached. Forked pool children inherit it frozen."""
    gc.freeze()


@task_prerun.connect
def _connections_before_task(sender=None, **kwargs) -> None:
    """Django's request rules for a task's database connections (kept up to CONN_MAX_AGE,
    checked before reuse, dropped after an error), in place of Celery's close-every-time
    (settings.CELERY_DB_REUSE_MAX). Not for eager tasks: they run inside the caller's request."""
    if not getattr(sender.request, "is_eager", False):
        from django.db import close_old_connections

        close_old_connections()


@task_postrun.connect
def _connections_after_task(sender=None, state=None, **kwargs) -> None:
    """After a task that did not succeed, close every connection: a task interrupted inside a
    query (a soft time limit, a retry) can leave one that Django still takes for usable
    (celery/celery#9824)."""
    if getattr(sender.request, "is_eager", False):
        return
    from django.db import close_old_connections, connections

    if state == states.SUCCESS:
        close_old_connections()
    else:
        connections.close_all()
