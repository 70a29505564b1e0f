"""Every Redis key name Broadcast uses, in one place, designed for Redis Cluster.

A `{...}` part is a hash tag: keys that share it live in one cluster slot, so one
destination's keys (backlog, state, counters, log, dead letters) can be changed together
by a Lua script or a MULTI. A stored trace has its own tag, and no operation needs
atomicity across a trace and a backlog (the trace is written before any backlog entry
refers to it; an entry whose trace is gone is dead-lettered as such). Owner-level keys
share the owner's tag. Global indexes (`bc:owners`, `bc:backlogs`, ...) each have a slot
of their own and are only ever touched alone.

| key | type | holds |
| --- | --- | --- |
| `bc:owners` | set | every owner that has settings (for `status` without `--owner`) |
| `bc:{o:OWNER}` | hash | `enabled`, `version` (bumped by routing changes), `rejected_events` |
| `bc:{o:OWNER}:destinations` | set | the owner's destination ids |
| `bc:{o:OWNER}:events` | list | the owner's health events, newest first, capped |
| `bc:{o:OWNER}:notify` | hash | notification `url`, `sealed_secret` |
| `bc:{org:ORG}:members` | hash | user id -> role |
| `bc:{d:ID}` | string | the `DestinationRecord` JSON (secrets sealed) |
| `bc:{d:ID}:health` | hash | `HealthRecord` fields |
| `bc:{d:ID}:counters` | hash | delivered, retried, failed, dropped_overflow, filtered_by_key, ... |
| `bc:{d:ID}:latency` | hash | delivery latency histogram: bucket upper bound (s) -> count |
| `bc:{d:ID}:requests` | hash | vendor requests: `CLASS|BOUND` -> count, `sum_ms` (durations) |
| `bc:{d:ID}:log` | list | the latest delivery attempts, newest first, capped |
| `bc:{d:ID}:backlog` | stream | (request id, accepted at, trace bytes) waiting for delivery |
| `bc:{d:ID}:queued` | string | set while a deliver task for the destination is queued |
| `bc:{d:ID}:slots` | sorted set | deliver-task tokens holding an in-flight slot -> lease end |
| `bc:{d:ID}:retry` | sorted set | backlog entry id -> when its retry is due (unix seconds) |
| `bc:{d:ID}:attempts` | hash | request id -> failed attempts, for entries that failed before |
| `bc:{d:ID}:window:N` | hash | the circuit's window, one key per 5 s: `a` attempts, `f` failures |
| `bc:{d:ID}:dead` | stream | dead letters |
| `bc:{d:ID}:replayed` | hash | dead-letter id -> replay time |
| `bc:{d:ID}:replay_delivered` | hash | request id -> when a replay of its letter was delivered |
| `bc:{d:ID}:dead_since_notice` | string | dead letters since the owner was last told |
| `bc:{t:OWNER/REQUEST}` | string | the stored trace (compact, compressed when large) |
| `bc:{t:OWNER/REQUEST}:refs` | string | how many backlogs hold the trace (fan-out completed) |
| `bc:destinations` | set | every destination id (the sweep walks it) |
| `bc:checks:due` | sorted set | destination id -> next credential re-validation |
| `bc:notify:outbox` | list | owner events waiting to be posted |
| `bc:rejected` | list | the latest rejected events (id, owner, reason), capped |
| `bc:rejected:counts` | hash | reason class -> events rejected, ever |
| `bc:events:counts` | hash | `fanned_out`, `filtered`, `duplicate` -> events, ever (see below) |
| `bc:{o:OWNER}:rejected` | list | the owner's latest rejected events, capped, expiring when idle |
| `bc:unreadable:QUEUE` | stream | messages of QUEUE no worker could read: reason, size, sha256 |
| `bc:unreadable:counts` | hash | QUEUE -> unreadable messages set aside, ever |
| `bc:heartbeat:beat` | string | when beat's sweep last ran (unix seconds) |
| `bc:beat:lock` | string | the beat that may send the periodic tasks (its token), expiring |
| `bc:{mkeys}:by_hash` | hash | SHA-256 of a management API key -> its key id |
| `bc:{mkeys}:key:ID` | hash | a management key's `owner`, `name`, `created_at`, `hash` |
| `bc:{mkeys}:owner:OWNER` | set | an owner's management key ids |
| `bc:{apiauth}:failures:ADDRESS` | string | failed API key attempts of a client address, expiring |

`bc:events:counts` is written by each worker process about once a second, with what it
counted since (broadcast_engine/event_tally.py): a counter per event would be a Redis
command more per event.
"""

from __future__ import annotations

PREFIX = "bc:"

OWNERS = f"{PREFIX}owners"
DESTINATIONS = f"{PREFIX}destinations"
CHECKS_DUE = f"{PREFIX}checks:due"
NOTIFY_OUTBOX = f"{PREFIX}notify:outbox"
REJECTED = f"{PREFIX}rejected"
REJECTED_COUNTS = f"{PREFIX}rejected:counts"
EVENT_COUNTS = f"{PREFIX}events:counts"
UNREADABLE_COUNTS = f"{PREFIX}unreadable:counts"
BEAT_HEARTBEAT = f"{PREFIX}heartbeat:beat"
BEAT_LOCK = f"{PREFIX}beat:lock"

# The parts of a destination's key space, deleted with the destination.
DESTINATION_PARTS = (
    "health",
    "counters",
    "latency",
    "requests",
    "log",
    "backlog",
    "queued",
    "slots",
    "retry",
    "attempts",
    "failures",  # the circuit's window before 0.3 (a sorted set); deleted with the rest
    "dead",
    "replayed",
    "replay_delivered",
    "dead_since_notice",
)


def owner(owner_id: str) -> str:
    """`owner_id` is `user:ID` or `org:ID`."""
    return f"{PREFIX}{{o:{owner_id}}}"


def owner_part(owner_id: str, part: str) -> str:
    return f"{owner(owner_id)}:{part}"


def unreadable(queue: str) -> str:
    """Messages of a broker queue that no worker could read
    (broadcast_engine/unreadable_messages.py)."""
    return f"{PREFIX}unreadable:{queue}"


def org_members(org_id: str) -> str:
    return f"{PREFIX}{{org:{org_id}}}:members"


def destination(destination_id: str) -> str:
    return f"{PREFIX}{{d:{destination_id}}}"


def destination_part(destination_id: str, part: str) -> str:
    return f"{destination(destination_id)}:{part}"


def window_bucket(destination_id: str, bucket: int) -> str:
    """One time bucket of the circuit's window (expires on its own after the window)."""
    return destination_part(destination_id, f"window:{bucket}")


def trace(owner_id: str, request_id: str) -> str:
    """The stored trace of one request, with its hold count (broadcast_engine/trace_store.py).
    Keyed by owner too: a request id that another account also sent can never make one
    account's trace reach the other's destinations."""
    return f"{legacy_trace(owner_id, request_id)}:h"


def legacy_trace(owner_id: str, request_id: str) -> str:
    """Where earlier versions stored a trace, its hold count apart (`legacy_trace_refs`);
    still read and released, never written."""
    return f"{PREFIX}{{t:{owner_id}/{request_id}}}"


def legacy_trace_refs(owner_id: str, request_id: str) -> str:
    return f"{legacy_trace(owner_id, request_id)}:refs"


# Management API keys (settings/api_keys.py) share one hash tag: a key is created and
# revoked in one MULTI across its record, the hash index and its owner's set. They are
# few and small, so one slot holds them all.
MANAGEMENT_KEYS_BY_HASH = f"{PREFIX}{{mkeys}}:by_hash"


def management_key(key_id: str) -> str:
    return f"{PREFIX}{{mkeys}}:key:{key_id}"


def management_keys_of(owner_id: str) -> str:
    return f"{PREFIX}{{mkeys}}:owner:{owner_id}"


def auth_failures(address: str) -> str:
    """Failed management-key attempts from one client address
    (broadcast_interfaces/auth_throttle.py)."""
    return f"{PREFIX}{{apiauth}}:failures:{address}"
