"""Presence: which users have a live socket open, so a worker values only what someone watches.

Every socket that can receive valuations holds a connection-cap entry in Redis and renews it
while open (``flow.UserConnections``: leases, one cap for the pages, one for the API). The scripts
that do so also run :data:`MARK_LUA`: it stamps the user in one sorted set, scored by Redis' own
clock, and notes when tracking began. :func:`present` answers "which of these owners are
watching?" for a Celery worker, in one round-trip.

It never skips a connected user:
- a socket marks its user *before* it reads its snapshot, and a worker asks *after* its prices
  committed, so a tick the worker skipped for that user is already in the snapshot;
- a mark outlives the longest renewal period several times over (:func:`ttl`), and nothing
  removes it early (a closing tab may not be the user's last socket);
- when it cannot know (no Redis: the embedded default; Redis unreachable; tracking younger
  than one ``ttl``, as after a Redis restart that lost the marks) it answers ``None``:
  value everyone.
A user who left is valued for at most ``ttl`` seconds more.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis
from django.conf import settings

from streaming import namespace

log = logging.getLogger(__name__)

# Appended to a cap script just before it reports success. Its caller passes the presence set
# as KEYS[2], the "tracking since" key as KEYS[3] and the user id as the last ARGV. Marks a
# day old go (present() ignores them long before) so the set holds recent users only.
MARK_LUA = """
local seen = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[2], seen, ARGV[#ARGV])
redis.call('SET', KEYS[3], seen, 'NX')
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', seen - 86400)
"""


def keys() -> list[str]:
    """KEYS[2] and KEYS[3] of a script that runs :data:`MARK_LUA`."""
    prefix = namespace.redis_prefix()
    return [f"{prefix}:presence", f"{prefix}:presence:since"]


def ttl() -> int:
    """Seconds a mark counts: four of the slowest renewal period, and at least a minute."""
    from streaming.flow import UserConnections

    slowest = max(UserConnections.REFRESH_SECONDS, settings.LIVEFOLIO_API_HEARTBEAT_SECONDS)
    return max(60, 4 * slowest)


def _client():
    from streaming.flow import redis_sync

    return redis_sync()


def present(user_ids: Iterable[int]) -> set[int] | None:
    """The users among ``user_ids`` with a socket open; ``None`` when that cannot be known."""
    client = _client()
    users = sorted(set(user_ids))
    if client is None or not users:
        return None
    presence, since = keys()
    try:
        pipe = client.pipeline(transaction=False)
        pipe.time()
        pipe.get(since)
        pipe.zmscore(presence, users)
        (now, _), started, scores = pipe.execute()
    except redis.RedisError as exc:
        log.warning("presence: Redis unavailable, valuing every portfolio (%s)", exc)
        return None
    window = ttl()
    if started is None or now - int(started) < window:
        return None  # tracking began less than a ttl ago: some marks may not be back yet
    oldest = now - window
    return {user for user, seen in zip(users, scores, strict=True) if seen and seen >= oldest}
