"""Dead letters: deliveries that will not be retried any more, kept for replay.

One Redis stream per destination, `bc:destination:{id}:dead`; stream ids are the time of
dead-lettering, so retention is a `MINID` trim. Replay does not remove an entry: the
vendor de-duplicates by our deterministic ids, so replaying twice delivers once, and the
entry stays listed (marked replayed) until retention drops it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from settings.store import destination_key


@dataclass(frozen=True)
class DeadLetter:
    id: str
    destination_id: str
    request_id: str
    at: float
    reason: str
    trace: dict[str, Any]
    accepted_at: float
    replayed_at: float | None = None


def dead_key(destination_id: str) -> str:
    return f"{destination_key(destination_id)}:dead"


def replayed_key(destination_id: str) -> str:
    return f"{destination_key(destination_id)}:replayed"


class DeadLetters:
    def __init__(self, client: redis.Redis, *, retention_seconds: float) -> None:
        self.redis = client
        self.retention_seconds = retention_seconds

    def add(
        self,
        destination_id: str,
        *,
        trace: dict[str, Any],
        accepted_at: float,
        reason: str,
        now: float,
    ) -> str:
        fields = {
            "request_id": str(trace.get("request_id", "")),
            "at": repr(now),
            "reason": reason,
            "trace": json.dumps(trace, sort_keys=True),
            "accepted_at": repr(accepted_at),
        }
        entry_id = self.redis.xadd(dead_key(destination_id), fields)
        return entry_id.decode()

    def list(
        self,
        destination_id: str,
        *,
        since: float | None = None,
        until: float | None = None,
        ids: list[str] | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """Oldest first. `since`/`until` are unix seconds on the dead-lettering time."""
        start = f"{int(since * 1000)}-0" if since is not None else "-"
        end = f"{int(until * 1000)}-999999" if until is not None else "+"
        raw = self.redis.xrange(dead_key(destination_id), start, end)
        replayed = {
            k.decode(): float(v)
            for k, v in self.redis.hgetall(replayed_key(destination_id)).items()
        }
        letters = []
        for entry_id, fields in raw:
            letter_id = entry_id.decode()
            if ids is not None and letter_id not in ids:
                continue
            letters.append(
                DeadLetter(
                    id=letter_id,
                    destination_id=destination_id,
                    request_id=fields[b"request_id"].decode(),
                    at=float(fields[b"at"]),
                    reason=fields[b"reason"].decode(),
                    trace=json.loads(fields[b"trace"]),
                    accepted_at=float(fields[b"accepted_at"]),
                    replayed_at=replayed.get(letter_id),
                )
            )
        return letters[:limit] if limit is not None else letters

    def count(self, destination_id: str) -> int:
        return int(self.redis.xlen(dead_key(destination_id)))

    def mark_replayed(self, destination_id: str, letter_id: str, now: float) -> None:
        self.redis.hset(replayed_key(destination_id), letter_id, repr(now))

    def trim(self, destination_id: str, now: float) -> int:
        """Drop letters older than the retention; returns how many went."""
        oldest_kept = f"{int((now - self.retention_seconds) * 1000)}-0"
        removed = int(self.redis.xtrim(dead_key(destination_id), minid=oldest_kept))
        if removed:
            kept = {e[0].decode() for e in self.redis.xrange(dead_key(destination_id))}
            stale = [
                k for k in self.redis.hkeys(replayed_key(destination_id)) if k.decode() not in kept
            ]
            if stale:
                self.redis.hdel(replayed_key(destination_id), *stale)
        return removed
