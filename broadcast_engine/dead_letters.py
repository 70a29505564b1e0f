"""Dead letters: deliveries that will not be retried any more, kept for replay.

One Redis stream per destination (`keys.destination_part(id, "dead")`), one field
`letter` holding the JSON of a `DeadLetter` (with its own copy of the trace, so replay
works for the whole retention even after the stored trace expired); stream ids are the
time of dead-lettering, so retention is a `MINID` trim. Letters are written by the
backlog's settle script, in the same atomic step that acknowledges the entry. Replay does
not remove a letter: it stays listed until retention drops it, marked replayed (hash
`replayed`: letter id -> when) and, once the settle script delivered a replay of its
request, marked delivered (hash `replay_delivered`: request id -> when; per request,
because a replay that fails again makes a second letter of the same trace). A replay
skips a request whose replay was delivered unless asked `again`; the vendor
de-duplicates by our deterministic ids anyway, so a replay sent twice delivers once.
"""

from __future__ import annotations

import builtins
import json
from dataclasses import dataclass
from typing import Any

from settings import keys
from settings.redis_commands import RedisClient


@dataclass(frozen=True)
class DeadLetter:
    id: str
    destination_id: str
    request_id: str
    owner: str
    at: float
    reason: str
    trace: dict[str, Any] | None
    accepted_at: float
    attempts: int = 0
    replayed_at: float | None = None
    replay_delivered_at: float | None = None


def letter_json(
    *,
    request_id: str,
    owner: str,
    reason: str,
    trace: dict[str, Any] | None,
    accepted_at: float,
    attempts: int,
    now: float,
) -> str:
    """The `letter` field of a dead-letter stream entry."""
    return json.dumps(
        {
            "request_id": request_id,
            "owner": owner,
            "at": now,
            "reason": reason,
            "trace": trace,
            "accepted_at": accepted_at,
            "attempts": attempts,
        },
        separators=(",", ":"),
        sort_keys=True,
    )


class DeadLetters:
    def __init__(self, client: RedisClient, *, retention_seconds: float) -> None:
        self.redis = client
        self.retention_seconds = retention_seconds

    def add(self, destination_id: str, letter: str) -> str:
        """Append a letter made by `letter_json` (outside a batch: the sweep, a disable)."""
        entry_id = self.redis.xadd(
            keys.destination_part(destination_id, "dead"), {"letter": letter}
        )
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
        """Oldest first. `since`/`until` are unix seconds on the dead-lettering time;
        `ids`: only letters whose letter id or request id is one of them."""
        start = f"{int(since * 1000)}-0" if since is not None else "-"
        end = f"{int(until * 1000)}-999999" if until is not None else "+"
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrange(keys.destination_part(destination_id, "dead"), start, end)
            pipe.hgetall(keys.destination_part(destination_id, "replayed"))
            pipe.hgetall(keys.destination_part(destination_id, "replay_delivered"))
            raw, replayed_raw, delivered_raw = pipe.execute()
        replayed = {k.decode(): float(v) for k, v in replayed_raw.items()}
        delivered = {k.decode(): float(v) for k, v in delivered_raw.items()}
        wanted = set(ids) if ids is not None else None
        letters = []
        for entry_id, fields in raw:
            letter_id = entry_id.decode()
            data = json.loads(fields[b"letter"])
            if wanted is not None and not {letter_id, data["request_id"]} & wanted:
                continue
            letters.append(
                DeadLetter(
                    id=letter_id,
                    destination_id=destination_id,
                    request_id=data["request_id"],
                    owner=data["owner"],
                    at=float(data["at"]),
                    reason=data["reason"],
                    trace=data["trace"],
                    accepted_at=float(data["accepted_at"]),
                    attempts=int(data.get("attempts", 0)),
                    replayed_at=replayed.get(letter_id),
                    replay_delivered_at=delivered.get(data["request_id"]),
                )
            )
        return letters[:limit] if limit is not None else letters

    def count(self, destination_id: str) -> int:
        return int(self.redis.xlen(keys.destination_part(destination_id, "dead")))

    def counts(self, destination_ids: builtins.list[str]) -> dict[str, int]:
        """Letters kept (within the retention) per destination, in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for destination_id in destination_ids:
                pipe.xlen(keys.destination_part(destination_id, "dead"))
            replies = pipe.execute()
        return {d: int(n) for d, n in zip(destination_ids, replies, strict=True)}

    def mark_replayed(self, destination_id: str, letter_id: str, now: float) -> None:
        self.redis.hset(keys.destination_part(destination_id, "replayed"), letter_id, repr(now))

    def trim(self, destination_id: str, now: float) -> int:
        """Drop letters older than the retention, and the replay marks of letters (and
        requests) no longer kept; returns how many letters went."""
        key = keys.destination_part(destination_id, "dead")
        replayed_key = keys.destination_part(destination_id, "replayed")
        delivered_key = keys.destination_part(destination_id, "replay_delivered")
        oldest_kept = f"{int((now - self.retention_seconds) * 1000)}-0"
        removed = int(self.redis.xtrim(key, minid=oldest_kept))
        if removed:
            kept = self.redis.xrange(key)
            kept_ids = {entry_id.decode() for entry_id, _ in kept}
            kept_requests = {json.loads(fields[b"letter"])["request_id"] for _, fields in kept}
            for hash_key, still in ((replayed_key, kept_ids), (delivered_key, kept_requests)):
                stale = [k for k in self.redis.hkeys(hash_key) if k.decode() not in still]
                if stale:
                    self.redis.hdel(hash_key, *stale)
        return removed
