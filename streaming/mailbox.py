"""The ingest mailbox: how ticks get from the feed processes to a Celery worker, and all the flow
control on that path (docs/architecture.md has its picture).

A feed process posts each flush in one Redis transaction: every instrument's newest tick into a
hash (one field per instrument, a newer tick replacing an older one) and ``SET armed NX``. Only
the post that raised the flag sends the ``ingest_quotes`` task, so at most one waits or runs.
The task takes the whole hash, stores, values and publishes, then hands the mailbox on
(:func:`done`): it deletes the fields it stored (unless a newer tick replaced one meanwhile) and,
in the same script, lowers the flag when the hash is empty or keeps it and sends the next task
when ticks came while it worked. Both steps being atomic, a tick is never stranded: a post
before ``done`` is in the hash ``done`` looks at; a post after finds the flag down and sends.

A busy worker simply finds more instruments in the hash: backpressure without notices, and a
tick under light load is one task away from its valuation. The flag expires after the broker's
visibility timeout: a worker that died mid-task (its task is then handed out again) or a task
lost on the way holds ingest up for no longer than that. Without Redis (the embedded default)
there is no mailbox: the feed runs the task on its ticks in process.
"""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

from streaming import flow, namespace

# The task that empties the mailbox (streaming/tasks.py), sent by name: tasks.py uses this module.
TASK = "streaming.tasks.ingest_quotes"

# KEYS: the ticks hash, the flag. ARGV: the flag's lifetime (s), then field, tick pairs taken.
# Returns 1 when ticks came meanwhile and the flag stays raised for a next task to send.
_DONE = """
for i = 2, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
if redis.call('HLEN', KEYS[1]) > 0 then
  redis.call('SET', KEYS[2], 1, 'EX', ARGV[1])
  return 1
end
redis.call('DEL', KEYS[2])
return 0
"""


def keys() -> tuple[str, str]:
    """The ticks hash (instrument id -> its newest tick not yet stored, JSON) and the flag
    (set while an ingest task is queued or running)."""
    prefix = namespace.redis_prefix()
    return f"{prefix}:ingest:ticks", f"{prefix}:ingest:armed"


def flag_seconds() -> int:
    """How long a raised flag lasts unless lowered: the broker's visibility timeout, after
    which a dead worker's task is handed out again."""
    return settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]


async def post(batch: list[dict[str, Any]]) -> None:
    """Put a feed's ticks (``ingest_quotes`` items, at most one per instrument) in the mailbox,
    and send the task when none is pending. Raises when Redis or the broker fails (the feed
    runner keeps the ticks and tries again)."""
    ticks, armed = keys()
    pipe = flow.redis_client().pipeline(transaction=True)
    pipe.hset(ticks, mapping={str(t["instrument"]): json.dumps(t) for t in batch})
    pipe.set(armed, 1, nx=True, ex=flag_seconds())
    _, raised = await pipe.execute()
    if raised:
        try:
            await sync_to_async(send)()
        except Exception:
            await flow.redis_client().delete(armed)  # the next post tries again
            raise


def send() -> None:
    """Send the ingest task (its flag raised by the caller)."""
    # Through Livefolio's Celery app, loaded here whoever started this process (the package
    # does not load it; without it Celery would fall back to AMQP).
    from portfolio.celery import app

    app.send_task(TASK)


def take() -> dict[bytes, bytes]:
    """The mailbox's ticks: instrument id -> the tick's JSON (the task's first step)."""
    return flow.redis_sync().hgetall(keys()[0])


def done(taken: dict[bytes, bytes]) -> None:
    """Forget the ticks ``taken`` (stored), then lower the flag, or send the next task when
    ticks came meanwhile (the task's last step)."""
    pairs = [part for field_tick in taken.items() for part in field_tick]
    if flow.redis_sync().eval(_DONE, 2, *keys(), flag_seconds(), *pairs):
        try:
            send()
        except Exception:
            flow.redis_sync().delete(keys()[1])  # the next post sends it
            raise


def hold() -> None:
    """Keep the flag raised for another full lifetime: the task failed on the database and
    Celery tries it again within that (its retry backoff is shorter than the broker's visibility
    timeout), so a post meanwhile sends no second task however long the database is down."""
    flow.redis_sync().expire(keys()[1], flag_seconds())


def ticks_of(taken: dict[bytes, bytes]) -> list[dict[str, Any]]:
    """The ``ingest_quotes`` items of what :func:`take` returned."""
    return [json.loads(tick) for tick in taken.values()]
