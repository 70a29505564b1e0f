"""Stored traces: each accepted trace is written once and read by every destination's batch.

A trace is stored as compact JSON of `Trace.to_wire()`, zlib-compressed when that pays,
under `keys.trace(owner, request_id)`. Backlog entries, deliver tasks and dead letters refer
to it by (owner, request id); no task message carries a trace.

How long it lives: while some backlog still needs it.
- Fan-out writes it with a TTL that covers the retry horizon (`lifetime_seconds`), then,
  in the transaction that appends it to the backlogs, its hold count (`keys.trace_refs`):
  one per backlog it was appended to.
- Each backlog entry that ends (delivered, dead-lettered, dropped) releases one hold,
  exactly once: the backlog's own scripts say which entries they settled now. The last
  release keeps the trace only `keep_after_seconds` more, so a redelivered fan-out or an
  event the gateway sent twice still finds it and is recognised. A healthy destination
  therefore costs its in-flight traces plus those few minutes of traffic; a lagging one
  holds its traces up to the horizon (bounded by the budget, see `backlog_upkeep`).
- A hold lost to a crash between a settlement and its release only lets the trace live to
  its TTL. Nothing here needs beat.

The hold count doubles as fan-out's completion mark: a trace stored without one means the
fan-out that wrote it died before its appends; with one, the fan-out completed.
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
from settings.redis_commands import RedisClient

COMPRESS_FROM_BYTES = 1024
RAW, ZLIB = b"j", b"z"
# Upper case: written by an earlier version, which marked a fan-out in progress that way.
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
    trace: dict[str, Any] = orjson.loads(body)  # `encode` wrote a JSON object
    return trace


@dataclass(frozen=True)
class Completion:
    """A key to set to `value` (with a TTL) in the same atomic step as fan-out's appends."""

    key: str
    value: int
    ttl_ms: int


class TraceStore:
    def __init__(
        self, client: RedisClient, *, lifetime_seconds: float, keep_after_seconds: float
    ) -> None:
        self.redis = client
        self.lifetime_seconds = lifetime_seconds
        self.keep_after_seconds = keep_after_seconds

    # Fan-out

    def claim(self, trace: Trace) -> tuple[Written, StoredTrace]:
        """Store the trace unless it is stored already (one round trip, two when it is:
        then whether the fan-out that stored it completed)."""
        blob = encode(trace.to_wire())
        stored = StoredTrace(trace.owner, trace.request_id, len(blob), blob[:1])
        key = keys.trace(trace.owner, trace.request_id)
        if self.redis.set(key, blob, nx=True, px=_ms(self.lifetime_seconds)):
            return Written.NEW, stored
        holds = keys.trace_refs(trace.owner, trace.request_id)
        return (Written.COMPLETE if self.redis.exists(holds) else Written.INTERRUPTED), stored

    def completion(self, stored: StoredTrace, holders: int) -> Completion:
        """The hold count fan-out writes with its appends, in the same atomic step: one per
        backlog the trace was appended to (also the mark that fan-out completed)."""
        return Completion(
            keys.trace_refs(stored.owner, stored.request_id), holders, _ms(self.lifetime_seconds)
        )

    def complete(self, pipe: Any, stored: StoredTrace, holders: int) -> None:
        """Queue the hold count (`completion`) on `pipe`."""
        completion = self.completion(stored, holders)
        pipe.set(completion.key, completion.value, px=completion.ttl_ms)

    def restore(self, trace: Trace) -> StoredTrace:
        """Store a trace again for a replay (unless it is still stored) with one more hold:
        the caller appends it to one backlog."""
        blob = encode(trace.to_wire())
        key, holds = (
            keys.trace(trace.owner, trace.request_id),
            keys.trace_refs(trace.owner, trace.request_id),
        )
        lifetime = _ms(self.lifetime_seconds)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(key, blob, px=lifetime, nx=True)
            pipe.pexpire(key, lifetime)
            pipe.incr(holds)
            pipe.pexpire(holds, lifetime)
            pipe.execute()
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

    # Backlog entries that ended

    def release(self, owner: str, request_ids: Iterable[str]) -> None:
        """One backlog is done with each of these traces (call once per ended entry). A
        trace no backlog holds any more is kept `keep_after_seconds` longer, then expires.
        A trace without a hold count (stored by an earlier version) keeps its own TTL."""
        request_ids = list(request_ids)
        if not request_ids:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for request_id in request_ids:
                pipe.decr(keys.trace_refs(owner, request_id))
            left = pipe.execute()
        keep = _ms(self.keep_after_seconds)
        with self.redis.pipeline(transaction=False) as pipe:
            for request_id, holds in zip(request_ids, left, strict=True):
                if holds == 0:
                    pipe.pexpire(keys.trace(owner, request_id), keep)
                    pipe.pexpire(keys.trace_refs(owner, request_id), keep)
                elif holds < 0:  # no count was kept: DECR just created one
                    pipe.delete(keys.trace_refs(owner, request_id))
            pipe.execute()


def _ms(seconds: float) -> int:
    return math.ceil(seconds * 1000)


def _trace_or_none(blob: bytes | None) -> Trace | None:
    if blob is None:
        return None
    try:
        return Trace.from_wire(decode(blob))
    except (ValueError, TypeError, KeyError, zlib.error):
        return None
