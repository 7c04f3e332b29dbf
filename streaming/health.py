"""Health and metrics: ``/healthz`` (JSON, 200 or 503), ``/metrics`` (Prometheus, protected),
the Celery worker heartbeat, and the ingest numbers the worker leaves in Redis for scrapes.

Several server and worker processes share one Redis, so what a scrape of one daphne must show
about the whole instance (workers alive, ingest lag, task durations) lives in Redis; what is per
process (open sockets, frames sent) is an ordinary prometheus_client metric of that process.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.db.models import Max
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily

from streaming import namespace

log = logging.getLogger(__name__)

# Per server process.
WS_CONNECTIONS = Gauge(
    "livefolio_ws_connections", "Open WebSocket connections in this process", ["endpoint"]
)
WS_MESSAGES_SENT = Counter(
    "livefolio_ws_messages_sent_total", "Frames sent to WebSocket clients", ["type"]
)
WS_REJECTED = Counter(
    "livefolio_ws_rejected_total",
    "Client frames or connections refused (rate_limited, too_many_connections, ...)",
    ["reason"],
)


def _redis():
    """The process's synchronous Redis client."""
    from streaming.flow import redis_sync

    return redis_sync()


def key(*parts: str) -> str:
    """A Redis key of the health records (the feed runner counts workers' heartbeats)."""
    return ":".join([namespace.redis_prefix(), *parts])


# --- the worker side -----------------------------------------------------------------------


def worker_heartbeat_write(name: str) -> None:
    """Say "this worker is alive" for three heartbeat periods."""
    ttl = 3 * settings.LIVEFOLIO_HEARTBEAT_SECONDS
    _redis().set(key("worker", name), datetime.now(UTC).isoformat(), ex=ttl)


def start_worker_heartbeat(name: str) -> threading.Thread:
    """Write the heartbeat every LIVEFOLIO_HEARTBEAT_SECONDS from a daemon thread."""

    def beat() -> None:
        while True:
            try:
                worker_heartbeat_write(name)
            except Exception as exc:  # Redis down: keep trying, the check will say so
                log.warning("worker heartbeat: %s", exc)
            time.sleep(settings.LIVEFOLIO_HEARTBEAT_SECONDS)

    thread = threading.Thread(target=beat, name="livefolio-heartbeat", daemon=True)
    thread.start()
    return thread


def record_ingest(*, seconds: float, lag: float | None) -> None:
    """Count one ingest batch, its duration and its lag (tick received → stored)."""
    try:
        pipe = _redis().pipeline(transaction=False)
        pipe.hincrby(key("ingest"), "batches", 1)
        pipe.hincrbyfloat(key("ingest"), "seconds", seconds)
        if lag is not None:
            pipe.hset(key("ingest"), "lag", f"{lag:.6f}")
        pipe.execute()
    except Exception as exc:  # metrics never fail the ingest
        log.warning("ingest metrics: %s", exc)


# --- checks ----------------------------------------------------------------------------------


def check_database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"ok": True}


def check_redis() -> dict[str, Any]:
    if not settings.REDIS_URL:
        return {"ok": True, "mode": "embedded"}
    _redis().ping()
    return {"ok": True}


def worker_ages() -> dict[str, float]:
    """Seconds since each live worker's last heartbeat."""
    now = datetime.now(UTC)
    client = _redis()
    keys = list(client.scan_iter(match=key("worker", "*"), count=100))
    ages = {}
    for found, value in zip(keys, client.mget(keys) if keys else [], strict=True):
        if value is not None:
            name = found.decode().rsplit(":worker:", 1)[1]
            ages[name] = (now - datetime.fromisoformat(value.decode())).total_seconds()
    return ages


def check_workers() -> dict[str, Any]:
    if not settings.REDIS_URL:
        return {"ok": True, "mode": "embedded"}
    ages = worker_ages()
    return {"ok": bool(ages), "alive": {name: round(age, 1) for name, age in ages.items()}}


def feed_ages() -> dict[str, float | None]:
    """Per feed with active instruments: seconds since its newest price (None: no price yet)."""
    from portfolio.models import Instrument

    now = datetime.now(UTC)
    rows = (
        Instrument.objects.filter(active=True)
        .values("feed")
        .annotate(newest=Max("quote__exchange_ts"))
        .order_by("feed")
    )
    return {
        row["feed"]: (now - row["newest"]).total_seconds() if row["newest"] else None
        for row in rows
    }


def check_feeds() -> dict[str, Any]:
    """Per feed with active instruments: its process (alive while its heartbeat is at most three
    LIVEFOLIO_FEED_HEARTBEAT_SECONDS old), its connection state and its newest price's age.

    A feed fails when its process is down or never reported, or when its connection has been
    down for longer than LIVEFOLIO_STALE_SECONDS. A stale price from a live, connected feed is a
    quiet market, not a failure (it is still reported, and flagged on the pages)."""
    from portfolio.models import FeedStatus

    now = timezone.now()
    limit = settings.LIVEFOLIO_STALE_SECONDS
    statuses = {status.feed: status for status in FeedStatus.objects.all()}
    feeds = {}
    for feed, age in feed_ages().items():
        entry: dict[str, Any] = {
            "price_age": None if age is None else round(age, 1),
            "stale": age is None or age > limit,
        }
        status = statuses.get(feed)
        if status is None:
            entry |= {"process": "never reported", "state": None, "ok": False}
        else:
            alive = status.is_alive(now)
            quiet = status.last_message_age(now)
            connected = status.state == "connected" or (
                quiet is not None and quiet.total_seconds() <= limit
            )
            entry |= {
                "process": "alive" if alive else "down",
                "state": status.shown_state(now),
                "heartbeat_age": round((now - status.heartbeat_at).total_seconds(), 1),
                "ok": alive and connected,
            }
        feeds[feed] = entry
    return {"ok": all(f["ok"] for f in feeds.values()), "feeds": feeds}


CHECKS = {
    "database": check_database,
    "redis": check_redis,
    "workers": check_workers,
    "feeds": check_feeds,
}


def run_checks(names: list[str]) -> dict[str, dict[str, Any]]:
    results = {}
    for name in names:
        try:
            results[name] = CHECKS[name]()
        except Exception as exc:
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return results


@login_not_required
@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when every check passes, else 503; ``?check=database&check=redis`` runs only those
    (e.g. for a load balancer that should not drop the server when an exchange is down)."""
    names = request.GET.getlist("check") or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        known = ", ".join(CHECKS)
        return JsonResponse(
            {"error": f"check: unknown {', '.join(unknown)}; known: {known}"}, status=400
        )
    results = run_checks(names)
    ok = all(r["ok"] for r in results.values())
    return JsonResponse(
        {"status": "ok" if ok else "fail", "checks": results}, status=200 if ok else 503
    )


# --- metrics ---------------------------------------------------------------------------------


class InstanceCollector:
    """Numbers about the whole instance, read at scrape time from Redis and the database."""

    def collect(self):
        workers = GaugeMetricFamily(
            "livefolio_worker_heartbeat_age_seconds",
            "Seconds since each Celery worker's heartbeat",
            labels=["worker"],
        )
        feeds = GaugeMetricFamily(
            "livefolio_feed_price_age_seconds",
            "Seconds since the newest price of each feed (-1: none yet)",
            labels=["feed"],
        )
        stale = GaugeMetricFamily(
            "livefolio_feed_stale", "1 when a feed's newest price is stale", labels=["feed"]
        )
        processes = GaugeMetricFamily(
            "livefolio_feed_process_alive",
            "1 while a feed process writes its heartbeat, 0 after three missed ones",
            labels=["feed"],
        )
        batches = CounterMetricFamily("livefolio_ingest_batches", "Ingest batches stored")
        seconds = CounterMetricFamily(
            "livefolio_ingest_task_seconds", "Total time spent in ingest tasks"
        )
        lag = GaugeMetricFamily(
            "livefolio_ingest_lag_seconds", "Tick received by the feed → stored, last batch"
        )
        try:
            for name, age in worker_ages().items():
                workers.add_metric([name], age)
            ingest = {k.decode(): float(v) for k, v in _redis().hgetall(key("ingest")).items()}
            batches.add_metric([], ingest.get("batches", 0))
            seconds.add_metric([], ingest.get("seconds", 0))
            lag.add_metric([], ingest.get("lag", 0))
        except Exception as exc:
            log.warning("metrics: Redis unavailable (%s)", exc)
        try:
            for feed, age in feed_ages().items():
                feeds.add_metric([feed], -1 if age is None else age)
                stale.add_metric([feed], int(age is None or age > settings.LIVEFOLIO_STALE_SECONDS))
            from portfolio.models import FeedStatus

            now = timezone.now()
            for status in FeedStatus.objects.all():
                processes.add_metric([status.feed], int(status.is_alive(now)))
        except Exception as exc:
            log.warning("metrics: database unavailable (%s)", exc)
        yield from (workers, feeds, stale, processes, batches, seconds, lag)


if settings.REDIS_URL:
    REGISTRY.register(InstanceCollector())


def _metrics_allowed(request: HttpRequest) -> bool:
    header = request.headers.get("Authorization", "")
    if settings.METRICS_TOKEN and header.startswith("Bearer "):
        return hmac.compare_digest(header[7:].encode(), settings.METRICS_TOKEN.encode())
    return request.user.is_authenticated and request.user.is_staff


@login_not_required
@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format; needs ``Authorization: Bearer $LIVEFOLIO_METRICS_TOKEN`` or a
    staff session."""
    if not _metrics_allowed(request):
        response = HttpResponse("metrics: send Authorization: Bearer <token>\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        response["Content-Type"] = "text/plain"
        return response
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
