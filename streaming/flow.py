"""Flow control for WebSocket connections: flood limit, per-user connection cap, conflation.

Small, protocol-agnostic pieces that any consumer can hold (the browser's ``/ws/portfolio/`` uses
them; the token API reuses them): a :class:`TokenBucket` per connection for what the client
sends, a :class:`UserConnections` cap shared by every server process through Redis, and a
:class:`Conflator` so a slow client gets the latest value per stream, never a growing backlog.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import redis
from django.conf import settings

from streaming import namespace

log = logging.getLogger(__name__)


class TokenBucket:
    """``rate`` frames per second on average, bursts up to ``burst``."""

    def __init__(self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.updated = clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait(self) -> float:
        """Seconds until :meth:`allow` would succeed (0 when it would now)."""
        now = self.clock()
        tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        return max(0.0, (1 - tokens) / self.rate)


class Conflator:
    """Sends at most ``1 / interval`` messages per key a second on average, always the latest.

    Each key has a token bucket (bursts of ``burst``): a message goes out at once while the key
    has a token; one that comes sooner waits, and later ones replace it while it waits, so what
    a connection can have queued is one message per key, however fast the producer or however
    slow the reader. The burst absorbs jitter: a stream at the allowed rate whose messages come
    a little early or late is never held back.
    """

    def __init__(
        self,
        *,
        interval: float,
        send: Callable[[Any], None],
        burst: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.interval = interval
        self.send = send
        self.burst = burst
        self.clock = clock
        self.buckets: dict[Hashable, TokenBucket] = {}
        self.pending: dict[Hashable, Any] = {}
        self.timers: dict[Hashable, asyncio.Task] = {}

    def _bucket(self, key: Hashable) -> TokenBucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(rate=1 / self.interval, burst=self.burst, clock=self.clock)
            self.buckets[key] = bucket
        return bucket

    def offer(self, key: Hashable, message: Any) -> bool:
        """Send ``message`` now or when ``key``'s turn comes; True when it replaced one that
        was waiting (which is then never sent)."""
        if key in self.pending:
            self.pending[key] = message  # a flush is already scheduled: it sends this one
            return True
        bucket = self._bucket(key)
        if bucket.allow():
            self.send(message)
            return False
        self.pending[key] = message
        self.timers[key] = asyncio.create_task(self._flush_later(key, bucket.wait()))
        return False

    async def _flush_later(self, key: Hashable, wait: float) -> None:
        await asyncio.sleep(wait)
        self.timers.pop(key, None)
        message = self.pending.pop(key, None)
        if message is not None:
            bucket = self._bucket(key)
            if not bucket.allow():  # the sleep ended a hair early: spend what there is
                bucket.tokens = 0.0
            self.send(message)

    def discard_pending(self) -> None:
        """Forget queued messages (a fresh snapshot supersedes them)."""
        self.pending.clear()
        for task in self.timers.values():
            task.cancel()
        self.timers.clear()


# Atomically, on Redis' own clock (servers with skewed clocks agree): drop expired leases,
# refuse when the user is full, else take or renew this connection's lease, and mark the user
# present when asked (presence marks a day old go: present() ignores them long before). KEYS[1]
# the user's lease set, KEYS[2..3] presence's (presence_keys()); ARGV: member, cap, lease
# seconds, user id ('' marks nobody). Returns 1 when the member holds a slot, 0 if full.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false
   and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
if ARGV[4] ~= '' then
  local seen = math.floor(now)
  redis.call('ZADD', KEYS[2], seen, ARGV[4])
  redis.call('SET', KEYS[3], seen, 'NX')
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', seen - 86400)
end
return 1
"""

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


@functools.cache
def redis_sync() -> Any:
    """The process's synchronous Redis client (redis-py pools its connections); None in the
    embedded default, which has no Redis. Celery tasks, health checks and thread-pool code."""
    if not settings.REDIS_URL:
        return None

    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def redis_client() -> Any:
    """One asyncio Redis client per event loop (daphne has one; each test has its own)."""
    import redis.asyncio

    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        # A blocking pool: with a thousand sockets renewing at once, a call waits its turn
        # for a connection rather than fail with "Too many connections" and leave its socket
        # unmarked and its cap slot unrenewed.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=50,
            timeout=10,
            socket_timeout=2,
            socket_connect_timeout=2,
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        _clients[loop] = client
    return client


class UserConnections:
    """Caps how many sockets one user holds open, across all server processes.

    Each open connection holds a lease in a Redis sorted set per user and scope, scored by when
    it expires on Redis' clock; the holder renews it well within ``lease`` seconds, so a
    connection that died without saying so (a killed server) gives its slot back when its lease
    runs out. When Redis is unreachable the cap fails open: refusing everyone would be worse.
    The embedded default (no Redis, one process) keeps the leases in memory. The pages' sockets
    and the API's each have one (their own limit and renewal period).
    """

    # scope -> user id -> connection id -> expiry (time.monotonic()), without Redis.
    _local: dict[str, dict[int, dict[str, float]]] = {}

    def __init__(
        self,
        *,
        scope: str,
        limit_setting: str,
        marks_presence: bool = False,
        lease: Callable[[], float] | None = None,
    ) -> None:
        self.scope = scope
        self.limit_setting = limit_setting
        # Sockets that show valuations mark their user present (see present() below).
        self.marks_presence = marks_presence
        self._lease = lease

    # The pages' sockets renew their lease every REFRESH_SECONDS (streaming.watch); a lease
    # not renewed for three periods belongs to a server that died (daphne exits on SIGTERM
    # without running the consumers' disconnect), so a restart locks nobody out longer.
    REFRESH_SECONDS = 10
    ttl = 3 * REFRESH_SECONDS

    @property
    def limit(self) -> int:
        return getattr(settings, self.limit_setting)

    def lease(self) -> float:
        """Seconds a lease lasts unless renewed."""
        return self._lease() if self._lease is not None else self.ttl

    def key(self, user_id: int) -> str:
        return f"{namespace.redis_prefix()}:conn:{self.scope}:user.{user_id}"

    async def acquire(self, user_id: int, connection_id: str) -> bool:
        """Take (or renew) one of the user's slots; False when they are all taken."""
        if not settings.REDIS_URL:
            now = time.monotonic()
            users = self._local.setdefault(self.scope, {})
            slots = {c: t for c, t in users.get(user_id, {}).items() if t > now}
            users[user_id] = slots
            if connection_id not in slots and len(slots) >= self.limit:
                return False
            slots[connection_id] = now + self.lease()
            return True
        try:
            allowed = await redis_client().eval(
                _ACQUIRE,
                3,
                self.key(user_id),
                *presence_keys(),
                connection_id,
                self.limit,
                self.lease(),
                str(user_id) if self.marks_presence else "",
            )
        except Exception as exc:
            log.warning("connection cap: Redis unavailable, allowing (%s)", exc)
            return True
        return bool(allowed)

    async def refresh(self, user_id: int, connection_id: str) -> None:
        """Renew the lease (call well within ``lease()`` seconds)."""
        await self.acquire(user_id, connection_id)

    async def release(self, user_id: int, connection_id: str) -> None:
        if not settings.REDIS_URL:
            self._local.get(self.scope, {}).get(user_id, {}).pop(connection_id, None)
            return
        try:
            await redis_client().zrem(self.key(user_id), connection_id)
        except Exception as exc:
            log.warning("connection cap: could not release %s (%s)", connection_id, exc)


# --- presence ----------------------------------------------------------------------------------
# Presence: which users have a live socket open, so a worker values only what someone watches.
#
# Every socket that can receive valuations holds a connection-cap entry in Redis and renews it
# while open (UserConnections: leases, one cap for the pages, one for the API). The script that
# does so (_ACQUIRE) also stamps the user in one sorted set, scored by Redis' own clock, and notes
# when tracking began. present() answers "which of these owners are watching?" for a Celery
# worker, in one round-trip.
#
# It never skips a connected user:
# - a socket marks its user *before* it reads its snapshot, and a worker asks *after* its prices
#   committed, so a tick the worker skipped for that user is already in the snapshot;
# - a mark outlives the longest renewal period several times over (presence_ttl()), and nothing
#   removes it early (a closing tab may not be the user's last socket);
# - when it cannot know (no Redis: the embedded default; Redis unreachable; tracking younger
#   than one presence_ttl(), as after a Redis restart that lost the marks) it answers ``None``:
#   value everyone.
# A user who left is valued for at most presence_ttl() seconds more.


def presence_keys() -> list[str]:
    """The presence set (user id -> last seen, Redis time) and the "tracking since" key."""
    prefix = namespace.redis_prefix()
    return [f"{prefix}:presence", f"{prefix}:presence:since"]


def presence_ttl() -> int:
    """Seconds a mark counts: four of the slowest renewal period, and at least a minute."""
    slowest = max(UserConnections.REFRESH_SECONDS, settings.LIVEFOLIO_API_HEARTBEAT_SECONDS)
    return max(60, 4 * slowest)


def present(user_ids: Iterable[int]) -> set[int] | None:
    """The users among ``user_ids`` with a socket open; ``None`` when that cannot be known."""
    client = redis_sync()
    users = sorted(set(user_ids))
    if client is None or not users:
        return None
    presence, since = presence_keys()
    try:
        pipe = client.pipeline(transaction=False)
        pipe.time()
        pipe.get(since)
        pipe.zmscore(presence, users)
        (now, _), started, scores = pipe.execute()
    except redis.RedisError as exc:
        log.warning("presence: Redis unavailable, valuing every portfolio (%s)", exc)
        return None
    window = presence_ttl()
    if started is None or now - int(started) < window:
        return None  # tracking began less than a ttl ago: some marks may not be back yet
    oldest = now - window
    return {user for user, seen in zip(users, scores, strict=True) if seen and seen >= oldest}
