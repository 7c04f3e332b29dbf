"""Limits of the WebSocket API: a request rate per connection (token bucket) and a cap on each
user's connections across every server process (leases in Redis that expire, so a crashed server
gives its slots back)."""

from __future__ import annotations

import threading
import time

from django.conf import settings

from streaming import flow, presence

# KEYS[1] the user's lease set, KEYS[2..3] presence's; ARGV: member, cap, lease seconds, user
# id. Redis' own clock, so servers with skewed clocks agree. Returns 1 when the member holds a
# slot, 0 when the user is full.
_ACQUIRE = (
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false
   and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
"""
    + presence.MARK_LUA
    + """
return 1
"""
)

# The embedded default (one process, no Redis): user id -> {member: expiry}.
_memory_slots: dict[int, dict[str, float]] = {}
_memory_lock = threading.Lock()


_client = flow.redis_sync


def _key(user_id: int) -> str:
    return f"{settings.LIVEFOLIO_REDIS_PREFIX}:api:connections:{user_id}"


def connection_acquire(*, user_id: int, member: str, cap: int, lease: float) -> bool:
    """Hold (or renew) one of the user's ``cap`` connection slots for ``lease`` seconds.

    Call again before the lease runs out to keep it; False means the user is at the cap.
    """
    client = _client()
    if client is None:
        with _memory_lock:
            now = time.monotonic()
            slots = {m: t for m, t in _memory_slots.get(user_id, {}).items() if t > now}
            if member not in slots and len(slots) >= cap:
                _memory_slots[user_id] = slots
                return False
            slots[member] = now + lease
            _memory_slots[user_id] = slots
            return True
    keys = [_key(user_id), *presence.keys()]
    return bool(client.eval(_ACQUIRE, len(keys), *keys, member, cap, lease, user_id))


def connection_release(*, user_id: int, member: str) -> None:
    """Give the slot back (on disconnect)."""
    client = _client()
    if client is None:
        with _memory_lock:
            _memory_slots.get(user_id, {}).pop(member, None)
        return
    client.zrem(_key(user_id), member)
