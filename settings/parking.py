"""Parked deliveries: the long retry tier, kept in Redis instead of in the broker.

A delivery that the short tier gave up on, or one for a destination whose circuit is open
or whose credentials were rejected, waits here, ordered by when it is next due. A beat
sweep claims due entries with a lease (their score moves to `now + lease`) and enqueues
them; the delivery that follows removes or re-parks its entry. A claimed entry whose
delivery vanished (worker lost) simply comes due again when the lease runs out, so no
entry is lost, and none ever waits in the broker, where Redis would hand it out twice
once the visibility timeout passed.

| key | type | holds |
| --- | --- | --- |
| `bc:parked:due` | sorted set | parked id -> due time (unix seconds) |
| `bc:parked:{id}` | string | the `ParkedDelivery` JSON |
| `bc:destination:{id}:parked` | sorted set | the destination's parked ids -> parked time |
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from typing import Any

import redis

from settings.store import PREFIX, destination_key

DUE_KEY = f"{PREFIX}parked:due"

# Compare-and-set on the score: only the sweep that saw the entry due claims it.
_CLAIM = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class ParkedDelivery:
    """One waiting delivery. `step` indexes the long-tier schedule; `reason` is why it waits."""

    id: str
    destination_id: str
    trace: dict[str, Any]
    accepted_at: float
    parked_at: float
    due_at: float
    step: int
    reason: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> ParkedDelivery:
        return cls(**json.loads(raw))


def parked_key(parked_id: str) -> str:
    return f"{PREFIX}parked:{parked_id}"


def destination_parked_key(destination_id: str) -> str:
    return f"{destination_key(destination_id)}:parked"


class ParkingLot:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._claim = client.register_script(_CLAIM)

    def park(
        self,
        destination_id: str,
        trace: dict[str, Any],
        *,
        accepted_at: float,
        now: float,
        due_at: float,
        step: int,
        reason: str,
        parked_id: str | None = None,
    ) -> ParkedDelivery:
        """Park a delivery (or re-park `parked_id` with a new due time, step and reason)."""
        entry = ParkedDelivery(
            id=parked_id or f"pk_{secrets.token_hex(10)}",
            destination_id=destination_id,
            trace=trace,
            accepted_at=accepted_at,
            parked_at=now,
            due_at=due_at,
            step=step,
            reason=reason,
        )
        with self.redis.pipeline() as pipe:
            pipe.set(parked_key(entry.id), entry.to_json())
            pipe.zadd(DUE_KEY, {entry.id: due_at})
            pipe.zadd(destination_parked_key(destination_id), {entry.id: now}, nx=True)
            pipe.execute()
        return entry

    def get(self, parked_id: str) -> ParkedDelivery | None:
        raw = self.redis.get(parked_key(parked_id))
        return ParkedDelivery.from_json(raw) if raw is not None else None

    def remove(self, entry: ParkedDelivery) -> None:
        with self.redis.pipeline() as pipe:
            pipe.delete(parked_key(entry.id))
            pipe.zrem(DUE_KEY, entry.id)
            pipe.zrem(destination_parked_key(entry.destination_id), entry.id)
            pipe.execute()

    def due(self, now: float, limit: int) -> list[ParkedDelivery]:
        """Entries due at `now`, earliest first (not claimed: call `claim`)."""
        ids = self.redis.zrangebyscore(DUE_KEY, "-inf", now, start=0, num=limit)
        if not ids:
            return []
        raws = self.redis.mget([parked_key(i.decode()) for i in ids])
        entries = []
        for parked_id, raw in zip(ids, raws, strict=True):
            if raw is None:  # removed between the two reads, or a stale index entry
                self.redis.zrem(DUE_KEY, parked_id)
                continue
            entries.append(ParkedDelivery.from_json(raw))
        return entries

    def claim(self, entry: ParkedDelivery, now: float, lease_seconds: float) -> bool:
        """Take a due entry for delivery; False when another sweep took it first."""
        return bool(self._claim(keys=[DUE_KEY], args=[entry.id, now, now + lease_seconds]))

    def postpone(self, entry: ParkedDelivery, until: float) -> None:
        """Move the due time without a delivery (credentials rejected, circuit open)."""
        self.redis.zadd(DUE_KEY, {entry.id: until}, xx=True)

    def release_destination(self, destination_id: str, now: float) -> int:
        """Make every parked delivery of a destination due now (credentials fixed, circuit
        closed). The sweep drains them at its bounded rate. Returns how many."""
        ids = self.redis.zrange(destination_parked_key(destination_id), 0, -1)
        if ids:
            self.redis.zadd(DUE_KEY, {i: now for i in ids}, xx=True)
        return len(ids)

    def for_destination(self, destination_id: str) -> list[ParkedDelivery]:
        ids = self.redis.zrange(destination_parked_key(destination_id), 0, -1)
        if not ids:
            return []
        raws = self.redis.mget([parked_key(i.decode()) for i in ids])
        return [ParkedDelivery.from_json(raw) for raw in raws if raw is not None]

    def count(self, destination_id: str) -> int:
        return int(self.redis.zcard(destination_parked_key(destination_id)))

    def next_due(self, destination_id: str) -> float | None:
        ids = self.redis.zrange(destination_parked_key(destination_id), 0, -1)
        if not ids:
            return None
        with self.redis.pipeline(transaction=False) as pipe:
            for parked_id in ids:
                pipe.zscore(DUE_KEY, parked_id)
            scores = [score for score in pipe.execute() if score is not None]
        return min(scores) if scores else None
