"""The settings store on Redis. It knows records and keys, never a vendor.

Key layout (prefix `bc:`):

| key | type | holds |
| --- | --- | --- |
| `bc:owner:{owner}` | hash | `enabled`, `version` (bumped by routing changes), `rejected_events` |
| `bc:owner:{owner}:destinations` | set | the owner's destination ids |
| `bc:org:{org}:members` | hash | user id -> role |
| `bc:destination:{id}` | string | the `DestinationRecord` JSON (secrets sealed) |
| `bc:destination:{id}:health` | hash | `HealthRecord` fields |
| `bc:destination:{id}:counters` | hash | delivered, retried, failed, filtered_by_key, ... |
| `bc:destination:{id}:log` | list | the latest delivery attempts, newest first, capped |
| `bc:rejected` | list | the latest rejected events (id, owner, reason), capped |
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

import redis

from settings.models import (
    Circuit,
    DestinationRecord,
    Health,
    HealthRecord,
    OwnerSnapshot,
    Route,
)

PREFIX = "bc:"
REJECTED_LOG_SIZE = 500
COUNTERS = (
    "delivered",
    "retried",
    "failed",
    "filtered_by_key",
    "sampled_out",
    "skipped_disabled",
    "skipped_owner_disabled",
    "parked",
)


# Every key kept under `bc:destination:{id}:` (deleted with the destination).
DESTINATION_PARTS = (
    "health",
    "counters",
    "log",
    "parked",
    "dead",
    "replayed",
    "failures",
    "dead_since_notice",
)


class TooManyDestinations(ValueError):
    pass


def owner_key(owner: str) -> str:
    return f"{PREFIX}owner:{owner}"


def destination_key(destination_id: str) -> str:
    return f"{PREFIX}destination:{destination_id}"


class SettingsStore:
    """All reads and writes of broadcast settings. Thread-safe (redis-py pools connections)."""

    def __init__(self, client: redis.Redis, *, delivery_log_size: int = 200) -> None:
        self.redis = client
        self.delivery_log_size = delivery_log_size

    @classmethod
    def from_url(cls, url: str, *, delivery_log_size: int = 200) -> SettingsStore:
        return cls(redis.Redis.from_url(url), delivery_log_size=delivery_log_size)

    # Owners and organizations

    def set_enabled(self, owner: str, enabled: bool) -> None:
        with self.redis.pipeline() as pipe:
            pipe.hset(owner_key(owner), "enabled", "1" if enabled else "0")
            pipe.hincrby(owner_key(owner), "version", 1)
            pipe.execute()

    def is_enabled(self, owner: str) -> bool:
        return self.redis.hget(owner_key(owner), "enabled") == b"1"

    def owner_version(self, owner: str) -> int:
        """The one small read of fan_out's hot path."""
        return int(self.redis.hget(owner_key(owner), "version") or 0)

    def set_member(self, org_id: str, user_id: str, role: str) -> None:
        self.redis.hset(f"{PREFIX}org:{org_id}:members", user_id, role)

    def member_role(self, org_id: str, user_id: str) -> str | None:
        role = self.redis.hget(f"{PREFIX}org:{org_id}:members", user_id)
        return role.decode() if role is not None else None

    # Destinations

    def add_destination(self, record: DestinationRecord, *, max_per_type: int) -> None:
        """Save a new destination unless its owner already has `max_per_type` of its type.

        Optimistic: the owner's version key is watched, so two concurrent adds cannot both
        squeeze in as the fifth. Raises `TooManyDestinations`.
        """
        key = owner_key(record.owner)
        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    same_type = [
                        r for r in self.list_destinations(record.owner) if r.type == record.type
                    ]
                    if len(same_type) >= max_per_type:
                        raise TooManyDestinations(
                            f"{record.owner} already has {len(same_type)} {record.type} "
                            f"destinations (at most {max_per_type})"
                        )
                    pipe.multi()
                    pipe.set(destination_key(record.id), record.to_json())
                    pipe.sadd(f"{key}:destinations", record.id)
                    pipe.hincrby(key, "version", 1)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def replace_destination(self, record: DestinationRecord) -> None:
        with self.redis.pipeline() as pipe:
            pipe.set(destination_key(record.id), record.to_json())
            pipe.hincrby(owner_key(record.owner), "version", 1)
            pipe.execute()

    def remove_destination(self, record: DestinationRecord) -> None:
        base = destination_key(record.id)
        with self.redis.pipeline() as pipe:
            pipe.delete(base, *(f"{base}:{part}" for part in DESTINATION_PARTS))
            pipe.srem(f"{owner_key(record.owner)}:destinations", record.id)
            pipe.hincrby(owner_key(record.owner), "version", 1)
            pipe.execute()

    def get_destination(self, destination_id: str) -> DestinationRecord | None:
        raw = self.redis.get(destination_key(destination_id))
        return DestinationRecord.from_json(raw) if raw is not None else None

    def list_destinations(self, owner: str) -> list[DestinationRecord]:
        ids = sorted(m.decode() for m in self.redis.smembers(f"{owner_key(owner)}:destinations"))
        if not ids:
            return []
        raws = self.redis.mget([destination_key(i) for i in ids])
        return [DestinationRecord.from_json(raw) for raw in raws if raw is not None]

    def owners(self) -> list[str]:
        owners = []
        for key in self.redis.scan_iter(match=f"{PREFIX}owner:*", count=500):
            name = key.decode()[len(PREFIX) + len("owner:") :]
            if not name.endswith(":destinations"):
                owners.append(name)
        return sorted(owners)

    def owner_snapshot(self, owner: str) -> OwnerSnapshot:
        """Everything fan_out needs for `owner`, read at one version."""
        key = owner_key(owner)
        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    state = pipe.hgetall(key)
                    records = self.list_destinations(owner)
                    healths = self._healths(record.id for record in records)
                    pipe.multi()
                    pipe.hget(key, "version")
                    pipe.execute()
                except redis.WatchError:
                    continue
            return OwnerSnapshot(
                version=int(state.get(b"version") or 0),
                enabled=state.get(b"enabled") == b"1",
                routes=tuple(
                    Route(
                        id=record.id,
                        type=record.type,
                        enabled=record.enabled,
                        health=healths[record.id].status,
                        circuit=healths[record.id].circuit,
                        api_keys=frozenset(record.api_keys),
                        exclude_api_keys=frozenset(record.exclude_api_keys),
                        sampling_rate=record.sampling_rate,
                    )
                    for record in records
                ),
            )

    # Health

    def health(self, destination_id: str) -> HealthRecord:
        return self._healths([destination_id])[destination_id]

    def _healths(self, destination_ids: Iterable[str]) -> dict[str, HealthRecord]:
        ids = list(destination_ids)
        with self.redis.pipeline(transaction=False) as pipe:
            for destination_id in ids:
                pipe.hgetall(f"{destination_key(destination_id)}:health")
            raw = pipe.execute()
        return {destination_id: _health_from(h) for destination_id, h in zip(ids, raw, strict=True)}

    def set_health(self, record: DestinationRecord, update: Mapping[str, Any]) -> HealthRecord:
        """Merge `update` into the health record; bump the owner's version when the status or
        the circuit changes (fan-out routes on both).

        Returns the health as it was before the update.
        """
        key = f"{destination_key(record.id)}:health"
        before = self.health(record.id)
        routing_changed = ("status" in update and update["status"] != before.status) or (
            "circuit" in update and update["circuit"] != before.circuit
        )
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={k: str(v) for k, v in update.items()})
            if routing_changed:
                pipe.hincrby(owner_key(record.owner), "version", 1)
            pipe.execute()
        return before

    # Counters and logs

    def bump_version(self, owner: str) -> None:
        """Invalidate fan-out caches of `owner` (something that routing reads changed)."""
        self.redis.hincrby(owner_key(owner), "version", 1)

    def count(self, destination_id: str, counter: str, amount: int = 1) -> None:
        self.redis.hincrby(f"{destination_key(destination_id)}:counters", counter, amount)

    def count_many(self, increments: Iterable[tuple[str, str]]) -> None:
        """Increment several (destination id, counter) pairs in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for destination_id, counter in increments:
                pipe.hincrby(f"{destination_key(destination_id)}:counters", counter, 1)
            pipe.execute()

    def counters(self, destination_id: str) -> dict[str, int]:
        raw = self.redis.hgetall(f"{destination_key(destination_id)}:counters")
        values = {name: 0 for name in COUNTERS}
        values.update({k.decode(): int(v) for k, v in raw.items()})
        return values

    def record_attempt(self, destination_id: str, entry: Mapping[str, Any]) -> None:
        key = f"{destination_key(destination_id)}:log"
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(key, json.dumps(entry, sort_keys=True))
            pipe.ltrim(key, 0, self.delivery_log_size - 1)
            pipe.execute()

    def attempts(self, destination_id: str, limit: int) -> list[dict[str, Any]]:
        raw = self.redis.lrange(f"{destination_key(destination_id)}:log", 0, max(limit, 1) - 1)
        return [json.loads(item) for item in raw]

    def record_rejected_event(self, owner: str | None, entry: Mapping[str, Any]) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            if owner:
                pipe.hincrby(owner_key(owner), "rejected_events", 1)
            pipe.lpush(f"{PREFIX}rejected", json.dumps(entry, sort_keys=True))
            pipe.ltrim(f"{PREFIX}rejected", 0, REJECTED_LOG_SIZE - 1)
            pipe.execute()

    def rejected_events(self, owner: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        raw = self.redis.lrange(f"{PREFIX}rejected", 0, REJECTED_LOG_SIZE - 1)
        entries = [json.loads(item) for item in raw]
        if owner is not None:
            entries = [e for e in entries if e.get("owner") == owner]
        return entries[:limit]

    def rejected_count(self, owner: str) -> int:
        return int(self.redis.hget(owner_key(owner), "rejected_events") or 0)


def _health_from(raw: Mapping[bytes, bytes]) -> HealthRecord:
    known = {spec.name for spec in fields(HealthRecord)}
    values: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items() if k.decode() in known}
    values["status"] = Health(values.get("status", Health.HEALTHY))
    values["circuit"] = Circuit(values.get("circuit", Circuit.CLOSED))
    for name in ("circuit_opened_at", "probe_at"):
        values[name] = float(values.get(name) or 0.0)
    return HealthRecord(**values)
