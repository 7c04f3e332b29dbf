"""``celery -A portfolio worker`` with a bench-only hook that records every ingest batch.

The stack itself keeps only running totals and the last batch's lag (streaming/health.py). To
report batches/s, quotes stored/s and the lag's p50/p99, this script starts the very same worker
(``app.worker_main``, same flags) and connects Celery's ``task_prerun``/``task_postrun`` signals:
after each ``ingest_quotes`` it pushes one JSON record to the Redis list ``BATCHES_KEY`` (in the
bench's own Redis db):

- ``t``: wall time the task finished; ``items``: ticks in the batch (one per instrument: the
  ingest mailbox conflates them; a task sent without a batch takes the mailbox, which this hook
  reads just before the task does); ``changed``: instruments the task stored (its return value);
- ``run_s``: the task's own run time; ``lag_s``: the oldest tick's ``received`` (the feed
  runner's flush) -> task finished, i.e. broker wait + run: the same lag ``record_ingest`` keeps;
- ``worker``: this process's id (with several workers, each one's idle gaps are its own).

One RPUSH per task, a few microseconds beside a task that values portfolios.

    python bench/worker.py worker --pool=solo ...     (the arguments of ``celery worker``)
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BATCHES_KEY = "bench:ingest:batches"
INGEST_TASK = "streaming.tasks.ingest_quotes"


def batch_record(batch: Any, retval: Any, run_s: float | None, state: str | None) -> dict:
    items = batch if isinstance(batch, list) else []
    received = [i["received"] for i in items if isinstance(i, dict) and i.get("received")]
    lag = None
    if received:
        oldest = min(datetime.fromisoformat(r) for r in received)
        lag = (datetime.now(UTC) - oldest).total_seconds()
    return {
        "t": time.time(),
        "items": len(items),
        "changed": retval if isinstance(retval, int) else None,
        "run_s": run_s,
        "lag_s": lag,
        "state": state,
        "worker": os.getpid(),
    }


def main() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")
    import redis
    from celery.signals import task_postrun, task_prerun

    from portfolio.celery import app

    client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5)
    started: dict[str, float] = {}
    peeked: dict[str, list] = {}

    @task_prerun.connect(weak=False)
    def before(task_id=None, task=None, args=None, **_: Any) -> None:
        started[task_id] = time.monotonic()
        if task is not None and task.name == INGEST_TASK and not args:
            from streaming import mailbox

            peeked[task_id] = mailbox.ticks_of(mailbox.take())

    @task_postrun.connect(weak=False)
    def after(task_id=None, task=None, args=None, retval=None, state=None, **_: Any) -> None:
        t0 = started.pop(task_id, None)
        batch = peeked.pop(task_id, None)
        if task is None or task.name != INGEST_TASK:
            return
        run_s = time.monotonic() - t0 if t0 is not None else None
        record = batch_record(args[0] if args else batch, retval, run_s, state)
        try:
            client.rpush(BATCHES_KEY, json.dumps(record))
        except redis.RedisError:
            pass  # the bench's numbers never fail a task

    app.worker_main(sys.argv[1:])


if __name__ == "__main__":
    main()
