"""A durable backlog per destination: a Redis stream read by one consumer group.

Fan-out appends (request id, accepted at, trace bytes) to each eligible destination's
stream and makes sure one deliver task is queued (`queued` flag, `SET NX`). A deliver task
is one *run*: it takes an in-flight slot (`begin`), claims one batch (`claim`), sends it,
settles each entry (`settle`) and leaves (`finish`). Nothing in a run waits for work that
may come: when unread entries or due retries remain, the run sends the next task (at
once, or after a short countdown in the broker so a busy destination's next request
carries more traces), and the task reads whatever accumulated while it was queued.

A claim takes, in order:

1. *orphans*: entries a run holds without renewing them past the lease (its worker died);
   they come back as the batch they were, so a vendor that already holds it sees the
   same batch-level ids;
2. *due retries*: entries a failed attempt put back, each with its own due time in the
   `retry` sorted set (entry id -> unix seconds), held by the consumer `waiting`; a
   failed batch is retried when its own backoff is due while new batches keep going;
3. *new* entries (`XREADGROUP >`).

A run's lease (its entries' idle time, its slot, the queued flag) is renewed while its
vendor request is in flight (`renew`), so a slow request is never taken for a dead run.
A settled entry is acknowledged and deleted; acknowledging only what is still pending
makes each entry end in exactly one record, even when two runs raced for it. A run that
delivers records one attempt in the circuit's window (`broadcast_engine.circuit_window`).

Lua keeps each step atomic; every key a script touches shares the destination's hash tag.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from broadcast_engine import circuit_window
from broadcast_engine.trace_store import COUNT_OFFSET, COUNT_TYPE, TraceWrite, Written
from settings import keys
from settings.models import HealthRecord
from settings.redis_commands import RedisClient
from settings.store import health_from, request_bucket, status_class

GROUP = "deliver"
WAITING = "waiting"

# KEYS: queued, slots, health. ARGV: token, now, lease seconds, max in flight, probe
# seconds, re-check seconds. Returns the verdict and the health hash as read (the run
# goes on with it: one read, not two). The queued flag says "a task will read this backlog again":
# held while a task is queued or runs (and while the destination waits, so fan-out sends
# no task that could only leave again); `finish` drops it when the last run leaves with
# nothing due.
_BEGIN = """
local raw = redis.call('HGETALL', KEYS[3])
local h = {}
for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
local now = tonumber(ARGV[2])
if h['status'] == 'auth_failed' then
  redis.call('SET', KEYS[1], 'paused', 'PX', math.ceil(tonumber(ARGV[6]) * 1000))
  return {'paused', raw}
end
local probing = h['circuit'] == 'open'
local wake = tonumber((probing and h['probe_at']) or h['backoff_until'] or '0') or 0
if wake > now + 0.05 then  -- a task sent for `wake` may start a moment early
  redis.call('SET', KEYS[1], 'waiting', 'PX', math.max(1, math.ceil((wake - now) * 1000)))
  return {'wait', raw}
end
-- Runs whose lease is still running (a dead run's slot ends with its lease; `finish`
-- removes expired ones).
local running = redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[2], '+inf')
if running >= tonumber(ARGV[4]) or (probing and running > 0) then return {'busy', raw} end
if probing then
  redis.call('HSET', KEYS[3], 'probe_at', tostring(now + tonumber(ARGV[5])))
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
-- (The queued flag is already set: by fan-out, the previous run, or the sweep; a long
-- request renews it with the lease.)
return {probing and 'probe' or 'run', raw}
"""

# KEYS: backlog, retry. ARGV: group, consumer, count, lease ms, waiting consumer, now,
# "probe" (take the oldest waiting entry whatever its due time) or "-".
# Returns {kind, entries...}: kind is 'orphans', 'retry' or 'new'. With nothing pending
# (the usual case) a claim costs XPENDING and XREADGROUP.
_CLAIM = """
local group, me, want, lease = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local ok, summary = pcall(redis.call, 'XPENDING', KEYS[1], group)
if not ok then
  redis.call('XGROUP', 'CREATE', KEYS[1], group, '0', 'MKSTREAM')
  summary = {0}
end
local out = {}
if tonumber(summary[1]) > 0 then
  local waiting = 0
  for _, c in ipairs(summary[4]) do
    if c[1] == ARGV[5] then
      waiting = tonumber(c[2])
    elseif c[1] ~= '_settling' then
      -- A run holds these: past the lease without a renewal, its worker is gone.
      local idle = redis.call('XPENDING', KEYS[1], group, 'IDLE', lease, '-', '+', want, c[1])
      if #idle > 0 then
        local ids = {}
        for _, p in ipairs(idle) do table.insert(ids, p[1]) end
        for _, e in ipairs(redis.call('XCLAIM', KEYS[1], group, me, lease, unpack(ids))) do
          if e and e[2] then table.insert(out, e) end
        end
        if #out > 0 then return {'orphans', unpack(out)} end
      end
    end
  end
  if waiting > 0 and redis.call('ZCARD', KEYS[2]) < waiting then
    -- Waiting entries with no due time (put back by a run of an earlier version): due now.
    for _, p in ipairs(redis.call('XPENDING', KEYS[1], group, '-', '+', 1000, ARGV[5])) do
      if not redis.call('ZSCORE', KEYS[2], p[1]) then
        redis.call('ZADD', KEYS[2], ARGV[6], p[1])
      end
    end
  end
  if waiting > 0 then
    local due
    if ARGV[7] == 'probe' then
      due = redis.call('ZRANGE', KEYS[2], 0, want - 1)
    else
      due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[6], 'LIMIT', 0, want)
    end
    if #due > 0 then
      redis.call('ZREM', KEYS[2], unpack(due))
      for _, e in ipairs(redis.call('XCLAIM', KEYS[1], group, me, 0, unpack(due))) do
        if e and e[2] then table.insert(out, e) end
      end
      if #out > 0 then return {'retry', unpack(out)} end
    end
  end
end
local fresh = redis.call('XREADGROUP', 'GROUP', group, me, 'COUNT', want,
  'STREAMS', KEYS[1], '>')
if fresh then for _, e in ipairs(fresh[1][2]) do table.insert(out, e) end end
return {'new', unpack(out)}
"""

# KEYS: backlog, slots, queued. ARGV: group, consumer, token, now, lease seconds, ids...
# While a run's request is in flight: its entries' idle time (only those it still holds),
# its slot and the queued flag are renewed, so no claim takes them for a dead run's.
_RENEW = """
local held = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', #ARGV - 5, ARGV[2])
local mine, ids = {}, {}
for _, p in ipairs(held) do mine[p[1]] = true end
for i = 6, #ARGV do if mine[ARGV[i]] then table.insert(ids, ARGV[i]) end end
if #ids > 0 then
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for _, id in ipairs(ids) do table.insert(args, id) end
  table.insert(args, 'JUSTID')  -- (unpack() inside an argument list yields one value)
  redis.call(unpack(args))
end
local lease = tonumber(ARGV[5])
redis.call('ZADD', KEYS[2], 'XX', tonumber(ARGV[4]) + lease, ARGV[3])
redis.call('SET', KEYS[3], 'running', 'PX', math.ceil(lease * 1000))
return #ids
"""

# KEYS: backlog, counters, latency, log, dead, attempts, retry, the window's bucket now,
#       requests, replay_delivered.
# ARGV: group, waiting consumer, log entry, log size, "fresh" when no entry was ever tried,
#       "ok" to count a delivered attempt in the circuit's window (else "-"), the batch's
#       vendor requests ("CLASS|BOUND|MS" joined by spaces, or "-"), the bucket's TTL (ms),
#       now (unix seconds: when a replayed entry was delivered); then per item: stream
#       id, kind (d delivered / f dead letter / w wait after a failed attempt / g given
#       back untried; D and F: a replayed entry delivered or dead-lettered again),
#       request id, latency bucket, latency ms, letter JSON, due (unix seconds, for w
#       and g).
# Only entries still pending are settled, so an entry that two runs raced for (a run
# slower than its lease) is counted once. Returns (delivered, dead-lettered) counted now,
# then the request ids of the entries that ended now (each releases its trace once).
# The vendor requests are counted with the batch (one HINCRBY per request and one for
# their durations: per batch, not per trace), even when a raced duplicate settles nothing:
# the request was made.
_SETTLE = """
local HEAD, SIZE = 9, 7
local n = (#ARGV - HEAD) / SIZE
local function call_with(head, ids, tail)
  local args = {}
  for _, v in ipairs(head) do table.insert(args, v) end
  for _, v in ipairs(ids) do table.insert(args, v) end
  if tail then table.insert(args, tail) end
  return redis.call(unpack(args))
end
local waiting, ending, due = {}, {}, {}
for i = 0, n - 1 do
  local b = HEAD + 1 + i * SIZE
  local kind = ARGV[b + 1]
  if kind == 'w' or kind == 'g' then
    table.insert(waiting, ARGV[b])
    due[ARGV[b]] = ARGV[b + 6]
  else
    table.insert(ending, ARGV[b])
  end
end
-- Entries that wait: to the consumer `waiting`, each with its due time, if still pending.
local waits = {}
if #waiting > 0 then
  local moved = call_with({'XCLAIM', KEYS[1], ARGV[1], ARGV[2], '0'}, waiting, 'JUSTID')
  for _, id in ipairs(moved) do
    waits[id] = true
    redis.call('ZADD', KEYS[7], tonumber(due[id]), id)
  end
end
-- Entries that end now: only those still pending (XCLAIM answers exactly those), so a
-- raced duplicate counts, letters and releases nothing.
local ends = {}
if #ending > 0 then
  local still = call_with({'XCLAIM', KEYS[1], ARGV[1], '_settling', '0'}, ending, 'JUSTID')
  for _, id in ipairs(still) do ends[id] = true end
  if #still > 0 then call_with({'XACK', KEYS[1], ARGV[1]}, still) end
  call_with({'XDEL', KEYS[1]}, ending)
end
local delivered, failed, waited, buckets, latency_ms, ended = 0, 0, 0, {}, 0, {}
local replay_delivered, replay_failed = 0, 0
for i = 0, n - 1 do
  local b = HEAD + 1 + i * SIZE
  local id, kind, request = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  if kind == 'w' then
    if waits[id] then
      waited = waited + 1
      redis.call('HINCRBY', KEYS[6], request, 1)
    end
  elseif ends[id] then
    table.insert(ended, request)
    if kind == 'd' then
      delivered = delivered + 1
      buckets[ARGV[b + 3]] = (buckets[ARGV[b + 3]] or 0) + 1
      latency_ms = latency_ms + tonumber(ARGV[b + 4])
    elseif kind == 'D' then
      replay_delivered = replay_delivered + 1
      -- So that the next replay of this request's letters skips them (unless --again).
      redis.call('HSET', KEYS[10], request, ARGV[9])
    elseif kind == 'f' or kind == 'F' then
      if kind == 'f' then failed = failed + 1 else replay_failed = replay_failed + 1 end
      redis.call('XADD', KEYS[5], '*', 'letter', ARGV[b + 5])
    end
  end
end
-- Failed attempts on record (a hash that exists only while some entry has failed).
if #ended > 0 and ARGV[5] ~= 'fresh' and redis.call('EXISTS', KEYS[6]) == 1 then
  call_with({'HDEL', KEYS[6]}, ended)
end
if delivered > 0 then
  redis.call('HINCRBY', KEYS[2], 'delivered', delivered)
  for bucket, count in pairs(buckets) do redis.call('HINCRBY', KEYS[3], bucket, count) end
  redis.call('HINCRBY', KEYS[3], 'sum_ms', math.floor(latency_ms + 0.5))
end
if failed > 0 then redis.call('HINCRBY', KEYS[2], 'failed', failed) end
if waited > 0 then redis.call('HINCRBY', KEYS[2], 'retried', waited) end
if replay_delivered > 0 then
  redis.call('HINCRBY', KEYS[2], 'replay_delivered', replay_delivered)
end
if replay_failed > 0 then redis.call('HINCRBY', KEYS[2], 'replay_failed', replay_failed) end
if ARGV[7] ~= '-' then
  local request_ms = 0
  for class_bound, ms in string.gmatch(ARGV[7], '(%S+)|(%S+)') do
    redis.call('HINCRBY', KEYS[9], class_bound, 1)
    request_ms = request_ms + tonumber(ms)
  end
  redis.call('HINCRBY', KEYS[9], 'sum_ms', math.floor(request_ms + 0.5))
end
if ARGV[6] == 'ok' and redis.call('HINCRBY', KEYS[8], 'a', 1) == 1 then
  redis.call('PEXPIRE', KEYS[8], ARGV[8])  -- once per bucket: it expires past the window
end
if redis.call('LPUSH', KEYS[4], ARGV[3]) > tonumber(ARGV[4]) + 20 then
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[4]) - 1)
end
local out = {delivered, failed}
for _, request in ipairs(ended) do table.insert(out, request) end
return out
"""

# Unread entries (never handed out) of the group: the group's lag, or a count of up to
# `limit` entries after its last-delivered id when Redis cannot tell the lag (entries
# deleted past it). Used by FINISH and NEEDS_TASK.
_UNREAD = """
local function unread(key, group, limit)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', key)
  if not ok then return 0 end
  for _, g in ipairs(groups) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == group then
      if type(info['lag']) == 'number' then return info['lag'] end
      return #redis.call('XRANGE', key, '(' .. info['last-delivered-id'], '+', 'COUNT', limit)
    end
  end
  return 0
end
"""

# KEYS: backlog, slots, queued, retry. ARGV: token, group, now, lease seconds, batch size,
# waiting consumer. The run leaves. Returns {'continue', unread}: entries are unread or a
# retry is due (the queued flag stays, for the task the caller sends next); or {'done',
# earliest retry due or '', when a dead run's batch becomes claimable or ''}: the slot is
# released, and the queued flag with the last slot.
_FINISH = (
    _UNREAD
    + """
local now = tonumber(ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
local waiting = unread(KEYS[1], ARGV[2], tonumber(ARGV[5]))
local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if waiting > 0 or (first[2] and tonumber(first[2]) <= now) then
  redis.call('SET', KEYS[3], 'queued', 'PX', math.ceil(tonumber(ARGV[4]) * 1000))
  return {'continue', tostring(waiting)}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) > 0 then return {'done', first[2] or '', ''} end
redis.call('DEL', KEYS[3])
-- No run is alive, yet entries are held by runs (not waiting): a dead run's batch. When
-- its lease ends, someone must claim it: the caller sends a task for then.
local orphan_at = ''
local ok, summary = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[2])
if ok and tonumber(summary[1]) > 0 then
  for _, c in ipairs(summary[4]) do
    if c[1] ~= ARGV[6] then
      local lease_ms = tonumber(ARGV[4]) * 1000
      for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[2], '-', '+', 10, c[1])) do
        local at = now + math.max(lease_ms - tonumber(p[3]), 0) / 1000
        if orphan_at == '' or at < orphan_at then orphan_at = at end
      end
    end
  end
end
return {'done', first[2] or '', tostring(orphan_at)}
"""
)

# KEYS: backlog, queued, slots, retry. ARGV: group, now, waiting consumer.
# 1 when work is due and no task is queued or running: unread entries, a due retry, or
# entries a run holds (a dead run's come back to the task the sweep sends).
_NEEDS_TASK = (
    _UNREAD
    + """
if redis.call('XLEN', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('ZCOUNT', KEYS[3], ARGV[2], '+inf') > 0 then return 0 end
if unread(KEYS[1], ARGV[1], 1) > 0 then return 1 end
local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if first[2] and tonumber(first[2]) <= tonumber(ARGV[2]) then return 1 end
local ok, summary = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1])
if not ok then return 0 end
for _, c in ipairs(summary[4] or {}) do
  if c[1] ~= ARGV[3] then return 1 end
end
return 0
"""
)

# The trace's hold count where trace_store keeps it (BITFIELD type and bit offset).
_HOLDS = f"'{COUNT_TYPE}', {COUNT_OFFSET}"

# KEYS: the trace (broadcast_engine/trace_store.py), then per destination its backlog and
# queued flag. ARGV: request id, accepted at, trace bytes, hold count, lease ms, the
# trace's stored value (with that count), its TTL ms, then per destination "1" to set its
# queued flag unless it is set. Stores the trace unless it is stored (SET NX); one stored
# by a fan-out that completed makes this a duplicate: nil, nothing appended. Else returns
# per destination 1 when its flag was set now (a deliver task must be sent), else 0.
# With several flags to set, one MGET reads them all: under traffic nearly every event
# finds its destinations' tasks queued, so it costs one command instead of a SET NX each.
_APPEND_EVENT = (
    f"""
if not redis.call('SET', KEYS[1], ARGV[6], 'NX', 'PX', ARGV[7]) then
  -- stored already: a duplicate, unless the fan-out that stored it never completed
  if redis.call('BITFIELD', KEYS[1], 'GET', {_HOLDS})[1] >= 0 then return false end
  redis.call('BITFIELD', KEYS[1], 'SET', {_HOLDS}, ARGV[4])
end
"""
    + """
local n = (#KEYS - 1) / 2
local wanted = {}
for i = 1, n do
  if ARGV[7 + i] == '1' then wanted[#wanted + 1] = KEYS[2 * i + 1] end
end
local held = {}
if #wanted > 1 then held = redis.call('MGET', unpack(wanted)) end
local out, w = {}, 0
for i = 1, n do
  redis.call('XADD', KEYS[2 * i], '*', 'r', ARGV[1], 'a', ARGV[2], 'n', ARGV[3])
  out[i] = 0
  if ARGV[7 + i] == '1' then
    w = w + 1
    if not held[w] and redis.call('SET', KEYS[2 * i + 1], '1', 'NX', 'PX', ARGV[5]) then
      out[i] = 1
    end
  end
end
return out
"""
)

# KEYS: retry. ARGV: now. Every waiting retry falls due now.
_MAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[1], id) end
return #due
"""

# KEYS: backlog, retry. ARGV: group, waiting consumer, count, accepted-before (unix seconds).
# Removes up to `count` of the oldest entries no run holds (those waiting after a failure,
# then unread ones) that were accepted before the given time. Returns them.
_TAKE_OLDEST = """
local want, before = tonumber(ARGV[3]), tonumber(ARGV[4])
local function accepted(fields)
  for i = 1, #fields, 2 do if fields[i] == 'a' then return tonumber(fields[i + 1]) end end
  return 0
end
local taken, acked = {}, {}
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', want, ARGV[2])
if not ok then return {} end
for _, p in ipairs(pending) do
  local e = redis.call('XRANGE', KEYS[1], p[1], p[1])
  if #e > 0 and accepted(e[1][2]) < before then
    table.insert(taken, e[1])
    table.insert(acked, p[1])
  end
end
if #acked > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(acked))
  redis.call('XDEL', KEYS[1], unpack(acked))
  redis.call('ZREM', KEYS[2], unpack(acked))
end
if #taken < want then
  local last = '0-0'
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == ARGV[1] then last = info['last-delivered-id'] end
  end
  local unread = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', want - #taken)
  local ids = {}
  for _, e in ipairs(unread) do
    if accepted(e[2]) >= before then break end
    table.insert(taken, e)
    table.insert(ids, e[1])
  end
  if #ids > 0 then redis.call('XDEL', KEYS[1], unpack(ids)) end
end
return taken
"""


class Begin(StrEnum):
    """What a deliver task may do when it starts."""

    RUN = "run"  # claim batches
    PROBE = "probe"  # the circuit is open: one entry, to test the vendor
    WAIT = "wait"  # backing off until a time: leave (the queued flag holds until then)
    BUSY = "busy"  # `max_in_flight` tasks already work on it: leave
    PAUSED = "paused"  # credentials rejected: leave until they work again


@dataclass(frozen=True)
class BacklogEntry:
    """`replay`: appended by a replay of a dead letter (counted as a replay when it ends)."""

    id: str
    request_id: str
    accepted_at: float
    size: int
    replay: bool = False


@dataclass(frozen=True)
class BacklogStats:
    """`depth`: entries not yet settled; `in_flight`: held by a task now; `bytes`: trace
    bytes those entries refer to (an estimate: entries x their mean size)."""

    depth: int
    in_flight: int
    bytes: int
    oldest_accepted_at: float | None


@dataclass(frozen=True)
class VendorRequest:
    """One request a batch made to its vendor: its status code (None: no answer came)
    and how long it took."""

    status_code: int | None
    duration_ms: float


@dataclass(frozen=True)
class Settlement:
    """What becomes of one claimed entry. `kind`: `d` delivered, `f` dead letter, `w` wait
    after a failed attempt, `g` given back untried; `due`: when a waiting entry may be
    tried again (unix seconds)."""

    entry: BacklogEntry
    kind: str
    latency_bucket: str = ""
    latency_ms: float = 0.0
    dead_letter: str = ""
    due: float = 0.0


@dataclass(frozen=True)
class Settled:
    """What a settlement counted now, and the request ids of the entries that ended now
    (delivered or dead-lettered): each must release its trace (`TraceStore.release`)."""

    delivered: int
    failed: int
    ended: list[str]


class ClaimKind(StrEnum):
    ORPHANS = "orphans"  # a dead run's batch, sent again as it was
    RETRY = "retry"  # entries whose retry is due after a failed attempt
    NEW = "new"  # never tried


@dataclass(frozen=True)
class Claim:
    kind: ClaimKind
    entries: list[BacklogEntry]


@dataclass(frozen=True)
class Finish:
    """How a run left. `go_on`: unread entries or a due retry remain (the queued flag is
    kept for the next task); `unread`: how many entries were never handed out; `next_retry`:
    with nothing due now, when the earliest waiting retry falls due (None: none waits);
    `orphans_at`: no run is alive but entries are held by one (its worker died): when the
    first of them can be claimed (None: nothing held)."""

    go_on: bool
    unread: int = 0
    next_retry: float | None = None
    orphans_at: float | None = None


class Backlog:
    def __init__(
        self, client: RedisClient, *, max_in_flight: int, lease_seconds: float, log_size: int
    ) -> None:
        self.redis = client
        self.max_in_flight = max_in_flight
        self.lease_seconds = lease_seconds
        self.log_size = log_size
        self._begin = client.register_script(_BEGIN)
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._settle = client.register_script(_SETTLE)
        self._finish = client.register_script(_FINISH)
        self._needs_task = client.register_script(_NEEDS_TASK)
        self._make_due = client.register_script(_MAKE_DUE)
        self._append_event = client.register_script(_APPEND_EVENT)
        self._take_oldest = client.register_script(_TAKE_OLDEST)

    # Fan-out

    def create(self, destination_id: str) -> None:
        """Create the stream and its group (idempotent)."""
        try:
            self.redis.xgroup_create(_key(destination_id, "backlog"), GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def append(
        self,
        pipe: Any,
        destination_id: str,
        request_id: str,
        accepted_at: float,
        size: int,
        *,
        kick: bool,
        replay: bool = False,
    ) -> None:
        """Queue the append on `pipe`; with `kick`, also `SET NX` the queued flag, whose
        result (True) tells the caller to send a deliver task. `replay`: the entry
        replays a dead letter: it is marked so, and counted as `replayed`."""
        fields: dict[str, Any] = {"r": request_id, "a": f"{accepted_at:.3f}", "n": size}
        if replay:
            fields["p"] = 1
            pipe.hincrby(_key(destination_id, "counters"), "replayed", 1)
        pipe.xadd(_key(destination_id, "backlog"), fields)
        if kick:
            self.queue_flag(pipe, destination_id)

    def append_event(
        self,
        destinations: Sequence[tuple[str, bool]],
        request_id: str,
        accepted_at: float,
        trace: TraceWrite,
    ) -> list[str] | None:
        """Store the trace unless a fan-out that completed stored it (then None: a
        duplicate, nothing appended), append it to each destination's backlog and set its
        hold count, all or nothing, so a crash between them cannot leave half the appends
        to be made twice; with a destination's `kick`, also set its queued flag unless it
        is set. Returns the destinations whose flag this set: the caller sends each a
        deliver task.

        On one Redis this is one script (one round trip, no MULTI/EXEC around it); a Redis
        Cluster cannot run it across slots, so there the trace is stored first and the
        rest is a pipeline, whose crash window is the pipeline's own."""
        size = len(trace.blob)
        if isinstance(self.redis, redis.RedisCluster):
            if trace.claim(self.redis) is Written.COMPLETE:
                return None
            with self.redis.pipeline(transaction=False) as pipe:
                for destination_id, kick in destinations:
                    self.append(pipe, destination_id, request_id, accepted_at, size, kick=kick)
                trace.set_holds(pipe)
                replies = iter(pipe.execute())
            kicked = []
            for destination_id, kick in destinations:
                next(replies)  # the entry id
                if kick and next(replies):
                    kicked.append(destination_id)
            return kicked
        set_flags = self._append_event(
            keys=[trace.key]
            + [
                _key(destination_id, part)
                for destination_id, _kick in destinations
                for part in ("backlog", "queued")
            ],
            args=[
                request_id,
                f"{accepted_at:.3f}",
                size,
                trace.holders,
                int(self.lease_seconds * 1000),
                trace.value(trace.holders),
                trace.ttl_ms,
                *("1" if kick else "0" for _destination_id, kick in destinations),
            ],
        )
        if set_flags is None:
            return None
        return [d for (d, _kick), set_now in zip(destinations, set_flags, strict=True) if set_now]

    def queue_flag(self, pipe: Any, destination_id: str) -> None:
        """`SET NX` the flag that says a deliver task is queued (expires after the lease)."""
        pipe.set(_key(destination_id, "queued"), "1", nx=True, px=int(self.lease_seconds * 1000))

    def mark_queued(self, destination_id: str, *, force: bool = False) -> bool:
        """True when the caller must send a task: none was queued or running (or `force`:
        a recovery, a continuation or a helper for a deep backlog sends one regardless)."""
        ttl = int(self.lease_seconds * 1000)
        return bool(self.redis.set(_key(destination_id, "queued"), "1", px=ttl, nx=not force))

    def hold(self, destination_id: str, seconds: float) -> None:
        """Keep fan-out from sending tasks for `seconds` (the destination waits that long)."""
        self.redis.set(_key(destination_id, "queued"), "waiting", px=max(1, int(seconds * 1000)))

    # A run

    def begin(
        self,
        destination_id: str,
        token: str,
        now: float,
        *,
        probe_seconds: float,
        recheck_seconds: float,
    ) -> Begin:
        return self.begin_with_health(
            destination_id,
            token,
            now,
            probe_seconds=probe_seconds,
            recheck_seconds=recheck_seconds,
        )[0]

    def begin_with_health(
        self,
        destination_id: str,
        token: str,
        now: float,
        *,
        probe_seconds: float,
        recheck_seconds: float,
    ) -> tuple[Begin, HealthRecord]:
        """`begin`, and the destination's health as the verdict read it."""
        verdict, raw = self._begin(
            keys=[
                _key(destination_id, "queued"),
                _key(destination_id, "slots"),
                _key(destination_id, "health"),
            ],
            args=[
                token,
                repr(now),
                self.lease_seconds,
                self.max_in_flight,
                probe_seconds,
                recheck_seconds,
            ],
        )
        fields = dict(zip(raw[::2], raw[1::2], strict=True))
        return Begin(verdict.decode()), health_from(fields)

    def claim(
        self, destination_id: str, consumer: str, max_items: int, now: float, *, probe: bool = False
    ) -> Claim:
        """Up to `max_items` entries for this run: a dead run's batch alone, else retries
        that are due (with `probe`: the oldest waiting ones, due or not), else new ones."""
        kind, *raw = self._claim(
            keys=[_key(destination_id, "backlog"), _key(destination_id, "retry")],
            args=[
                GROUP,
                consumer,
                max_items,
                int(self.lease_seconds * 1000),
                WAITING,
                repr(now),
                "probe" if probe else "-",
            ],
        )
        entries = [_entry(entry_id, fields) for entry_id, fields in raw if fields]
        return Claim(ClaimKind(kind.decode()), entries)

    def renew(
        self,
        destination_id: str,
        token: str,
        consumer: str,
        entries: Sequence[BacklogEntry],
        now: float,
    ) -> int:
        """Renew a run's lease while its request is in flight; returns how many of its
        entries it still held."""
        return int(
            self._renew(
                keys=[
                    _key(destination_id, "backlog"),
                    _key(destination_id, "slots"),
                    _key(destination_id, "queued"),
                ],
                args=[
                    GROUP,
                    consumer,
                    token,
                    repr(now),
                    self.lease_seconds,
                    *(entry.id for entry in entries),
                ],
            )
        )

    def give_back(self, destination_id: str, entries: Sequence[BacklogEntry], now: float) -> None:
        """Entries claimed but not tried: back to `waiting`, due at once (no attempt)."""
        if entries:
            ids = [entry.id for entry in entries]
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.xclaim(_key(destination_id, "backlog"), GROUP, WAITING, 0, ids, justid=True)
                pipe.zadd(_key(destination_id, "retry"), {entry_id: now for entry_id in ids})
                pipe.execute()

    def settle(
        self,
        destination_id: str,
        settlements: Sequence[Settlement],
        log_entry: dict[str, Any],
        *,
        now: float,
        fresh: bool = False,
        delivered_attempt: bool = False,
        window_seconds: float = 60.0,
        requests: Sequence[VendorRequest] = (),
    ) -> Settled:
        """Apply settlements and the delivery-log entry atomically; returns what was
        counted now (a raced duplicate counts nothing). `fresh`: every entry came new
        from the stream, so none has failed attempts on record to forget.
        `delivered_attempt`: the request got through, one attempt for the circuit's window.
        `requests`: the vendor requests the batch made, counted by status class and
        duration. A replayed entry that ends is counted as `replay_delivered` or
        `replay_failed`, never as `delivered` or `failed`: those count each trace once;
        a replay delivered is also recorded per request id (`DeadLetters`), so the next
        replay skips it."""
        made = " ".join(
            f"{status_class(r.status_code)}|{request_bucket(r.duration_ms / 1000.0)}|"
            f"{r.duration_ms:.3f}"
            for r in requests
        )
        args: list[Any] = [
            GROUP,
            WAITING,
            json.dumps(log_entry, sort_keys=True),
            self.log_size,
            "fresh" if fresh else "-",
            "ok" if delivered_attempt else "-",
            made or "-",
            circuit_window.ttl_ms(window_seconds),
            repr(now),
        ]
        for item in settlements:
            kind = item.kind
            if item.entry.replay and kind in ("d", "f"):
                kind = kind.upper()
            args += [
                item.entry.id,
                kind,
                item.entry.request_id,
                item.latency_bucket or "-",
                f"{item.latency_ms:.3f}",
                item.dead_letter or "-",
                repr(item.due),
            ]
        delivered, failed, *ended = self._settle(
            keys=[
                _key(destination_id, "backlog"),
                _key(destination_id, "counters"),
                _key(destination_id, "latency"),
                _key(destination_id, "log"),
                _key(destination_id, "dead"),
                _key(destination_id, "attempts"),
                _key(destination_id, "retry"),
                circuit_window.current_key(destination_id, now),
                _key(destination_id, "requests"),
                _key(destination_id, "replay_delivered"),
            ],
            args=args,
        )
        return Settled(int(delivered), int(failed), [r.decode() for r in ended])

    def attempts(self, destination_id: str, request_ids: Sequence[str]) -> dict[str, int]:
        """Failed attempts so far of these requests (0 when never failed)."""
        if not request_ids:
            return {}
        raw = self.redis.hmget(_key(destination_id, "attempts"), request_ids)
        return {r: int(v or 0) for r, v in zip(request_ids, raw, strict=True)}

    def finish(self, destination_id: str, token: str, now: float, batch_size: int) -> Finish:
        """The run leaves: its slot is released; see `Finish` for what it must do next."""
        verdict, detail, *orphans = self._finish(
            keys=[
                _key(destination_id, "backlog"),
                _key(destination_id, "slots"),
                _key(destination_id, "queued"),
                _key(destination_id, "retry"),
            ],
            args=[token, GROUP, repr(now), self.lease_seconds, batch_size, WAITING],
        )
        if verdict == b"continue":
            return Finish(go_on=True, unread=int(detail))
        orphans_at = float(orphans[0]) if orphans and orphans[0] else None
        return Finish(
            go_on=False, next_retry=float(detail) if detail else None, orphans_at=orphans_at
        )

    def make_due(self, destination_id: str, now: float) -> None:
        """Every waiting retry falls due now (the destination was resumed)."""
        self._make_due(keys=[_key(destination_id, "retry")], args=[repr(now)])

    def release(self, destination_id: str, token: str) -> None:
        """Give up this run's slot whatever is left (the run stops early)."""
        self.redis.zrem(_key(destination_id, "slots"), token)

    # The sweep and the operator

    def stats(self, destination_id: str, now: float) -> BacklogStats:
        key = _key(destination_id, "backlog")
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(key)
            pipe.xrange(key, count=1)
            pipe.xrevrange(key, count=20)
            pipe.xpending(key, GROUP) if self._has_group(key) else pipe.echo("")
            depth, first, recent, pending = pipe.execute()
        return _stats(depth, first, recent, pending)

    def stats_many(self, destination_ids: Sequence[str]) -> dict[str, BacklogStats]:
        """`stats` of many destinations in one round trip (the metrics scrape)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for destination_id in destination_ids:
                key = _key(destination_id, "backlog")
                pipe.xlen(key)
                pipe.xrange(key, count=1)
                pipe.xrevrange(key, count=20)
                pipe.xpending(key, GROUP)  # an error reply when the group does not exist
            replies = pipe.execute(raise_on_error=False)
        out: dict[str, BacklogStats] = {}
        for index, destination_id in enumerate(destination_ids):
            depth, first, recent, pending = replies[4 * index : 4 * index + 4]
            if isinstance(depth, Exception) or isinstance(first, Exception):
                raise depth if isinstance(depth, Exception) else first  # not a stream
            out[destination_id] = _stats(depth, first, recent, pending)
        return out

    def needs_task(self, destination_id: str, now: float) -> bool:
        """Work is due and no task is queued or working on it (the sweep then kicks one)."""
        return bool(
            self._needs_task(
                keys=[
                    _key(destination_id, "backlog"),
                    _key(destination_id, "queued"),
                    _key(destination_id, "slots"),
                    _key(destination_id, "retry"),
                ],
                args=[GROUP, repr(now), WAITING],
            )
        )

    def take_oldest(
        self, destination_id: str, count: int, *, accepted_before: float = float("inf")
    ) -> list[BacklogEntry]:
        """Remove up to `count` of the oldest entries no run holds (accepted before the
        given time); returns them, for the caller to record as dropped or dead letters."""
        raw = self._take_oldest(
            keys=[_key(destination_id, "backlog"), _key(destination_id, "retry")],
            args=[GROUP, WAITING, count, repr(min(accepted_before, 1e300))],
        )
        return [_entry(entry_id, fields) for entry_id, fields in raw if fields]

    def entries(self, destination_id: str) -> list[BacklogEntry]:
        raw = self.redis.xrange(_key(destination_id, "backlog"))
        return [_entry(entry_id, fields) for entry_id, fields in raw]

    def _has_group(self, key: str) -> bool:
        try:
            return any(g["name"] in (GROUP, GROUP.encode()) for g in self.redis.xinfo_groups(key))
        except redis.ResponseError:
            return False


def _stats(depth: int, first: Any, recent: Any, pending: Any) -> BacklogStats:
    """`BacklogStats` from the replies of XLEN, XRANGE 1, XREVRANGE 20 and the XPENDING
    summary (anything else when the group does not exist yet)."""
    oldest = _entry(*first[0]).accepted_at if first else None
    sizes = [_entry(*item).size for item in recent]
    mean = sum(sizes) / len(sizes) if sizes else 0.0
    in_flight = 0
    if isinstance(pending, dict) and pending.get("pending"):
        for consumer in pending.get("consumers") or []:
            if consumer["name"] not in (WAITING.encode(), WAITING):
                in_flight += int(consumer["pending"])
    return BacklogStats(
        depth=int(depth),
        in_flight=in_flight,
        bytes=int(mean * depth),
        oldest_accepted_at=oldest,
    )


def _key(destination_id: str, part: str) -> str:
    return keys.destination_part(destination_id, part)


def _entry(entry_id: bytes | str, fields: Any) -> BacklogEntry:
    if isinstance(fields, list):  # raw Lua reply: [k1, v1, k2, v2, ...]
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    return BacklogEntry(
        id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        request_id=fields[b"r"].decode(),
        accepted_at=float(fields[b"a"]),
        size=int(fields[b"n"]),
        replay=b"p" in fields,
    )
