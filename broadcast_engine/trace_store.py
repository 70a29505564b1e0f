"""Stored traces: each accepted trace is written once and read by every destination's batch.

A trace is stored under `keys.trace(owner, request_id)` as one string: the marker byte
`h`, its hold count (a signed 32-bit big-endian integer that `BITFIELD` changes in place),
then compact JSON of `Trace.to_wire()`, zlib-compressed when that pays (a codec byte says
which). Backlog entries, deliver tasks and dead letters refer to it by (owner, request
id); no task message carries a trace.

How long it lives: while some backlog still needs it.
- Fan-out writes it with a TTL that covers the retry horizon (`lifetime_seconds`) and a
  count of one per backlog it is appended to, in the step that appends it (`TraceWrite`;
  on a Redis Cluster it is written first with the count `NOT_COMPLETE`, which that step
  then sets).
- Each backlog entry that ends (delivered, dead-lettered, dropped) releases one hold,
  exactly once: the backlog's own scripts say which entries they settled now. The last
  release keeps the trace only `keep_after_seconds` more, so a redelivered fan-out or an
  event the gateway sent twice still finds it and is recognised. A healthy destination
  therefore costs its in-flight traces plus those few minutes of traffic; a lagging one
  holds its traces up to the horizon (bounded by the budget, see `backlog_upkeep`).
- A hold lost to a crash between a settlement and its release only lets the trace live to
  its TTL. Nothing here needs beat.

The count doubles as fan-out's completion mark: a trace stored means a redelivered
fan-out has nothing to do, unless its count is below zero (`NOT_COMPLETE`, less any
releases that came first): the fan-out that wrote it died before its appends, and they
are made now. On a Redis Cluster a deliver run may settle an entry of a fan-out whose
count is not set yet (the appends and the count are a pipeline across nodes); its release
leaves the trace where it is, and the count the fan-out then sets makes it live to its TTL.

Why one key: a count of its own (`keys.legacy_trace_refs`, with the trace at
`keys.legacy_trace`, as earlier versions stored them) cost a `SET` per event and a
second `PEXPIRE` at the last release (bench D2). Traces an earlier version stored are
still read and released where they are, so a rolling upgrade loses none; a fan-out
message an earlier version had taken and a later one redelivers is not recognised as a
duplicate, though (the two versions look at different keys).
"""

from __future__ import annotations

import math
import struct
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
from settings.redis_commands import RedisClient, RedisPipeline

COMPRESS_FROM_BYTES = 1024
RAW, ZLIB = b"j", b"z"
# The stored value: HELD, the hold count (BITFIELD type and bit offset), the encoded trace.
HELD = b"h"
COUNT_TYPE, COUNT_OFFSET = "i32", 8
_COUNT = struct.Struct(">i")
_HEADER_BYTES = len(HELD) + _COUNT.size
NOT_COMPLETE = -1
# A release's count when the key was not there (BITFIELD counts from a zeroed string);
# a not-yet-complete trace released reads below it.
_ABSENT_RELEASED = -1
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


def stored_value(blob: bytes, holds: int) -> bytes:
    """What is stored under `keys.trace`: the header with `holds`, then `encode`'s bytes."""
    return HELD + _COUNT.pack(holds) + blob


def _holds_in(header: bytes) -> int | None:
    """The hold count in a stored value's first bytes; None when they are no header."""
    if len(header) < _HEADER_BYTES or header[:1] != HELD:
        return None
    holds: int = _COUNT.unpack_from(header, len(HELD))[0]
    return holds


def decode(blob: bytes) -> dict[str, Any]:
    """Inverse of `encode`, or of `stored_value` (a trace stored by an earlier version has
    no header). Raises `ValueError` on bytes neither wrote."""
    if blob[:1] == HELD:
        blob = blob[_HEADER_BYTES:]
    codec, body = _CODECS.get(blob[:1]), blob[1:]
    if codec is None:
        raise ValueError("not a stored trace")
    if codec == ZLIB:
        body = zlib.decompress(body)
    trace: dict[str, Any] = orjson.loads(body)  # `encode` wrote a JSON object
    return trace


@dataclass(frozen=True)
class TraceWrite:
    """A trace as fan-out stores it: under `key`, its encoded `blob` (`encode`) after the
    header, with a TTL of `ttl_ms`. Its hold count is `holders` (one per backlog it is
    appended to), set in the same atomic step as the appends: on one Redis, the trace is
    written by that step (`value(holders)`, `broadcast_engine.backlog`'s append script);
    on a Redis Cluster, `claim` writes it first and `set_holds` then sets the count."""

    key: str
    blob: bytes
    holders: int
    ttl_ms: int

    def value(self, holds: int) -> bytes:
        return stored_value(self.blob, holds)

    def claim(self, client: RedisClient) -> Written:
        """Store the trace with the count `NOT_COMPLETE` unless it is stored already (one
        round trip, two when it is: then whether the fan-out that stored it completed)."""
        if client.set(self.key, self.value(NOT_COMPLETE), nx=True, px=self.ttl_ms):
            return Written.NEW
        header = client.getrange(self.key, 0, _HEADER_BYTES - 1)
        if not header:  # it expired since: store it now
            return self.claim(client)
        holds = _holds_in(header)
        return Written.INTERRUPTED if holds is not None and holds < 0 else Written.COMPLETE

    def set_holds(self, pipe: RedisPipeline) -> None:
        """Queue the hold count on `pipe`: the mark that fan-out completed."""
        pipe.execute_command("BITFIELD", self.key, "SET", COUNT_TYPE, COUNT_OFFSET, self.holders)


class TraceStore:
    def __init__(
        self, client: RedisClient, *, lifetime_seconds: float, keep_after_seconds: float
    ) -> None:
        self.redis = client
        self.lifetime_seconds = lifetime_seconds
        self.keep_after_seconds = keep_after_seconds

    # Fan-out

    def write_for(self, trace: Trace, holders: int) -> TraceWrite:
        """How fan-out stores `trace` for `holders` backlogs (see `TraceWrite`)."""
        key = keys.trace(trace.owner, trace.request_id)
        return TraceWrite(key, encode(trace.to_wire()), holders, _ms(self.lifetime_seconds))

    def claim(self, trace: Trace) -> tuple[Written, StoredTrace]:
        """Store the trace, not yet complete, unless it is stored already (a fan-out's
        first step where one script cannot store it with its appends; tests)."""
        write = self.write_for(trace, 0)
        return write.claim(self.redis), _stored(trace, write.blob)

    def holds(self, owner: str, request_id: str) -> int | None:
        """The trace's hold count (below zero while its fan-out has not completed);
        None when it is not stored. For tests and diagnostics."""
        return _holds_in(self.redis.getrange(keys.trace(owner, request_id), 0, _HEADER_BYTES - 1))

    def restore(self, trace: Trace) -> StoredTrace:
        """Store a trace again for a replay (unless it is still stored) with one more hold:
        the caller appends it to one backlog."""
        blob = encode(trace.to_wire())
        key = keys.trace(trace.owner, trace.request_id)
        lifetime = _ms(self.lifetime_seconds)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(key, stored_value(blob, 0), px=lifetime, nx=True)
            pipe.pexpire(key, lifetime)
            pipe.execute_command("BITFIELD", key, "INCRBY", COUNT_TYPE, COUNT_OFFSET, 1)
            pipe.execute()
        return _stored(trace, blob)

    # Deliver tasks

    def get_many(self, owner: str, request_ids: Sequence[str]) -> dict[str, Trace | None]:
        """The traces by request id; None for one that expired or cannot be read."""
        if not request_ids:
            return {}
        names = [keys.trace(owner, request_id) for request_id in request_ids]
        blobs = dict(zip(request_ids, self._mget(names), strict=True))
        missing = [request_id for request_id, blob in blobs.items() if blob is None]
        if missing:  # stored by an earlier version, or expired
            legacy = self._mget([keys.legacy_trace(owner, r) for r in missing])
            blobs.update(zip(missing, legacy, strict=True))
        return {request_id: _trace_or_none(blob) for request_id, blob in blobs.items()}

    def _mget(self, names: list[str]) -> list[bytes | None]:
        if isinstance(self.redis, redis.RedisCluster):
            return self.redis.mget_nonatomic(names)  # one slot per trace: split by node
        return self.redis.mget(names)

    def get_wire(self, owner: str, request_id: str) -> dict[str, Any] | None:
        blob = self.redis.get(keys.trace(owner, request_id))
        if blob is None:
            blob = self.redis.get(keys.legacy_trace(owner, request_id))
        return decode(blob) if blob is not None else None

    # Backlog entries that ended

    def release(self, owner: str, request_ids: Iterable[str]) -> None:
        """One backlog is done with each of these traces (call once per ended entry). A
        trace no backlog holds any more is kept `keep_after_seconds` longer, then expires.
        One command per trace, and one more for the last hold."""
        request_ids = list(request_ids)
        if not request_ids:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for request_id in request_ids:
                key = keys.trace(owner, request_id)
                pipe.execute_command("BITFIELD", key, "INCRBY", COUNT_TYPE, COUNT_OFFSET, -1)
            left = [reply[0] for reply in pipe.execute()]
        keep = _ms(self.keep_after_seconds)
        legacy: list[str] = []  # their DECR replies come last, in this order
        with self.redis.pipeline(transaction=False) as pipe:
            for request_id, holds in zip(request_ids, left, strict=True):
                if holds == 0:
                    pipe.pexpire(keys.trace(owner, request_id), keep)
                elif holds == _ABSENT_RELEASED:
                    # Not stored here: BITFIELD just wrote a count into an empty key. The
                    # trace is an earlier version's (or expired): release it there.
                    pipe.delete(keys.trace(owner, request_id))
                    legacy.append(request_id)
                # Below that: its fan-out has not set the count yet (module docstring).
            for request_id in legacy:
                pipe.decr(keys.legacy_trace_refs(owner, request_id))
            replies = pipe.execute()
        if legacy:
            self._release_legacy(owner, legacy, replies[-len(legacy) :])

    def _release_legacy(self, owner: str, request_ids: list[str], left: list[int]) -> None:
        """The release of traces an earlier version stored (trace and count in two keys)."""
        keep = _ms(self.keep_after_seconds)
        with self.redis.pipeline(transaction=False) as pipe:
            for request_id, holds in zip(request_ids, left, strict=True):
                if holds == 0:
                    pipe.pexpire(keys.legacy_trace(owner, request_id), keep)
                    pipe.pexpire(keys.legacy_trace_refs(owner, request_id), keep)
                elif holds < 0:  # no count was kept: DECR just created one
                    pipe.delete(keys.legacy_trace_refs(owner, request_id))
            pipe.execute()


def _stored(trace: Trace, blob: bytes) -> StoredTrace:
    """What the caller needs to know of `trace` stored as `blob` (`encode`'s bytes)."""
    return StoredTrace(trace.owner, trace.request_id, len(blob), blob[:1])


def _ms(seconds: float) -> int:
    return math.ceil(seconds * 1000)


def _trace_or_none(blob: bytes | None) -> Trace | None:
    if blob is None:
        return None
    try:
        return Trace.from_wire(decode(blob))
    except (ValueError, TypeError, KeyError, zlib.error):
        return None
