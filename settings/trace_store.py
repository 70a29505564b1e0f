"""Stored traces: each accepted trace is written once and read by every destination's batch.

A trace is stored as compact JSON of `Trace.to_wire()`, zlib-compressed when that pays,
under `keys.trace(owner, request_id)`. Backlog entries, deliver tasks and dead letters refer
to it by (owner, request id); no task message carries a trace.

How long it lives:
- every trace lives `ttl` (a few minutes) from fan-out: enough for every destination that
  keeps up, and deleted by Redis itself afterwards, at no cost per delivery;
- a destination that falls behind (an outage, a slow vendor) has its lagging entries'
  traces *retained* by beat's sweep: each retention adds a reference (`keys.trace_refs`)
  and extends the trace to the retry horizon; settling or dropping a retained entry
  releases its reference, and the last release hands the trace back to its original
  expiry. So a trace lives while some backlog still needs it, and a healthy destination
  costs no more than the few minutes of traffic it is working through.

Fan-out writes a trace with its codec byte in upper case ("pending") and lowers it in the
same round trip that appends to the backlogs: a redelivered fan-out that finds a lower-case
byte knows the earlier run completed; an upper-case one means it died in between.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
import redis

from destinations.json_body import compact_json
from destinations.trace import Trace
from settings import keys

COMPRESS_FROM_BYTES = 1024
RAW, ZLIB = b"j", b"z"
_CODECS = {b"j": RAW, b"J": RAW, b"z": ZLIB, b"Z": ZLIB}


class Written(StrEnum):
    """What `claim` found: a new trace, one whose fan-out completed, or an interrupted one."""

    NEW = "new"
    COMPLETE = "complete"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class StoredTrace:
    owner: str
    request_id: str
    size: int
    codec: bytes


def encode(wire: dict[str, Any]) -> bytes:
    """Compact JSON, compressed when that pays. The first byte names the codec."""
    raw = compact_json(wire)
    if len(raw) >= COMPRESS_FROM_BYTES:
        packed = zlib.compress(raw, 6)
        if len(packed) < len(raw):
            return ZLIB + packed
    return RAW + raw


def decode(blob: bytes) -> dict[str, Any]:
    """Inverse of `encode` (pending or not). Raises `ValueError` on bytes it did not write."""
    codec, body = _CODECS.get(blob[:1]), blob[1:]
    if codec is None:
        raise ValueError("not a stored trace")
    if codec == ZLIB:
        body = zlib.decompress(body)
    return orjson.loads(body)


class TraceStore:
    def __init__(self, client: redis.Redis, *, ttl_seconds: float) -> None:
        self.redis = client
        self.ttl_seconds = ttl_seconds

    # Fan-out

    def claim(self, trace: Trace) -> tuple[Written, StoredTrace]:
        """Store the trace, marked pending, unless it is stored already (one round trip, two
        when it is: then whether the earlier fan-out completed)."""
        blob = encode(trace.to_wire())
        stored = StoredTrace(trace.owner, trace.request_id, len(blob), blob[:1])
        key = keys.trace(trace.owner, trace.request_id)
        if self.redis.set(key, blob[:1].upper() + blob[1:], nx=True, px=self._ttl_ms()):
            return Written.NEW, stored
        first = self.redis.getrange(key, 0, 0)
        return (Written.INTERRUPTED if first.isupper() else Written.COMPLETE), stored

    def complete(self, pipe: Any, stored: StoredTrace) -> None:
        """Queue, on fan-out's pipeline after its appends, the mark that it completed."""
        pipe.setrange(keys.trace(stored.owner, stored.request_id), 0, stored.codec)

    def restore(self, trace: Trace) -> StoredTrace:
        """Store a trace again for a replay, unless it is still stored (kept as it is)."""
        blob = encode(trace.to_wire())
        self.redis.set(keys.trace(trace.owner, trace.request_id), blob, px=self._ttl_ms(), nx=True)
        return StoredTrace(trace.owner, trace.request_id, len(blob), blob[:1])

    # Deliver tasks

    def get_many(self, owner: str, request_ids: Sequence[str]) -> dict[str, Trace | None]:
        """The traces by request id; None for one that expired or cannot be read."""
        if not request_ids:
            return {}
        names = [keys.trace(owner, request_id) for request_id in request_ids]
        if isinstance(self.redis, redis.RedisCluster):
            blobs = self.redis.mget_nonatomic(names)  # one slot per trace: split by node
        else:
            blobs = self.redis.mget(names)
        return {
            request_id: _trace_or_none(blob)
            for request_id, blob in zip(request_ids, blobs, strict=True)
        }

    def get_wire(self, owner: str, request_id: str) -> dict[str, Any] | None:
        blob = self.redis.get(keys.trace(owner, request_id))
        return decode(blob) if blob is not None else None

    # Retention of lagging entries (beat's sweep) and its release

    def retain(self, owner: str, entries: Iterable[tuple[str, float]], until: float) -> list[str]:
        """Keep each (request id, accepted at) trace until `until`, one reference each.

        Returns the request ids whose trace was already gone (their entries will be
        dead-lettered as expired).
        """
        entries = list(entries)
        if not entries:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for request_id, _ in entries:
                pipe.pexpireat(keys.trace(owner, request_id), int(until * 1000))
                pipe.incr(keys.trace_refs(owner, request_id))
                pipe.pexpireat(keys.trace_refs(owner, request_id), int(until * 1000))
            results = pipe.execute()
        kept = results[::3]
        return [request_id for (request_id, _), ok in zip(entries, kept, strict=True) if not ok]

    def release(self, owner: str, entries: Iterable[tuple[str, float]], now: float) -> None:
        """Drop one reference per (request id, accepted at); a trace nobody retains any more
        goes back to its original expiry (at once when that has passed)."""
        entries = list(entries)
        if not entries:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for request_id, _ in entries:
                pipe.decr(keys.trace_refs(owner, request_id))
            remaining = pipe.execute()
        with self.redis.pipeline(transaction=False) as pipe:
            for (request_id, accepted_at), left in zip(entries, remaining, strict=True):
                if left > 0:
                    continue
                expiry = accepted_at + self.ttl_seconds
                trace_key = keys.trace(owner, request_id)
                if expiry <= now:
                    pipe.delete(trace_key, keys.trace_refs(owner, request_id))
                else:
                    pipe.pexpireat(trace_key, int(expiry * 1000))
                    pipe.delete(keys.trace_refs(owner, request_id))
            pipe.execute()

    def _ttl_ms(self) -> int:
        return math.ceil(self.ttl_seconds * 1000)


def _trace_or_none(blob: bytes | None) -> Trace | None:
    if blob is None:
        return None
    try:
        return Trace.from_wire(decode(blob))
    except (ValueError, TypeError, KeyError, zlib.error):
        return None
