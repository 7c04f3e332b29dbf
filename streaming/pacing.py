"""Valuation pacing: each portfolio valued at most once per interval, on a phase of its own.

With ``LIVEFOLIO_VALUATION_INTERVAL_MS`` = I (0, the default: off), a portfolio is valued at most
once in each of its slots ``[phase + k·I, phase + (k+1)·I)``, its phase a fixed spread of its id
over ``[0, I)``. A feed window shorter than I then values ~window/I of the moving portfolios per
batch instead of all of them in one burst every I: the same number of valuations per second,
but the work, the Channels traffic and the clients' parsing come evenly, and a valuation follows
its newest tick within about one window instead of behind a pass over every portfolio
(docs/performance.md). A portfolio that moves inside a slot it was already valued in is
*deferred*: valued by the first pass after its next slot begins — the next ingest batch, or,
when the feed goes quiet, a ``value_deferred`` task two batch windows after that turn (the
last price of a burst is never dropped, only held until the portfolio's turn).

State lives in Redis so that several workers pace together: a hash of each portfolio's last
valued slot and a sorted set of deferred portfolios scored by when their turn comes. One Lua
script per pass takes both steps atomically. Without Redis there is no pacing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import redis
from django.conf import settings

from streaming import flow

log = logging.getLogger(__name__)

# KEYS: last-slot hash, deferred sorted set. ARGV: now (ms), interval (ms), the largest share of
# the portfolios considered one pass may value, portfolio ids.
# Returns {ids to value now, the earliest deferred turn (ms) or false}.
_PACE = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local share = tonumber(ARGV[3])
local ready = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #ready > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
local turns, seen, considered = {}, {}, 0
local function consider(p)
  if seen[p] then return end
  seen[p] = true
  considered = considered + 1
  local phase = (tonumber(p) * 7919) % interval
  local slot = math.floor((now - phase) / interval)
  local last = tonumber(redis.call('HGET', KEYS[1], p) or '-1')
  if last < slot then
    turns[#turns + 1] = {p, last, slot}
  else
    redis.call('ZADD', KEYS[2], phase + (last + 1) * interval, p)
  end
end
for _, p in ipairs(ready) do consider(p) end
for i = 4, #ARGV do consider(ARGV[i]) end
local limit = math.max(1, math.ceil(math.max(considered, redis.call('HLEN', KEYS[1])) * share))
if #turns > limit then
  table.sort(turns, function(a, b) return a[2] < b[2] end)
end
local due = {}
for i, t in ipairs(turns) do
  if i <= limit then
    redis.call('HSET', KEYS[1], t[1], t[3])
    redis.call('ZREM', KEYS[2], t[1])
    due[#due + 1] = t[1]
  else
    redis.call('ZADD', KEYS[2], now, t[1])
  end
end
local keep = interval * 10 + 60000
redis.call('PEXPIRE', KEYS[1], keep)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], keep) end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {due, first[2] or false}
"""


def clock_ms() -> int:
    """Epoch milliseconds (every worker's clock: they pace together through Redis)."""
    return int(time.time() * 1000)


def interval_ms() -> int:
    return settings.LIVEFOLIO_VALUATION_INTERVAL_MS


def pass_share() -> float:
    """The largest share of the paced portfolios (all valued lately, or all moving now if more)
    one pass values: twice a batch window's share of the interval. Turns beyond that (a worker
    that fell behind finds every portfolio's turn come) wait for the next pass, longest
    unvalued first: without the cap each pass would value everyone, take longer than the
    interval and find everyone due again."""
    return min(1.0, 2 * settings.LIVEFOLIO_COALESCE_MS / interval_ms())


def phase_ms(portfolio_id: int, interval: int) -> int:
    """Where in each interval a portfolio's slot begins (the script's formula)."""
    return portfolio_id * 7919 % interval


def _keys() -> list[str]:
    prefix = settings.LIVEFOLIO_REDIS_PREFIX
    return [f"{prefix}:valuation:slot", f"{prefix}:valuation:deferred"]


def flush_key() -> str:
    return f"{settings.LIVEFOLIO_REDIS_PREFIX}:valuation:flush"


class Turns:
    """What one pass may value: ``due`` (portfolio ids whose turn it is, the ``moving`` ones
    and any deferred earlier whose turn has come) and ``next_turn_ms`` (epoch ms of the
    earliest deferred portfolio's turn, or None)."""

    __slots__ = ("due", "next_turn_ms")

    def __init__(self, due: list[int], next_turn_ms: int | None) -> None:
        self.due = due
        self.next_turn_ms = next_turn_ms


def take_turns(moving: Iterable[int]) -> Turns | None:
    """Pace ``moving`` (portfolios whose value changed) at the configured interval.

    None when pacing is off or impossible (interval 0, no Redis, Redis failing): value all of
    ``moving`` now, as without pacing.
    """
    interval = interval_ms()
    client = flow.redis_sync() if interval else None
    if client is None:
        return None
    now = clock_ms()
    try:
        due, first = client.eval(_PACE, 2, *_keys(), now, interval, pass_share(), *moving)
    except redis.RedisError as exc:
        log.warning("valuation pacing unavailable, valuing every moving portfolio (%s)", exc)
        return None
    return Turns([int(p) for p in due], int(float(first)) if first else None)


def schedule_flush(turns: Turns) -> float | None:
    """Make sure the deferred portfolios are valued even if no ingest batch comes (the feed
    went quiet): a ``value_deferred`` task two batch windows after the earliest deferred turn,
    unless one is outstanding (a Redis key marks it). While batches keep coming they value the
    deferred portfolios on their turn and the flush finds little to do. Returns the countdown
    (seconds) when this call scheduled the task."""
    if turns.next_turn_ms is None:
        return None
    delay_ms = max(turns.next_turn_ms - clock_ms(), 0) + 2 * settings.LIVEFOLIO_COALESCE_MS
    client = flow.redis_sync()
    try:
        # Expires on its own a little after the task was due: a task lost with its worker
        # only delays the flush until the next pass schedules another.
        if not client.set(flush_key(), 1, nx=True, px=delay_ms + 1000):
            return None
    except redis.RedisError as exc:
        log.warning("valuation pacing: cannot schedule the deferred flush (%s)", exc)
        return None
    from streaming.tasks import value_deferred

    countdown = delay_ms / 1000
    value_deferred.apply_async(countdown=countdown)
    return countdown


def flush_taken() -> None:
    """The scheduled flush is running: the next deferral may schedule another."""
    client = flow.redis_sync()
    if client is not None:
        try:
            client.delete(flush_key())
        except redis.RedisError as exc:
            log.warning("valuation pacing: cannot clear the flush mark (%s)", exc)
