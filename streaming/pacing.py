"""Valuation pacing: each portfolio valued at most once per interval, on a phase of its own.

With ``LIVEFOLIO_VALUATION_INTERVAL_MS`` = I (0, the default: off), a portfolio is valued at most
once in each of its slots ``[phase + k·I, phase + (k+1)·I)``, its phase a fixed spread of its id
over ``[0, I)``. A feed window shorter than I then values ~window/I of the moving portfolios per
batch instead of all of them in one burst every I: the same number of valuations per second,
but the work, the Channels traffic and the clients' parsing come evenly, and a valuation follows
its newest tick within about one window instead of behind a pass over every portfolio. A
portfolio that moves inside a slot it was already valued in is *deferred*: valued by the first
pass after its next slot begins — the next ingest batch. When
the market goes quiet, each feed runner goes on sending empty batches for one interval and two
windows after its last tick (:func:`settle_seconds`), so every deferred turn still comes (the
last price of a burst is never dropped, only held until the portfolio's turn); the minute's
snapshot task passes too.

A pass values at most twice the paced portfolios' share of the time between two passes (by any
worker, smoothed over about ten): 2·gap/I of them, the longest unvalued first; the others wait
for the next pass. Without a cap a worker that fell behind would find every portfolio's turn come
at every pass; smoothed, one slow pass does not make the next one value everyone due, which would
make it slower still. The share follows the time between passes, not the window: a feed runner
holds its window while the workers are busy (streaming/runner.py), so passes come further apart
than the window, and a window's share would value fewer portfolios a second than their turns ask
for.

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

from streaming import flow, namespace

log = logging.getLogger(__name__)

# A portfolio's phase is its id times this, modulo the interval: consecutive ids spread over it.
PHASE_STEP = 7919

# The time between passes that sets a pass's cap is smoothed over about this many passes: one
# slow pass does not let the next value everyone due (the tail grows with the pass), while
# passes further apart than the window (held windows) get their share within a few.
GAP_PASSES = 10

# KEYS: last-slot hash, deferred sorted set, the passes' hash (the last one's time, the smoothed
# time between two). ARGV: now (ms), interval (ms), the feed's window (ms), PHASE_STEP,
# GAP_PASSES, portfolio ids. Returns the ids to value now.
_PACE = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local step = tonumber(ARGV[4])
local gap_passes = tonumber(ARGV[5])
-- The share of the paced portfolios this pass may value: twice their share of the time between
-- two passes (by any worker), smoothed over the last ~gap_passes (a window before any).
local pass = redis.call('HMGET', KEYS[3], 'at', 'gap')
local gap = tonumber(pass[2]) or window
if pass[1] then
  local elapsed = math.min(interval, math.max(0, now - tonumber(pass[1])))
  gap = gap + (elapsed - gap) / gap_passes
end
redis.call('HSET', KEYS[3], 'at', now, 'gap', gap)
local share = math.min(1, 2 * gap / interval)
local ready = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #ready > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
-- The deferred whose turn came, then the moving, each once.
local ids, seen = {}, {}
local function add(p)
  if not seen[p] then seen[p] = true; ids[#ids + 1] = p end
end
for _, p in ipairs(ready) do add(p) end
for i = 6, #ARGV do add(ARGV[i]) end
-- Redis commands take many ids at once, in chunks (Lua's unpack has a stack limit): a command
-- per portfolio would be most of the script's time, and Redis serves no one else while it runs.
local CHUNK = 1000
local function each_chunk(list, width, command, key)
  for i = 1, #list, CHUNK * width do
    redis.call(command, key, unpack(list, i, math.min(i + CHUNK * width - 1, #list)))
  end
end
local turns, later = {}, {}
for i = 1, #ids, CHUNK do
  local j = math.min(i + CHUNK - 1, #ids)
  local lasts = redis.call('HMGET', KEYS[1], unpack(ids, i, j))
  for k = i, j do
    local p = ids[k]
    local phase = (tonumber(p) * step) % interval
    local slot = math.floor((now - phase) / interval)
    local last = tonumber(lasts[k - i + 1] or '-1')
    if last < slot then
      turns[#turns + 1] = {p, last, slot}
    else
      later[#later + 1] = phase + (last + 1) * interval
      later[#later + 1] = p
    end
  end
end
local limit = math.max(1, math.ceil(math.max(#ids, redis.call('HLEN', KEYS[1])) * share))
if #turns > limit then
  table.sort(turns, function(a, b) return a[2] < b[2] end)
end
local due, slots = {}, {}
for i, t in ipairs(turns) do
  if i <= limit then
    due[#due + 1] = t[1]
    slots[#slots + 1] = t[1]
    slots[#slots + 1] = t[3]
  else
    later[#later + 1] = now
    later[#later + 1] = t[1]
  end
end
each_chunk(later, 2, 'ZADD', KEYS[2])
each_chunk(slots, 2, 'HSET', KEYS[1])
each_chunk(due, 1, 'ZREM', KEYS[2])
local keep = interval * 10 + 60000
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[3], keep)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], keep) end
return due
"""


def clock_ms() -> int:
    """Epoch milliseconds (every worker's clock: they pace together through Redis)."""
    return int(time.time() * 1000)


def interval_ms() -> int:
    return settings.LIVEFOLIO_VALUATION_INTERVAL_MS


def phase_ms(portfolio_id: int, interval: int) -> int:
    """Where in each interval a portfolio's slot begins (the script's formula)."""
    return portfolio_id * PHASE_STEP % interval


def _keys() -> list[str]:
    prefix = namespace.redis_prefix()
    return [
        f"{prefix}:valuation:slot",
        f"{prefix}:valuation:deferred",
        f"{prefix}:valuation:passes",
    ]


def take_turns(moving: Iterable[int]) -> list[int] | None:
    """Of ``moving`` (portfolios whose value changed) and those deferred earlier, the ids whose
    turn it is; the rest are deferred to their next turn.

    None when pacing is off or impossible (interval 0, no Redis, Redis failing): value all of
    ``moving`` now, as without pacing.
    """
    interval = interval_ms()
    client = flow.redis_sync() if interval else None
    if client is None:
        return None
    now = clock_ms()
    try:
        window = settings.LIVEFOLIO_COALESCE_MS
        due = client.eval(
            _PACE, 3, *_keys(), now, interval, window, PHASE_STEP, GAP_PASSES, *moving
        )
    except redis.RedisError as exc:
        log.warning("valuation pacing unavailable, valuing every moving portfolio (%s)", exc)
        return None
    return [int(p) for p in due]


def settle_seconds() -> float:
    """How long a feed runner goes on sending (empty) batches after its last tick, so that the
    portfolios its ticks deferred get their turn: one interval and two windows. 0: no pacing."""
    interval = interval_ms()
    return (interval + 2 * settings.LIVEFOLIO_COALESCE_MS) / 1000 if interval else 0.0
