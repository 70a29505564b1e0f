"""The settings store on Redis. It knows records and keys, never a vendor.

Key names and their layout (hash tags for Redis Cluster) are in `settings.keys`. Every
operation here touches keys of one slot at a time; indexes that span slots (`bc:owners`,
`bc:destinations`) are written after the record they point to, so a reader never finds an
index entry without its record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from settings import keys
from settings.models import (
    OWNER_PATTERN,
    Circuit,
    DestinationRecord,
    Health,
    HealthRecord,
    OwnerSnapshot,
    Route,
)
from settings.redis_commands import RedisClient

# Rejected events: the latest of all owners together (the operator's view), and the latest
# of each owner on its own, so one owner's flood never erases another's. An owner's list
# expires a week after its last rejection: owners named by broken events need not exist.
REJECTED_LOG_SIZE = 500
REJECTED_PER_OWNER = 500
REJECTED_OWNER_TTL_SECONDS = 7 * 86400
# The owner shown for a rejected event whose ids name no possible owner.
UNKNOWN_OWNER = "(unknown)"
COUNTERS = (
    "delivered",
    "retried",
    "failed",
    "dropped_overflow",
    "filtered_by_key",
    "filtered_by_rule",
    "sampled_out",
    "skipped_disabled",
    "skipped_owner_disabled",
    # Replays, apart from the traces' own outcomes: dead letters queued again, and how
    # those ended (delivered, or dead-lettered again).
    "replayed",
    "replay_delivered",
    "replay_failed",
)
# Upper bounds (seconds) of the delivery latency histogram (accepted -> vendor answered).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
# Upper bounds (seconds) of the vendor request duration histogram (one HTTP request).
REQUEST_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# A vendor request's status class: its status code's hundred, or `error` when no answer
# came (timeout, connection refused or reset, TLS).
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error")
# What fan-out did with events (`bc:events:counts`, broadcast_engine/event_tally.py); the
# rejected ones are counted by reason class in `bc:rejected:counts`.
EVENT_OUTCOMES = ("fanned_out", "filtered", "duplicate")

# KEYS: owner's destination index, owner hash. ARGV: id, type, max per type.
# Counts the owner's destinations of that type and adds this one only below the limit.
_ADD_DESTINATION = """
local same = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 2, #all, 2 do if all[i] == ARGV[2] then same = same + 1 end end
if same >= tonumber(ARGV[3]) then return same end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'version', 1)
return -1
"""


@dataclass(frozen=True)
class LatencyHistogram:
    """`buckets`: (upper bound in seconds, count), not cumulative, the last bound `inf`."""

    buckets: tuple[tuple[float, int], ...]
    sum_seconds: float
    count: int


@dataclass(frozen=True)
class RequestStats:
    """A destination's vendor requests: how many per status class, and their durations
    (`duration.buckets` per bucket, not cumulative, the last bound `inf`)."""

    by_class: dict[str, int]
    duration: LatencyHistogram


def latency_bucket(seconds: float) -> str:
    """The histogram bucket (its upper bound, as stored) a latency falls into."""
    return _bucket(seconds, LATENCY_BUCKETS)


def request_bucket(seconds: float) -> str:
    """The request duration bucket (its upper bound, as stored) a duration falls into."""
    return _bucket(seconds, REQUEST_BUCKETS)


def status_class(status_code: int | None) -> str:
    """`2xx`... for an HTTP status, `error` when there was none (no answer)."""
    if status_code is None or not 100 <= status_code <= 599:
        return "error"
    return f"{status_code // 100}xx"


def _bucket(value: float, bounds: tuple[float, ...]) -> str:
    for bound in bounds:
        if value <= bound:
            return repr(bound)
    return "inf"


def _histogram(raw: Mapping[str, int], bounds: tuple[float, ...], sum_ms: int) -> LatencyHistogram:
    """A histogram from per-bucket counts keyed by the bound as stored (`repr`, `inf`)."""
    names = [*(repr(b) for b in bounds), "inf"]
    buckets = tuple((float(name), raw.get(name, 0)) for name in names)
    return LatencyHistogram(buckets, sum_ms / 1000.0, sum(count for _, count in buckets))


class TooManyDestinations(ValueError):
    pass


class SettingsStore:
    """All reads and writes of broadcast settings. Thread-safe (redis-py pools connections)."""

    def __init__(self, client: RedisClient, *, delivery_log_size: int = 200) -> None:
        self.redis = client
        self.delivery_log_size = delivery_log_size
        self._add = client.register_script(_ADD_DESTINATION)

    # Owners and organizations

    def set_enabled(self, owner: str, enabled: bool) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(keys.owner(owner), "enabled", "1" if enabled else "0")
            pipe.hincrby(keys.owner(owner), "version", 1)
            pipe.execute()
        self.redis.sadd(keys.OWNERS, owner)

    def is_enabled(self, owner: str) -> bool:
        return self.redis.hget(keys.owner(owner), "enabled") == b"1"

    def owner_version(self, owner: str) -> int:
        """The one small read of fan_out's hot path."""
        return int(self.redis.hget(keys.owner(owner), "version") or 0)

    def set_member(self, org_id: str, user_id: str, role: str) -> None:
        self.redis.hset(keys.org_members(org_id), user_id, role)

    def member_role(self, org_id: str, user_id: str) -> str | None:
        role = self.redis.hget(keys.org_members(org_id), user_id)
        return role.decode() if role is not None else None

    # Destinations

    def add_destination(self, record: DestinationRecord, *, max_per_type: int) -> None:
        """Save a new destination unless its owner already has `max_per_type` of its type.

        The count and the insert are one script on the owner's slot, so two concurrent
        adds cannot both squeeze in as the fifth. Raises `TooManyDestinations`.
        """
        self.redis.set(keys.destination(record.id), record.to_json())
        same = int(
            self._add(
                keys=[keys.owner_part(record.owner, "destinations"), keys.owner(record.owner)],
                args=[record.id, record.type, max_per_type],
            )
        )
        if same >= 0:
            self.redis.delete(keys.destination(record.id))
            raise TooManyDestinations(
                f"{record.owner} already has {same} {record.type} destinations "
                f"(at most {max_per_type})"
            )
        self.redis.sadd(keys.DESTINATIONS, record.id)
        self.redis.sadd(keys.OWNERS, record.owner)

    def replace_destination(self, record: DestinationRecord) -> None:
        self.redis.set(keys.destination(record.id), record.to_json())
        self.bump_version(record.owner)

    def set_enabled_flag(self, record: DestinationRecord, enabled: bool, updated_at: str) -> None:
        """Enable or disable a destination as it is stored now (not as `record` was)."""
        current = self.get_destination(record.id) or record
        data = json.loads(current.to_json())
        data.update(enabled=enabled, updated_at=updated_at)
        self.replace_destination(DestinationRecord.from_json(json.dumps(data)))

    def remove_destination(self, record: DestinationRecord) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(keys.owner_part(record.owner, "destinations"), record.id)
            pipe.hincrby(keys.owner(record.owner), "version", 1)
            pipe.srem(keys.DESTINATIONS, record.id)
            pipe.execute()
        self.redis.delete(
            keys.destination(record.id),
            *(keys.destination_part(record.id, part) for part in keys.DESTINATION_PARTS),
        )

    def get_destination(self, destination_id: str) -> DestinationRecord | None:
        raw = self.redis.get(keys.destination(destination_id))
        return DestinationRecord.from_json(raw) if raw is not None else None

    def destination_ids(self, owner: str) -> list[str]:
        return sorted(m.decode() for m in self.redis.hkeys(keys.owner_part(owner, "destinations")))

    def all_destination_ids(self) -> list[str]:
        return sorted(m.decode() for m in self.redis.smembers(keys.DESTINATIONS))

    def list_destinations(self, owner: str) -> list[DestinationRecord]:
        return self.get_destinations(self.destination_ids(owner))

    def get_destinations(self, ids: Iterable[str]) -> list[DestinationRecord]:
        ids = list(ids)
        if not ids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for destination_id in ids:
                pipe.get(keys.destination(destination_id))
            raws = pipe.execute()
        return [DestinationRecord.from_json(raw) for raw in raws if raw is not None]

    def owners(self) -> list[str]:
        """Every owner that has settings (an index, not a key scan)."""
        return sorted(m.decode() for m in self.redis.smembers(keys.OWNERS))

    def owner_snapshot(self, owner: str) -> OwnerSnapshot:
        """Everything fan_out needs for `owner`, read at one version (re-read on a change)."""
        while True:
            state = self.redis.hgetall(keys.owner(owner))
            records = self.list_destinations(owner)
            healths = self.healths(record.id for record in records)
            if self.owner_version(owner) == int(state.get(b"version") or 0):
                break
        return OwnerSnapshot(
            version=int(state.get(b"version") or 0),
            enabled=state.get(b"enabled") == b"1",
            routes=tuple(Route.from_record(record, healths[record.id]) for record in records),
        )

    # Health

    def health(self, destination_id: str) -> HealthRecord:
        return self.healths([destination_id])[destination_id]

    def healths(self, destination_ids: Iterable[str]) -> dict[str, HealthRecord]:
        ids = list(destination_ids)
        with self.redis.pipeline(transaction=False) as pipe:
            for destination_id in ids:
                pipe.hgetall(keys.destination_part(destination_id, "health"))
            raw = pipe.execute()
        return {destination_id: health_from(h) for destination_id, h in zip(ids, raw, strict=True)}

    def set_health(self, record: DestinationRecord, update: Mapping[str, Any]) -> None:
        """Merge `update` into the health record. Changes of status or circuit go through
        `HealthKeeper`, whose transitions also bump the owner's routing version."""
        self.redis.hset(
            keys.destination_part(record.id, "health"),
            mapping={k: str(v) for k, v in update.items()},
        )

    # Counters and logs

    def bump_version(self, owner: str) -> None:
        """Invalidate fan-out caches of `owner` (something that routing reads changed)."""
        self.redis.hincrby(keys.owner(owner), "version", 1)

    def count(self, destination_id: str, counter: str, amount: int = 1) -> None:
        self.redis.hincrby(keys.destination_part(destination_id, "counters"), counter, amount)

    def count_many(self, increments: Iterable[tuple[str, str]], pipe: Any | None = None) -> None:
        """Increment several (destination id, counter) pairs in one round trip (or on `pipe`)."""
        target = pipe if pipe is not None else self.redis.pipeline(transaction=False)
        for destination_id, counter in increments:
            target.hincrby(keys.destination_part(destination_id, "counters"), counter, 1)
        if pipe is None:
            target.execute()

    def counters(self, destination_id: str) -> dict[str, int]:
        raw = self.redis.hgetall(keys.destination_part(destination_id, "counters"))
        values = {name: 0 for name in COUNTERS}
        values.update({k.decode(): int(v) for k, v in raw.items()})
        return values

    def latency_histogram(self, destination_id: str) -> LatencyHistogram:
        return self.latency_histograms([destination_id])[destination_id]

    # Many destinations at once, one round trip each (the metrics scrape)

    def counters_many(self, destination_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        """`counters` of each destination."""
        raw = self._hgetall_parts(destination_ids, "counters")
        return {
            destination_id: {**dict.fromkeys(COUNTERS, 0), **values}
            for destination_id, values in raw.items()
        }

    def latency_histograms(self, destination_ids: Iterable[str]) -> dict[str, LatencyHistogram]:
        """The delivery latency histogram of each destination."""
        return {
            destination_id: _histogram(raw, LATENCY_BUCKETS, raw.get("sum_ms", 0))
            for destination_id, raw in self._hgetall_parts(destination_ids, "latency").items()
        }

    def request_stats(self, destination_ids: Iterable[str]) -> dict[str, RequestStats]:
        """Vendor requests of each destination, by status class, and their durations
        (written by the backlog's settle script, once per batch)."""
        out: dict[str, RequestStats] = {}
        for destination_id, raw in self._hgetall_parts(destination_ids, "requests").items():
            by_class = dict.fromkeys(STATUS_CLASSES, 0)
            by_bucket: dict[str, int] = {}
            for name, count in raw.items():
                klass, separator, bound = name.partition("|")
                if separator:
                    by_class[klass] = by_class.get(klass, 0) + count
                    by_bucket[bound] = by_bucket.get(bound, 0) + count
            duration = _histogram(by_bucket, REQUEST_BUCKETS, raw.get("sum_ms", 0))
            out[destination_id] = RequestStats(by_class, duration)
        return out

    def _hgetall_parts(
        self, destination_ids: Iterable[str], part: str
    ) -> dict[str, dict[str, int]]:
        ids = list(destination_ids)
        with self.redis.pipeline(transaction=False) as pipe:
            for destination_id in ids:
                pipe.hgetall(keys.destination_part(destination_id, part))
            replies = pipe.execute()
        return {
            destination_id: {k.decode(): int(v) for k, v in reply.items()}
            for destination_id, reply in zip(ids, replies, strict=True)
        }

    def event_counts(self) -> dict[str, int]:
        """What fan-out did with events, ever (`EVENT_OUTCOMES`)."""
        raw = self.redis.hgetall(keys.EVENT_COUNTS)
        return {**dict.fromkeys(EVENT_OUTCOMES, 0), **{k.decode(): int(v) for k, v in raw.items()}}

    def rejected_counts(self) -> dict[str, int]:
        """Events rejected, ever, by reason class (`broadcast_engine.events.RejectReason`)."""
        return {k.decode(): int(v) for k, v in self.redis.hgetall(keys.REJECTED_COUNTS).items()}

    def record_attempt(self, destination_id: str, entry: Mapping[str, Any]) -> None:
        key = keys.destination_part(destination_id, "log")
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(key, json.dumps(entry, sort_keys=True))
            pipe.ltrim(key, 0, self.delivery_log_size - 1)
            pipe.execute()

    def attempts(self, destination_id: str, limit: int) -> list[dict[str, Any]]:
        raw = self.redis.lrange(keys.destination_part(destination_id, "log"), 0, max(limit, 1) - 1)
        return [json.loads(item) for item in raw]

    def record_rejected_event(
        self, owner: str | None, entry: Mapping[str, Any], *, reason_class: str = "invalid"
    ) -> None:
        """Keep a rejected event in the latest of all owners and, when `owner` is a
        possible owner id, in the owner's own list; count it for an owner that has
        settings, and under `reason_class` for all (the metrics). The JSON escapes every
        non-ASCII character, so no string in `entry` (a lone surrogate included) can fail
        to encode. Raises only `redis.RedisError`."""
        text = json.dumps(entry, sort_keys=True)
        owned = owner if owner is not None and OWNER_PATTERN.match(owner) is not None else None
        known = owned is not None and bool(self.redis.sismember(keys.OWNERS, owned))
        with self.redis.pipeline(transaction=False) as pipe:
            if owned is not None:
                key = keys.owner_part(owned, "rejected")
                pipe.lpush(key, text)
                pipe.ltrim(key, 0, REJECTED_PER_OWNER - 1)
                pipe.expire(key, REJECTED_OWNER_TTL_SECONDS)
            if owned is not None and known:
                pipe.hincrby(keys.owner(owned), "rejected_events", 1)
            pipe.lpush(keys.REJECTED, text)
            pipe.ltrim(keys.REJECTED, 0, REJECTED_LOG_SIZE - 1)
            pipe.hincrby(keys.REJECTED_COUNTS, reason_class, 1)
            pipe.execute()

    def rejected_events(self, owner: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The latest rejected events, newest first: `owner`'s, or of all owners."""
        key = keys.owner_part(owner, "rejected") if owner is not None else keys.REJECTED
        raw = self.redis.lrange(key, 0, max(limit, 1) - 1)
        return [json.loads(item) for item in raw]

    def rejected_count(self, owner: str) -> int:
        return int(self.redis.hget(keys.owner(owner), "rejected_events") or 0)


def health_from(raw: Mapping[bytes, bytes]) -> HealthRecord:
    """A `HealthRecord` from the health hash as Redis answers it (missing fields default)."""
    known = {spec.name for spec in fields(HealthRecord)}
    values: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items() if k.decode() in known}
    values["status"] = Health(values.get("status", Health.HEALTHY))
    values["circuit"] = Circuit(values.get("circuit", Circuit.CLOSED))
    for name in ("circuit_opened_at", "probe_at", "backoff_until"):
        values[name] = float(values.get(name) or 0.0)
    for name in ("consecutive_failures", "probe_step"):
        values[name] = int(values.get(name) or 0)
    return HealthRecord(**values)
