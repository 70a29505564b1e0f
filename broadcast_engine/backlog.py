"""A durable backlog per destination: a Redis stream read by one consumer group.

Fan-out appends (request id, accepted at, trace bytes) to each eligible destination's
stream and makes sure one deliver task is queued (`queued` flag, `SET NX`). Deliver tasks
read batches through the consumer group, each task under its own consumer name:

- entries whose task died are taken back with `XAUTOCLAIM` once idle past the lease;
- entries a failed attempt gave back wait under the consumer `waiting` and are taken
  first, before new entries (`XREADGROUP >`), so a retry resends the oldest work;
- a settled entry is acknowledged and deleted; acknowledging only what is still pending
  makes each entry end in exactly one record, even when two tasks raced for it.

While a task works on a destination, fan-out sends no other (the `queued` flag is held):
the running task takes whatever arrived meanwhile as its next batch, so under load tasks
coalesce into large batches and under light load a trace goes out alone at once. A task
leaves only when nothing unread is left (`finish`), so an entry appended while it worked
is never stranded. A task whose batch came back full calls a helper, up to
`max_in_flight` tasks per destination (`slots`, leased): a deep backlog uses several
workers and a hung request holds only its own batch. If a task is lost, its flag and
slot expire with the lease and beat's sweep finds work with no task and kicks one.

Lua keeps each step atomic; every key a script touches shares the destination's hash tag.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from settings import keys

GROUP = "deliver"
WAITING = "waiting"

# KEYS: queued, slots, health. ARGV: token, now, lease seconds, max in flight, probe
# seconds, re-check seconds. The queued flag says "a task will read this backlog again":
# held while a task runs (and while the destination waits, so fan-out sends no task that
# could only leave again); `finish` drops it when the last task leaves an empty backlog.
_BEGIN = """
local h = redis.call('HMGET', KEYS[3], 'status', 'circuit', 'probe_at', 'backoff_until')
local now = tonumber(ARGV[2])
if h[1] == 'auth_failed' then
  redis.call('SET', KEYS[1], 'paused', 'PX', math.ceil(tonumber(ARGV[6]) * 1000))
  return {'paused', '0'}
end
local probing = h[2] == 'open'
local wake = tonumber((probing and h[3]) or h[4] or '0') or 0
if wake > now + 0.05 then  -- a task retried for `wake` may start a moment early
  redis.call('SET', KEYS[1], 'waiting', 'PX', math.max(1, math.ceil((wake - now) * 1000)))
  return {'wait', tostring(wake)}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local running = redis.call('ZCARD', KEYS[2])
if running >= tonumber(ARGV[4]) or (probing and running > 0) then return {'busy', '0'} end
if probing then
  redis.call('HSET', KEYS[3], 'probe_at', tostring(now + tonumber(ARGV[5])))
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
redis.call('SET', KEYS[1], 'running', 'PX', math.ceil(tonumber(ARGV[3]) * 1000))
return {probing and 'probe' or 'run', '0'}
"""

# KEYS: backlog. ARGV: group, consumer, count, lease ms, waiting consumer.
# Orphans (entries of a run that died, maybe mid-request) come back as a batch of their
# own, not topped up: the batch a vendor may already hold is sent again as it was, with
# the same batch-level ids (a webhook's `webhook-id`), so the vendor can de-duplicate it.
_CLAIM = """
local out = {}
local want = tonumber(ARGV[3])
local ok, auto = pcall(redis.call, 'XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[4], '0-0',
  'COUNT', want)
if not ok then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
  auto = {'0-0', {}}
end
for _, e in ipairs(auto[2]) do table.insert(out, e) end
if #out > 0 then return out end
if #out < want then
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', want - #out, ARGV[5])
  if #pending > 0 then
    local ids = {}
    for _, p in ipairs(pending) do table.insert(ids, p[1]) end
    local taken = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))
    for _, e in ipairs(taken) do table.insert(out, e) end
  end
end
if #out < want then
  local fresh = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want - #out,
    'STREAMS', KEYS[1], '>')
  if fresh then for _, e in ipairs(fresh[1][2]) do table.insert(out, e) end end
end
return out
"""

# KEYS: backlog, counters, latency, log, dead, attempts.
# ARGV: group, waiting consumer, log entry, log size, "fresh" when no entry was ever tried,
#       then per item: stream id, kind (d delivered / f dead letter / w wait after a failed
#       attempt / g given back untried), request id, latency bucket, latency ms, letter JSON.
# Only entries still pending are settled, so an entry that two tasks raced for (a task
# slower than its lease) is counted once. Returns (delivered, dead-lettered) counted now,
# then the request ids of the entries that ended now (each releases its trace once).
_SETTLE = """
local n = (#ARGV - 5) / 6
local function ids_of(kinds)
  local out = {}
  for i = 0, n - 1 do
    local b = 6 + i * 6
    if kinds[ARGV[b + 1]] then table.insert(out, ARGV[b]) end
  end
  return out
end
local function call_with(head, ids, tail)
  local args = {}
  for _, v in ipairs(head) do table.insert(args, v) end
  for _, v in ipairs(ids) do table.insert(args, v) end
  if tail then table.insert(args, tail) end
  return redis.call(unpack(args))
end
local waiting = ids_of({w = true, g = true})
if #waiting > 0 then
  call_with({'XCLAIM', KEYS[1], ARGV[1], ARGV[2], '0'}, waiting, 'JUSTID')
end
-- Entries that end now: only those still pending (XCLAIM answers exactly those), so a
-- raced duplicate counts, letters and releases nothing.
local ending, ends = ids_of({d = true, f = true}), {}
if #ending > 0 then
  local still = call_with({'XCLAIM', KEYS[1], ARGV[1], '_settling', '0'}, ending, 'JUSTID')
  for _, id in ipairs(still) do ends[id] = true end
  if #still > 0 then call_with({'XACK', KEYS[1], ARGV[1]}, still) end
  call_with({'XDEL', KEYS[1]}, ending)
end
local delivered, failed, waited, buckets, latency_ms, ended = 0, 0, 0, {}, 0, {}
for i = 0, n - 1 do
  local b = 6 + i * 6
  local id, kind, request = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  if kind == 'w' then
    waited = waited + 1
    redis.call('HINCRBY', KEYS[6], request, 1)
  elseif ends[id] then
    table.insert(ended, request)
    if kind == 'd' then
      delivered = delivered + 1
      buckets[ARGV[b + 3]] = (buckets[ARGV[b + 3]] or 0) + 1
      latency_ms = latency_ms + tonumber(ARGV[b + 4])
    else
      failed = failed + 1
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
if redis.call('LPUSH', KEYS[4], ARGV[3]) > tonumber(ARGV[4]) + 20 then
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[4]) - 1)
end
local out = {delivered, failed}
for _, request in ipairs(ended) do table.insert(out, request) end
return out
"""

# KEYS: backlog, slots, queued. ARGV: token, group, now. Returns 1 when the task may leave
# (nothing unread is left; its slot is released, and the queued flag with the last slot),
# 0 when new entries arrived and the task must go on.
_FINISH = """
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(groups) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == ARGV[2] then
      local unread = redis.call('XRANGE', KEYS[1], '(' .. info['last-delivered-id'], '+',
        'COUNT', 1)
      if #unread > 0 then return 0 end
    end
  end
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('DEL', KEYS[3]) end
return 1
"""

# KEYS: backlog. ARGV: group, waiting consumer, count, accepted-before (unix seconds).
# Removes up to `count` of the oldest entries no task holds (those waiting after a failure,
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
    id: str
    request_id: str
    accepted_at: float
    size: int


@dataclass(frozen=True)
class BacklogStats:
    """`depth`: entries not yet settled; `in_flight`: held by a task now; `bytes`: trace
    bytes those entries refer to (an estimate: entries x their mean size)."""

    depth: int
    in_flight: int
    bytes: int
    oldest_accepted_at: float | None


@dataclass(frozen=True)
class Settlement:
    """What becomes of one claimed entry. `kind`: `d` delivered, `f` dead letter, `w` wait
    after a failed attempt, `g` given back untried."""

    entry: BacklogEntry
    kind: str
    latency_bucket: str = ""
    latency_ms: float = 0.0
    dead_letter: str = ""


@dataclass(frozen=True)
class Settled:
    """What a settlement counted now, and the request ids of the entries that ended now
    (delivered or dead-lettered): each must release its trace (`TraceStore.release`)."""

    delivered: int
    failed: int
    ended: list[str]


class Backlog:
    def __init__(
        self, client: redis.Redis, *, max_in_flight: int, lease_seconds: float, log_size: int
    ) -> None:
        self.redis = client
        self.max_in_flight = max_in_flight
        self.lease_seconds = lease_seconds
        self.log_size = log_size
        self._begin = client.register_script(_BEGIN)
        self._claim = client.register_script(_CLAIM)
        self._settle = client.register_script(_SETTLE)
        self._finish = client.register_script(_FINISH)
        self._take_oldest = client.register_script(_TAKE_OLDEST)

    # Fan-out

    def create(self, destination_id: str) -> None:
        """Create the stream and its group (idempotent)."""
        try:
            self.redis.xgroup_create(
                keys.destination_part(destination_id, "backlog"), GROUP, id="0", mkstream=True
            )
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
    ) -> None:
        """Queue the append on `pipe`; with `kick`, also `SET NX` the queued flag, whose
        result (True) tells the caller to send a deliver task."""
        pipe.xadd(
            keys.destination_part(destination_id, "backlog"),
            {"r": request_id, "a": f"{accepted_at:.3f}", "n": size},
        )
        if kick:
            self.queue_flag(pipe, destination_id)

    def queue_flag(self, pipe: Any, destination_id: str) -> None:
        """`SET NX` the flag that says a deliver task is queued (expires after the lease)."""
        pipe.set(
            keys.destination_part(destination_id, "queued"),
            "1",
            nx=True,
            px=int(self.lease_seconds * 1000),
        )

    def mark_queued(self, destination_id: str, *, force: bool = False) -> bool:
        """True when the caller must send a task: none was queued or running (or `force`:
        a recovery, a hand-over or a helper for a deep backlog sends one regardless)."""
        key = keys.destination_part(destination_id, "queued")
        ttl = int(self.lease_seconds * 1000)
        return bool(self.redis.set(key, "1", px=ttl, nx=not force))

    def hold(self, destination_id: str, seconds: float) -> None:
        """Keep fan-out from sending tasks for `seconds` (the destination waits that long)."""
        key = keys.destination_part(destination_id, "queued")
        self.redis.set(key, "waiting", px=max(1, int(seconds * 1000)))

    # A deliver task's life

    def begin(
        self,
        destination_id: str,
        token: str,
        now: float,
        *,
        probe_seconds: float,
        recheck_seconds: float,
    ) -> Begin:
        verdict, _ = self._begin(
            keys=[
                keys.destination_part(destination_id, "queued"),
                keys.destination_part(destination_id, "slots"),
                keys.destination_part(destination_id, "health"),
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
        return Begin(verdict.decode())

    def claim(self, destination_id: str, token: str, max_items: int) -> list[BacklogEntry]:
        """Up to `max_items` entries for this task: orphaned ones alone (the batch a dead
        run held, sent again as it was), else waiting, then new."""
        raw = self._claim(
            keys=[keys.destination_part(destination_id, "backlog")],
            args=[GROUP, token, max_items, int(self.lease_seconds * 1000), WAITING],
        )
        return [_entry(entry_id, fields) for entry_id, fields in raw if fields]

    def read_new(
        self, destination_id: str, consumer: str, max_items: int, block_seconds: float
    ) -> list[BacklogEntry]:
        """New entries only, waiting up to `block_seconds` for one to arrive (a task that
        lingers takes the next trace the moment fan-out appends it)."""
        reply = self.redis.xreadgroup(
            GROUP,
            consumer,
            {keys.destination_part(destination_id, "backlog"): ">"},
            count=max_items,
            block=max(int(block_seconds * 1000), 1) if block_seconds > 0 else None,
        )
        if not reply:
            return []
        return [_entry(entry_id, fields) for entry_id, fields in reply[0][1] if fields]

    def touch(self, destination_id: str, token: str, now: float) -> None:
        """Extend this task's slot lease and the queued flag (it is still working)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(
                keys.destination_part(destination_id, "slots"),
                {token: now + self.lease_seconds},
                xx=True,
            )
            pipe.set(
                keys.destination_part(destination_id, "queued"),
                "running",
                px=int(self.lease_seconds * 1000),
            )
            pipe.execute()

    def give_back(self, destination_id: str, entries: Sequence[BacklogEntry]) -> None:
        """Entries claimed but not tried: back to `waiting`, first in line (no attempt)."""
        if entries:
            self.redis.xclaim(
                keys.destination_part(destination_id, "backlog"),
                GROUP,
                WAITING,
                0,
                [entry.id for entry in entries],
                justid=True,
            )

    def settle(
        self,
        destination_id: str,
        settlements: Sequence[Settlement],
        log_entry: dict[str, Any],
        *,
        fresh: bool = False,
    ) -> Settled:
        """Apply settlements and the delivery-log entry atomically; returns what was
        counted now (a raced duplicate counts nothing). `fresh`: every entry came new
        from the stream, so none has failed attempts on record to forget."""
        args: list[Any] = [
            GROUP,
            WAITING,
            json.dumps(log_entry, sort_keys=True),
            self.log_size,
            "fresh" if fresh else "-",
        ]
        for item in settlements:
            args += [
                item.entry.id,
                item.kind,
                item.entry.request_id,
                item.latency_bucket or "-",
                f"{item.latency_ms:.3f}",
                item.dead_letter or "-",
            ]
        part = keys.destination_part
        delivered, failed, *ended = self._settle(
            keys=[
                part(destination_id, "backlog"),
                part(destination_id, "counters"),
                part(destination_id, "latency"),
                part(destination_id, "log"),
                part(destination_id, "dead"),
                part(destination_id, "attempts"),
            ],
            args=args,
        )
        return Settled(int(delivered), int(failed), [r.decode() for r in ended])

    def attempts(self, destination_id: str, request_ids: Sequence[str]) -> dict[str, int]:
        """Failed attempts so far of these requests (0 when never failed)."""
        if not request_ids:
            return {}
        raw = self.redis.hmget(keys.destination_part(destination_id, "attempts"), request_ids)
        return {r: int(v or 0) for r, v in zip(request_ids, raw, strict=True)}

    def finish(self, destination_id: str, token: str, now: float) -> bool:
        """Release this task's slot unless unread entries arrived meanwhile (then go on)."""
        return bool(
            self._finish(
                keys=[
                    keys.destination_part(destination_id, "backlog"),
                    keys.destination_part(destination_id, "slots"),
                    keys.destination_part(destination_id, "queued"),
                ],
                args=[token, GROUP, repr(now)],
            )
        )

    def release(self, destination_id: str, token: str) -> None:
        """Give up this task's slot whatever is left (the task stops early)."""
        self.redis.zrem(keys.destination_part(destination_id, "slots"), token)

    # The sweep and the operator

    def stats(self, destination_id: str, now: float) -> BacklogStats:
        key = keys.destination_part(destination_id, "backlog")
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(key)
            pipe.xrange(key, count=1)
            pipe.xrevrange(key, count=20)
            pipe.zcount(keys.destination_part(destination_id, "slots"), now, "+inf")
            pipe.xpending(key, GROUP) if self._has_group(key) else pipe.echo("")
            depth, first, recent, _tasks, pending = pipe.execute()
        oldest = _entry(*first[0]).accepted_at if first else None
        sizes = [_entry(*item).size for item in recent]
        mean = sum(sizes) / len(sizes) if sizes else 0.0
        waiting = 0
        in_flight = 0
        if isinstance(pending, dict) and pending.get("pending"):
            for consumer in pending.get("consumers") or []:
                if consumer["name"] == WAITING.encode() or consumer["name"] == WAITING:
                    waiting += int(consumer["pending"])
                else:
                    in_flight += int(consumer["pending"])
        return BacklogStats(
            depth=int(depth),
            in_flight=in_flight,
            bytes=int(mean * depth),
            oldest_accepted_at=oldest,
        )

    def needs_task(self, destination_id: str, now: float) -> bool:
        """Work waits and no task is queued or working on it (the sweep then kicks one)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(keys.destination_part(destination_id, "backlog"))
            pipe.exists(keys.destination_part(destination_id, "queued"))
            pipe.zcount(keys.destination_part(destination_id, "slots"), now, "+inf")
            depth, queued, working = pipe.execute()
        return bool(depth) and not queued and not working

    def take_oldest(
        self, destination_id: str, count: int, *, accepted_before: float = float("inf")
    ) -> list[BacklogEntry]:
        """Remove up to `count` of the oldest entries no task holds (accepted before the
        given time); returns them, for the caller to record as dropped or dead letters."""
        raw = self._take_oldest(
            keys=[keys.destination_part(destination_id, "backlog")],
            args=[GROUP, WAITING, count, repr(min(accepted_before, 1e300))],
        )
        return [_entry(entry_id, fields) for entry_id, fields in raw if fields]

    def entries(self, destination_id: str) -> list[BacklogEntry]:
        raw = self.redis.xrange(keys.destination_part(destination_id, "backlog"))
        return [_entry(entry_id, fields) for entry_id, fields in raw]

    def _has_group(self, key: str) -> bool:
        try:
            return any(g["name"] in (GROUP, GROUP.encode()) for g in self.redis.xinfo_groups(key))
        except redis.ResponseError:
            return False


def _entry(entry_id: bytes | str, fields: Any) -> BacklogEntry:
    if isinstance(fields, list):  # raw Lua reply: [k1, v1, k2, v2, ...]
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    return BacklogEntry(
        id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        request_id=fields[b"r"].decode(),
        accepted_at=float(fields[b"a"]),
        size=int(fields[b"n"]),
    )
