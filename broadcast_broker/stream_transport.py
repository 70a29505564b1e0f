"""A kombu transport that keeps each task queue in a Redis stream read by one consumer group.

Why not kombu's Redis transport: it pops a message (`BRPOP`) and only then records it in
its `unacked` hash, so a consumer killed between the two loses the message before any
task runs (celery/kombu#305, celery/celery#4354, #7950); it stores every message twice
(the list, then the hash) and costs about 11 commands per message. Here:

- publish is one `XADD` of the envelope (zlib-compressed: Celery's headers are larger than
  a compressed event) and the raw body (no base64, no second copy);
- consume is `XREADGROUP`, which records the entry in the group's pending list in the
  same command that hands it out: nothing is ever held only by a socket;
- acknowledge is `XACK` + `XDEL`; requeue is a Lua script that copies the entry to the
  tail, marked redelivered, and drops the original, once;
- a consuming worker refreshes a heartbeat every 3 s (`broadcast.consumer:NAME`, 10 s TTL)
  from a thread of its own; every such worker, every 3 s, hands what a consumer whose
  heartbeat expired (a killed worker) held back to the queue, the same way: a killed
  worker costs seconds, not the visibility timeout. A consumer that never registered a
  heartbeat (a worker of an earlier version, during a rolling upgrade) is not treated as
  dead: what it held past the visibility timeout comes back, as before;
- kombu's list protocol still works for clients that speak it (a gateway's own Celery
  client, in any language): consumers move what such clients push onto a queue's lists
  into the stream, atomically, once a second (every 0.1 s while they are sending);
- an entry that is no well-formed kombu envelope (another client's XADD, a zlib envelope
  that inflates past `max_message_bytes`, a body that is not base64) is handed on as a
  stand-in marked unreadable, with the entry's size and SHA-256, so the worker's consumer
  records it and acknowledges it (broadcast_engine/vetting_consumer.py): nothing a sender writes
  can make building kombu's `Message` raise in the worker;
- everything else (fanout exchanges, Celery's remote-control reply queues, events) is
  kombu's Redis transport, except that a fanout message that is no envelope is dropped
  (logged) instead of raising in the worker.

Only the queues named in `stream_queues` (a transport option; Broadcast's three task
queues by default) are streams. Priorities are not supported on them: Broadcast sets none.

This module subclasses kombu's Redis transport and relies on some of its private
attributes (`PRIVATE_KOMBU_ATTRIBUTES`); pyproject.toml pins kombu to the minor version the
suite runs, and importing this module with a kombu that lacks one of them fails at once
with a message naming them, instead of a worker failing at its first message.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import logging
import os
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from time import monotonic
from typing import TYPE_CHECKING, Any

import kombu
from kombu.transport import redis as redis_transport
from kombu.transport import virtual
from redis import Redis
from redis import exceptions as redis_errors
from redis.exceptions import ResponseError

from broadcast_broker import wire_json
from broadcast_broker.bounded_compression import InflateRefused, inflate
from broadcast_broker.message_vetting import UNREADABLE_CONTENT_TYPE, RawFacts, unreadable_headers
from broadcast_broker.topology import FANOUT_QUEUE, TASK_QUEUES
from settings.redis_commands import Key, RedisClient, RedisScript, Value, typed_client

if TYPE_CHECKING:
    from collections import OrderedDict

    from kombu.asynchronous.timer import Entry
    from kombu.utils.scheduling import round_robin_cycle

log = logging.getLogger(__name__)

# kombu's private attributes this transport overrides or calls, by class: class-level
# ones (methods, class attributes), then instance attributes that `__init__` sets. Keyed
# by classes of unrelated types: `type[Any]`, as `missing_kombu_attributes` reads each
# one's `__init__` (its source, never calling it).
PRIVATE_KOMBU_ATTRIBUTES: dict[type[Any], tuple[str, ...]] = {
    redis_transport.Channel: (
        "_brpop_start",
        "_brpop_read",
        "_flush_brpop_reauth",
        "_q_for_pri",
        "_disconnect_pools",
        "_create_client",
        "_in_poll",
        "_brpop_sent_at",
        "_size",
        "_has_queue",
        "_purge",
        "_delete",
        "_new_queue",
        "_put",
        "_get",
        "_restore",
        "_restore_at_beginning",
        "conn_or_acquire",
        "from_transport_options",
        "priority_steps",
        "unacked_restore_throttle",
    ),
    virtual.QoS: ("_flush", "can_consume_max_estimate"),
    virtual.Transport: ("_deliver",),
}
PRIVATE_KOMBU_INSTANCE_ATTRIBUTES: dict[type[Any], tuple[str, ...]] = {
    redis_transport.Channel: ("_queue_cycle",),
    virtual.QoS: ("_delivered",),
    redis_transport.MultiChannelPoller: ("_channels",),
}


def missing_kombu_attributes() -> list[str]:
    """The private kombu attributes this transport relies on that the installed kombu lacks."""
    missing = [
        f"{owner.__name__}.{name}"
        for owner, names in PRIVATE_KOMBU_ATTRIBUTES.items()
        for name in names
        if not hasattr(owner, name)
    ]
    for owner, names in PRIVATE_KOMBU_INSTANCE_ATTRIBUTES.items():
        source = inspect.getsource(owner.__init__)
        missing += [f"{owner.__name__}.{name}" for name in names if f"self.{name} " not in source]
    return missing


if _missing := missing_kombu_attributes():
    raise ImportError(
        "Broadcast's Redis stream transport does not support kombu "
        # celery-types' kombu stub omits `__version__`, which kombu/__init__.py sets.
        f"{kombu.__version__}: it lacks {', '.join(_missing)}. "  # type: ignore[attr-defined]
        "Install the kombu version pyproject.toml pins."
    )

GROUP = "workers"
# Entry fields: the envelope without its body (zlib-compressed), the raw body, a whole
# kombu list envelope (moved in from a list), and the redelivered mark of a restored copy.
ENVELOPE, BODY, LIST_ENVELOPE, REDELIVERED = b"z", b"b", b"j", b"r"
# zlib level 1: 9 us per publish for an 860-byte Celery envelope cut to 430 bytes.
ENVELOPE_COMPRESSION_LEVEL = 1
TAG_SEPARATOR = "#"
# Lists are moved into streams once a second, every 0.1 s while list clients are sending,
# at most this many items per list per move.
LIST_MOVE_IDLE_SECONDS = 1.0
LIST_MOVE_BUSY_SECONDS = 0.1
LIST_MOVE_LIMIT = 1000
RESTORE_LIMIT = 1000
# Every this many reads the other queues are read before the priority ones.
PRIORITY_YIELD_EVERY = 4
FORGET_CONSUMERS_EVERY_SECONDS = 3600.0
# Consumer liveness: a consuming worker refreshes its heartbeat this often, the heartbeat
# lives this long, and every consuming worker looks for dead consumers this often. A
# killed worker's messages are back on the queue within TTL + interval (13 s).
HEARTBEAT_EVERY_SECONDS = 3.0
HEARTBEAT_TTL_SECONDS = 10.0
CONSUMER_REGISTRY = "broadcast.consumers"
# A pending entry of this consumer that it never received, idle this long, is requeued.
UNKNOWN_IDLE_SECONDS = 5.0
HEARTBEAT_PREFIX = "broadcast.consumer:"
# The value of a heartbeat written by a worker of an earlier version (it names no queue).
LEGACY_HEARTBEAT = b"1"
# The largest body the envelope may inflate to (a `max_message_bytes` transport option;
# celeryconfig passes the event limit plus the envelope's margin, this is its default).
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024 + 256 * 1024
# A list client's envelope carries the body in base64 (4/3 of it) beside the headers.
LIST_ENVELOPE_FACTOR = 2


STREAM_SUFFIX = ":stream"


def stream_key(queue: str) -> str:
    return f"{queue}{STREAM_SUFFIX}"


def queue_of(stream: bytes) -> str:
    """The queue a stream key (as Redis answers it) belongs to: `stream_key`'s inverse."""
    return stream.decode().removesuffix(STREAM_SUFFIX)


def delivery_tag(queue: str, entry_id: str) -> str:
    return f"{queue}{TAG_SEPARATOR}{entry_id}"


def split_delivery_tag(tag: str) -> tuple[str, str]:
    queue, _, entry_id = tag.rpartition(TAG_SEPARATOR)
    return queue, entry_id


def entry_fields(message: dict[str, Any]) -> dict[Key, Value]:
    """A kombu envelope as stream fields (bytes, typed as `XADD` takes them): the body
    raw, the rest as JSON.

    kombu base64-encodes bodies for its JSON envelope; a stream field holds bytes, so the
    body is stored decoded (a third smaller) and handed back decoded."""
    envelope = dict(message)
    body = envelope.pop("body", None)
    properties = dict(envelope.get("properties") or {})
    properties.pop("delivery_tag", None)  # a delivery's tag is its stream entry
    fields: dict[Key, Value] = {}
    if isinstance(body, str) and properties.get("body_encoding") == "base64":
        fields[BODY] = base64.b64decode(body)
        properties["body_encoding"] = None
    elif isinstance(body, bytes):
        fields[BODY] = body
        properties["body_encoding"] = None
    elif body is not None:
        envelope["body"] = body
    envelope["properties"] = properties
    fields[ENVELOPE] = zlib.compress(wire_json.dumps(envelope).encode(), ENVELOPE_COMPRESSION_LEVEL)
    return fields


@dataclass(frozen=True)
class StreamQueueState:
    """`consumers`: consumers of the queue's group with a live heartbeat (workers reading
    it); `oldest_waiting_at`: unix seconds its oldest waiting entry was added (None:
    nothing waits)."""

    consumers: int
    oldest_waiting_at: float | None


class UnreadableEntry(ValueError):
    """A stream entry or message that is no kombu envelope kombu could build a Message of."""


def message_from_entry(
    queue: str,
    entry_id: str,
    fields: dict[bytes, bytes],
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> dict[str, Any]:
    """The kombu envelope of a stream entry, with its delivery tag. Raises UnreadableEntry.

    Nothing is inflated or decoded past `max_message_bytes` (a list envelope: twice that,
    for its base64 body)."""
    try:
        if LIST_ENVELOPE in fields:
            raw = fields[LIST_ENVELOPE]
            if len(raw) > LIST_ENVELOPE_FACTOR * max_message_bytes:
                raise UnreadableEntry(f"a list message of {len(raw)} bytes is too large")
            message = wire_json.loads(raw)
        else:
            message = wire_json.loads(inflate(fields[ENVELOPE], "zlib", max_message_bytes))
            if BODY in fields and isinstance(message, dict):
                message["body"] = fields[BODY]
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, UnreadableEntry | InflateRefused) else ""
        raise UnreadableEntry(reason or f"{type(exc).__name__} reading the envelope") from None
    checked = checked_envelope(message)
    properties = checked["properties"]
    properties["delivery_tag"] = delivery_tag(queue, entry_id)
    if REDELIVERED in fields:
        properties["delivery_info"]["redelivered"] = True
        headers = checked.get("headers")
        if isinstance(headers, dict):
            headers["redelivered"] = True
    return checked


def checked_envelope(message: Any) -> dict[str, Any]:
    """`message` if kombu can build a `Message` of it without raising, its base64 body
    decoded (`body_encoding` None); else raises UnreadableEntry naming what is wrong."""
    if not isinstance(message, dict):
        raise UnreadableEntry("the envelope is not a JSON object")
    properties = message.get("properties")
    if not isinstance(properties, dict):
        raise UnreadableEntry("the envelope has no properties object")
    delivery_info = properties.setdefault("delivery_info", {})
    if not isinstance(delivery_info, dict):
        raise UnreadableEntry("the envelope's delivery_info is not an object")
    headers = message.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise UnreadableEntry("the envelope's headers are not an object")
    for name in ("content-type", "content-encoding"):
        if message.get(name) is not None and not isinstance(message[name], str):
            raise UnreadableEntry(f"the envelope's {name} is not a string")
    body = message.get("body")
    if body is not None and not isinstance(body, str | bytes):
        raise UnreadableEntry("the envelope's body is not a string")
    encoding = properties.get("body_encoding")
    if encoding == "base64":
        if body:
            try:
                message["body"] = base64.b64decode(body, validate=True)
            except (binascii.Error, ValueError):
                raise UnreadableEntry("the body is not base64") from None
        properties["body_encoding"] = None
    elif encoding not in (None, "", "utf-8"):
        raise UnreadableEntry("the envelope's body_encoding is neither base64 nor utf-8")
    return message


def unreadable_stand_in(
    queue: str, entry_id: str, fields: dict[bytes, bytes], reason: str
) -> dict[str, Any]:
    """What is delivered in place of an entry that is no envelope: no body, headers that
    say why with the entry's size and SHA-256 (its field values in order), and the
    entry's delivery tag, so acknowledging it removes the entry."""
    return {
        "body": None,
        "content-type": UNREADABLE_CONTENT_TYPE,
        "content-encoding": "binary",
        "headers": unreadable_headers(reason, RawFacts.of(*fields.values())),
        "properties": {
            "delivery_tag": delivery_tag(queue, entry_id),
            "delivery_info": {"exchange": queue, "routing_key": queue},
            "body_encoding": None,
        },
    }


# Copy an entry to the tail, marked redelivered, and drop the original, once: only a
# delivery still pending is requeued, so a requeue racing an ack or a restore does nothing.
_COPY_TO_TAIL = """
local function copy_to_tail(key, fields)
  local copy = {}
  for j = 1, #fields, 2 do
    if fields[j] ~= 'r' then
      copy[#copy + 1] = fields[j]
      copy[#copy + 1] = fields[j + 1]
    end
  end
  copy[#copy + 1] = 'r'
  copy[#copy + 1] = '1'
  redis.call('XADD', key, '*', unpack(copy))
end
"""

REQUEUE = (
    _COPY_TO_TAIL
    + """
-- KEYS[1] stream; ARGV[1] group; ARGV[2..] entry ids
local requeued = 0
for i = 2, #ARGV do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
    if found[1] then
      copy_to_tail(KEYS[1], found[1][2])
      requeued = requeued + 1
    end
    redis.call('XDEL', KEYS[1], ARGV[i])
  end
end
return requeued
"""
)

RECLAIM = (
    _COPY_TO_TAIL
    + """
-- KEYS[1] stream, KEYS[2] consumer registry; ARGV[1] group, ARGV[2] visibility timeout ms,
-- ARGV[3] heartbeat key prefix, ARGV[4] at most this many entries per consumer.
-- A registered consumer whose heartbeat expired is dead: everything it held goes back to
-- the tail, marked redelivered, and the consumer leaves the group. Any other consumer (a
-- live one, or an earlier version's worker that never registered) gives back only what it
-- held past the visibility timeout, the last resort it always was.
-- Returns {requeued from dead consumers, requeued past the timeout}.
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return {0, 0} end
local function requeue(entries)
  local n = 0
  for _, p in ipairs(entries) do
    local found = redis.call('XRANGE', KEYS[1], p[1], p[1])
    if found[1] then
      copy_to_tail(KEYS[1], found[1][2])
      n = n + 1
    end
    redis.call('XACK', KEYS[1], ARGV[1], p[1])
    redis.call('XDEL', KEYS[1], p[1])
  end
  return n
end
local dead, late = 0, 0
for _, c in ipairs(consumers) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  local name, pending = info['name'], tonumber(info['pending'])
  local registered = redis.call('HEXISTS', KEYS[2], name) == 1
  if registered and redis.call('EXISTS', ARGV[3] .. name) == 0 then
    if pending > 0 then
      dead = dead + requeue(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[4], name))
    end
    if pending <= tonumber(ARGV[4]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    end
  elseif pending > 0 then
    late = late + requeue(redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[2], '-', '+',
      ARGV[4], name))
  end
end
return {dead, late}
"""
)

# KEYS[1] stream; KEYS[2..] kombu lists of the queue; ARGV[1] at most this many per list.
MOVE_LISTS = """
local moved = 0
for i = 2, #KEYS do
  local items = redis.call('RPOP', KEYS[i], ARGV[1])
  if items then
    for _, item in ipairs(items) do
      redis.call('XADD', KEYS[1], '*', 'j', item)
      moved = moved + 1
    end
  end
end
return moved
"""


if TYPE_CHECKING:
    # kombu's private members this module uses (`PRIVATE_KOMBU_ATTRIBUTES`), which
    # celery-types does not declare, as kombu 5.7 (the minor version pyproject.toml pins)
    # defines them. For the checker only: at run time the bases are kombu's classes.

    class _KombuQoS(virtual.QoS):
        # Set by `__init__` (only the class attribute is None).
        _delivered: OrderedDict[str, Any]

        def _flush(self) -> None: ...

    class _KombuRedisChannel(redis_transport.Channel):
        # Set by `__init__`: the transport's connection errors, the queues' read order.
        connection_errors: tuple[type[BaseException], ...]
        _queue_cycle: round_robin_cycle[str]

        def _create_client(self, asynchronous: bool = False) -> Redis: ...
        def _disconnect_pools(self) -> None: ...
        def _brpop_start(self, timeout: float | None = None) -> None: ...
        def _brpop_read(self, **options: Any) -> bool: ...
        def _flush_brpop_reauth(self) -> None: ...
        def _q_for_pri(self, queue: str, pri: int) -> str: ...

    class _KombuPoller(redis_transport.MultiChannelPoller):
        # kombu's: the channels polled (this transport's, so this module's Channel).
        _channels: set[Channel]
        # This module's: the timer that moves list messages (`register_with_event_loop`).
        _move_lists_tref: Entry

else:
    _KombuQoS = virtual.QoS
    _KombuRedisChannel = redis_transport.Channel


class QoS(_KombuQoS):
    """Acknowledgements on the stream: the group's pending list is the unacked record.

    An acknowledgement or a requeue that cannot reach Redis (it is restarting) is kept and
    made again by the heartbeat thread once Redis answers: otherwise the message would stay
    pending under a consumer that is alive, and nothing would hand it back until the
    visibility timeout. Both are idempotent, so doing one twice is harmless."""

    restore_at_shutdown = True
    # Built by this module's Channel (its `QoS`), for itself.
    channel: Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._restore_calls = 0
        self._unsettled: dict[str, bool] = {}  # delivery tag -> requeue (else ack)
        self._unsettled_lock = threading.Lock()

    def ack(self, delivery_tag: str) -> None:
        self._settle(delivery_tag, requeue=False)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._settle(delivery_tag, requeue=requeue)
        super().ack(delivery_tag)

    def _settle(self, delivery_tag: str, *, requeue: bool) -> None:
        try:
            if requeue:
                self.channel._requeue([delivery_tag])
            else:
                self.channel._acknowledge(delivery_tag)
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            with self._unsettled_lock:
                self._unsettled[delivery_tag] = requeue
            log.warning(
                "%s of %s kept for later: %s",
                "requeue" if requeue else "ack", delivery_tag, type(exc).__name__,
            )  # fmt: skip

    def settle_kept(self) -> int:
        """Make the acknowledgements and requeues Redis could not take; returns how many
        went through (raises a connection error while Redis is still away)."""
        with self._unsettled_lock:
            kept = list(self._unsettled.items())
        for tag, requeue in kept:
            if requeue:
                self.channel._requeue([tag])
            else:
                self.channel._acknowledge(tag)
            with self._unsettled_lock:
                self._unsettled.pop(tag, None)
        return len(kept)

    def held_tags(self) -> set[str]:
        """The delivery tags this consumer knows it holds (handed to Celery, not yet
        acknowledged, or kept for a later acknowledgement). Read from another thread: a
        copy, taken again if the main thread changed the dict meanwhile."""
        for _ in range(10):
            try:
                tags = set(list(self._delivered))
                break
            except RuntimeError:  # changed size during the copy
                continue
        else:
            return set()  # a busy moment; the next tick looks again
        with self._unsettled_lock:
            return tags | set(self._unsettled)

    # kombu's `restore_unacked_once` reads the (error, message) pairs this returns (none
    # here); celery-types declares the method as returning None.
    def restore_unacked(self, client: Any = None) -> list[Any]:  # type: ignore[override]
        """At shutdown: every delivery not acknowledged goes back to its queue."""
        self._flush()
        tags = list(self._delivered)
        self._delivered.clear()
        self.channel._requeue(tags)
        self.settle_kept()
        return []

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """kombu's periodic call: move list clients' messages in, forget gone consumers.
        (Dead consumers' messages are reclaimed by the heartbeat thread.)"""
        self._restore_calls += 1
        if (self._restore_calls - 1) % (interval or 1):
            return
        self.channel._restore_idle()


if TYPE_CHECKING:
    # This module's QoS, by a name that Channel's own `QoS` attribute does not shadow.
    _StreamQoS = QoS


class Channel(_KombuRedisChannel):
    # celery-types wants a subclass of kombu's Redis QoS; this one is a virtual QoS on
    # purpose (kombu's Redis QoS keeps the unacked hash the stream's pending list replaces).
    QoS = QoS  # type: ignore[assignment]
    stream_queues: tuple[str, ...] = TASK_QUEUES
    # Read first whenever they hold messages (see `_brpop_start`): fan-out, because the
    # gateway's messages are the only copy of its events and each is a few milliseconds of
    # work, so a slow vendor's deliveries never starve them. Every
    # `PRIORITY_YIELD_EVERY`-th read takes every queue in turn, so a flood of fan-out
    # messages cannot stall delivery either.
    priority_queues: tuple[str, ...] = (FANOUT_QUEUE,)
    # The idle-entry restore is one script per queue: run it on every periodic call
    # (every `unacked_restore_interval`, 10 s), not one in ten as kombu's hash scan.
    unacked_restore_throttle = 1
    # Every worker start adds a consumer to the group; one that holds nothing and has not
    # read for this long is gone (a live one reads at least every second): it is forgotten
    # (checked hourly).
    consumer_forget_idle_seconds = 86400.0
    # Liveness (see `Heartbeat`): transport options, so tests can shorten them.
    heartbeat_every_seconds = HEARTBEAT_EVERY_SECONDS
    heartbeat_ttl_seconds = HEARTBEAT_TTL_SECONDS
    max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
    from_transport_options = (
        *redis_transport.Channel.from_transport_options,
        "stream_queues",
        "priority_queues",
        "consumer_forget_idle_seconds",
        "heartbeat_every_seconds",
        "heartbeat_ttl_seconds",
        "max_message_bytes",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            raise ValueError("the stream transport does not support global_keyprefix")
        self.stream_queues = tuple(self.stream_queues)
        self.consumer_name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._groups_ready: set[str] = set()
        self._lists_move_due = float("-inf")
        self._consumers_forgotten_at = monotonic()
        self._reading_streams = False  # what the pending blocking read is
        self._read_blocks = False  # the next read waits for a message (nothing was ready)
        self._reads = 0
        self._heartbeat: Heartbeat | None = None

    if TYPE_CHECKING:
        # kombu's `qos` builds this channel's `QoS` once: this module's.
        @property
        def qos(self) -> _StreamQoS: ...

    # --- one client for the channel's synchronous commands

    @cached_property
    def _sync_client(self) -> RedisClient:
        if self.connection is None:
            # Closed by kombu after a connection error whose reconnection failed, yet still
            # held by a long-lived producer (beat's): a connection error, which kombu's
            # publish retry answers by reconnecting and reviving the producer. Anything
            # else (AttributeError) would fail every later publish for ever.
            raise redis_errors.ConnectionError("the broker channel was closed; reconnecting")
        return typed_client(self._create_client())

    @contextmanager
    def conn_or_acquire(self, client: Redis | None = None) -> Iterator[Redis | RedisClient]:
        # kombu builds a new client object per command (about 100 us of every publish);
        # a client is thread-safe over its pool, so one serves the channel.
        yield client or self._sync_client

    def _disconnect_pools(self) -> None:
        # After a fork the pools are replaced: the client and the scripts bound to it too.
        self.__dict__.pop("_sync_client", None)
        self.__dict__.pop("_scripts", None)
        super()._disconnect_pools()

    @cached_property
    def _scripts(self) -> dict[str, RedisScript]:
        client = self._sync_client
        return {
            "requeue": client.register_script(REQUEUE),
            "reclaim": client.register_script(RECLAIM),
            "move_lists": client.register_script(MOVE_LISTS),
        }

    def is_stream(self, queue: str) -> bool:
        return queue in self.stream_queues

    # --- publish

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        if not self.is_stream(queue):
            return super()._put(queue, message, **kwargs)
        fields = entry_fields(message)
        publish_batch = kwargs.pop("_publish_batch", None)
        if publish_batch is not None:
            publish_batch.add("xadd", stream_key(queue), fields)
            return
        self._sync_client.xadd(stream_key(queue), fields)

    # --- declare, size, purge, delete

    def _ensure_group(self, queue: str) -> None:
        if queue in self._groups_ready:
            return
        try:
            # From id 0: entries added before the group existed are delivered too.
            self._sync_client.xgroup_create(stream_key(queue), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups_ready.add(queue)

    def _new_queue(self, queue: str, auto_delete: bool = False, **kwargs: Any) -> None:
        super()._new_queue(queue, auto_delete=auto_delete, **kwargs)
        if self.is_stream(queue):
            self._ensure_group(queue)

    def _size(self, queue: str) -> int:
        """Messages waiting: entries not handed out yet, plus items on its lists."""
        if not self.is_stream(queue):
            return super()._size(queue)
        client = self._sync_client
        key = stream_key(queue)
        with client.pipeline(transaction=False) as pipe:
            pipe.xlen(key)
            pipe.xpending(key, GROUP)
            for list_key in self._list_keys(queue):
                pipe.llen(list_key)
            replies = pipe.execute(raise_on_error=False)
        length, pending, *lists = replies
        pending_count = pending["pending"] if isinstance(pending, dict) else 0
        return max(0, int(length) - pending_count) + sum(int(n) for n in lists)

    def queue_state(self, queue: str) -> StreamQueueState:
        """What the metrics read of a stream queue beside its size: how many workers read
        it (their heartbeats name the queues they consume), and when its oldest waiting
        entry (not handed out yet) was added: an entry id is the millisecond it was added
        (a requeued entry is added again, so its age starts again). Items a list client
        pushed, which the workers move in within a second, are not looked at."""
        client = self._sync_client
        key = stream_key(queue)
        try:
            groups = client.xinfo_groups(key)
        except ResponseError:  # no stream yet: nothing was ever sent or read
            return StreamQueueState(self._live_consumers(queue), oldest_waiting_at=None)
        group = next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)
        last = group["last-delivered-id"] if group is not None else b"0-0"
        last = last if isinstance(last, bytes) else last.encode()
        first = client.xrange(key, min=b"(" + last, count=1)
        oldest = None
        if first:
            entry_id: bytes | str = first[0][0]
            entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            oldest = int(entry_id.split("-", 1)[0]) / 1000.0
        return StreamQueueState(consumers=self._live_consumers(queue), oldest_waiting_at=oldest)

    def _live_consumers(self, queue: str) -> int:
        """Registered consumers whose heartbeat is alive and names `queue` (a heartbeat of
        an earlier version names none: counted for every queue)."""
        client = self._sync_client
        names = client.hkeys(CONSUMER_REGISTRY)
        if not names:
            return 0
        beats = client.mget([HEARTBEAT_PREFIX.encode() + name for name in names])
        return sum(
            1
            for beat in beats
            if beat is not None and (beat == LEGACY_HEARTBEAT or queue.encode() in beat.split(b","))
        )

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        if self.is_stream(queue) and self._sync_client.exists(stream_key(queue)):
            return True
        return super()._has_queue(queue, **kwargs)

    def _purge(self, queue: str) -> int:
        """Drop the messages not handed out yet (running tasks keep theirs)."""
        if not self.is_stream(queue):
            return super()._purge(queue)
        client = self._sync_client
        key = stream_key(queue)
        self._ensure_group(queue)
        group = next(g for g in client.xinfo_groups(key) if g["name"] == GROUP.encode())
        undelivered = client.xrange(key, min=b"(" + group["last-delivered-id"])
        ids = [entry_id for entry_id, _ in undelivered]
        if ids:
            client.xdel(key, *ids)
        return len(ids) + super()._purge(queue)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        super()._delete(queue, *args, **kwargs)
        if self.is_stream(queue):
            self._sync_client.delete(stream_key(queue))
            self._groups_ready.discard(queue)

    # --- consume

    def _stream_consumption(self, queues: Collection[str]) -> bool:
        streams = [q for q in queues if self.is_stream(q)]
        if streams and len(streams) != len(queues):
            lists = [q for q in queues if not self.is_stream(q)]
            raise ValueError(
                f"one channel cannot consume stream queues {streams} and list queues {lists}"
            )
        return bool(streams)

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        if self.is_stream(queue):
            self._ensure_group(queue)
        consumer_tag = super().basic_consume(queue, *args, **kwargs)
        self._stream_consumption(self.active_queues)
        if self.is_stream(queue):
            self.start_heartbeat()  # its value names the queues consumed, this one now too
        return consumer_tag

    def start_heartbeat(self) -> None:
        """Register this consumer and keep its heartbeat (once per process and channel;
        called again, the heartbeat is refreshed at once with the queues consumed now)."""
        if self._heartbeat is None or self._heartbeat.pid != os.getpid():
            self._heartbeat = Heartbeat(self)
            self._heartbeat.start()
        else:
            self._heartbeat.beat()

    def close(self) -> None:
        if self._heartbeat is not None and self._heartbeat.pid == os.getpid():
            self._heartbeat.stop()
        super().close()

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self.active_queues
        self._reading_streams = bool(queues) and self._stream_consumption(queues)
        if not self._reading_streams:
            return super()._brpop_start(timeout)
        if timeout is None:
            timeout = self.brpop_timeout
        for queue in queues:
            self._ensure_group(queue)
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self._reads += 1
        first = [q for q in self.priority_queues if q in queues]
        if self._read_blocks or not first or self._reads % PRIORITY_YIELD_EVERY == 0:
            # Nothing was waiting at the last look (or it is the other queues' turn): one
            # entry from each queue that has some, else wait for the next on any of them.
            keys = [stream_key(queue) for queue in self._queue_cycle.consume(len(queues))]
            self.client.connection.send_command(
                "XREADGROUP", "GROUP", GROUP, self.consumer_name, "COUNT", 1,
                "BLOCK", int((timeout or 0) * 1000), "STREAMS", *keys, *([">"] * len(keys)),
            )  # fmt: skip
            return
        # The priority queues first, as many entries as the prefetch allows, without waiting.
        room = self.qos.can_consume_max_estimate() or 1
        keys = [stream_key(queue) for queue in first]
        self.client.connection.send_command(
            "XREADGROUP", "GROUP", GROUP, self.consumer_name, "COUNT", room,
            "STREAMS", *keys, *([">"] * len(keys)),
        )  # fmt: skip

    def _brpop_read(self, **options: Any) -> bool:
        if not self._reading_streams:
            return super()._brpop_read(**options)
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "XREADGROUP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The stream was deleted (a flushed or replaced Redis): recreate the groups.
                self._groups_ready.clear()
                raise virtual.Empty() from None
            delivered = self._deliver_reply(reply)
            # While the priority queues have messages the next read takes them first; once
            # a read found nothing, the next one waits on every queue.
            self._read_blocks = not delivered
            if not delivered:
                raise virtual.Empty()
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _deliver_reply(self, reply: Any) -> int:
        delivered = 0
        for stream, entries in reply or ():
            queue = queue_of(stream)
            for message in self._readable(queue, entries):
                self.connection._deliver(message, queue)
                delivered += 1
            self._queue_cycle.rotate(queue)
        return delivered

    def _readable(self, queue: str, entries: Any) -> Iterator[dict[str, Any]]:
        """The envelopes of an `XREADGROUP` reply's entries; an unreadable one becomes a
        stand-in that says why (`unreadable_stand_in`)."""
        for raw_id, fields in entries:
            if fields is None:  # deleted while it was pending
                continue
            entry_id = raw_id.decode()
            try:
                yield message_from_entry(queue, entry_id, fields, self.max_message_bytes)
            except UnreadableEntry as exc:
                log.warning(
                    "broadcast.broker.unreadable_entry queue=%s entry=%s reason=%s",
                    queue, entry_id, exc,
                )  # fmt: skip
                yield unreadable_stand_in(queue, entry_id, fields, str(exc))

    # kombu's Redis channel's `_get` takes no timeout either (kombu never passes one);
    # celery-types gives it the virtual channel's signature, which has one.
    def _get(self, queue: str) -> dict[str, Any]:  # type: ignore[override]
        if not self.is_stream(queue):
            return super()._get(queue)
        self._ensure_group(queue)
        reply = self._sync_client.xreadgroup(
            GROUP, self.consumer_name, {stream_key(queue): ">"}, count=1
        )
        for _stream, entries in reply or ():
            for message in self._readable(queue, entries):
                return message
        raise virtual.Empty()

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        message = super().basic_get(queue, no_ack=no_ack, **kwargs)
        if message is not None and no_ack and self.is_stream(queue):
            assert message.delivery_tag is not None  # a stream message's is its entry's
            self._acknowledge(message.delivery_tag)
        return message

    # --- acknowledge, requeue, restore

    def _acknowledge(self, tag: str) -> None:
        queue, entry_id = split_delivery_tag(tag)
        if not self.is_stream(queue):
            return
        key = stream_key(queue)
        with self._sync_client.pipeline(transaction=False) as pipe:
            pipe.xack(key, GROUP, entry_id)
            pipe.xdel(key, entry_id)
            pipe.execute()

    def _requeue(self, tags: Iterable[str]) -> None:
        by_queue: dict[str, list[str]] = {}
        for tag in tags:
            queue, entry_id = split_delivery_tag(tag)
            if self.is_stream(queue):
                by_queue.setdefault(queue, []).append(entry_id)
        for queue, entry_ids in by_queue.items():
            self._scripts["requeue"](keys=[stream_key(queue)], args=[GROUP, *entry_ids])

    def _restore(self, message: Any, leftmost: bool = False) -> None:
        self._requeue([message.delivery_tag])

    def _restore_at_beginning(self, message: Any) -> None:
        self._requeue([message.delivery_tag])

    def _restore_idle(self) -> None:
        """Move in what list clients pushed; now and then forget consumers long gone."""
        self.move_lists()
        if monotonic() - self._consumers_forgotten_at >= FORGET_CONSUMERS_EVERY_SECONDS:
            self.forget_gone_consumers()

    def reclaim_unknown(self, min_idle_seconds: float = UNKNOWN_IDLE_SECONDS) -> int:
        """Requeue what the group says this consumer holds but this consumer never received:
        a read whose answer was lost (Redis killed between recording the delivery and
        answering, a connection cut mid-reply). Without this such a message would wait
        for the visibility timeout under a consumer that is alive. Only entries idle for
        `min_idle_seconds` are considered, so a read being answered now is left alone."""
        known = {split_delivery_tag(tag)[1] for tag in self.qos.held_tags()}
        requeued = 0
        for queue in self.stream_queues:
            if queue not in self._groups_ready:
                continue
            key = stream_key(queue)
            pending = self._sync_client.xpending_range(
                key,
                GROUP,
                min="-",
                max="+",
                count=RESTORE_LIMIT,
                consumername=self.consumer_name,
                idle=int(min_idle_seconds * 1000),
            )
            lost = [p["message_id"].decode() for p in pending]
            lost = [entry_id for entry_id in lost if entry_id not in known]
            if lost:
                self._scripts["requeue"](keys=[key], args=[GROUP, *lost])
                log.warning(
                    "requeued %d message(s) of %s this consumer never received", len(lost), queue
                )
                requeued += len(lost)
        return requeued

    def reclaim(self) -> tuple[int, int]:
        """Requeue what dead consumers held, and what consumers without a heartbeat (an
        earlier version's) held past the visibility timeout. Returns both counts."""
        dead = late = 0
        for queue in self.stream_queues:
            if queue not in self._groups_ready:
                continue
            from_dead, past_timeout = self._scripts["reclaim"](
                keys=[stream_key(queue), CONSUMER_REGISTRY],
                args=[GROUP, int(self.visibility_timeout * 1000), HEARTBEAT_PREFIX, RESTORE_LIMIT],
            )
            if from_dead or past_timeout:
                log.warning(
                    "requeued %d message(s) of %s held by dead consumers and %d held past the "
                    "visibility timeout (%ss)",
                    from_dead, queue, past_timeout, self.visibility_timeout,
                )  # fmt: skip
            dead, late = dead + int(from_dead), late + int(past_timeout)
        return dead, late

    def forget_gone_consumers(self) -> int:
        """Delete the group's consumers that hold nothing and have not read for a day."""
        self._consumers_forgotten_at = monotonic()
        client = self._sync_client
        idle_ms = self.consumer_forget_idle_seconds * 1000
        forgotten = 0
        for queue in self._groups_ready:
            key = stream_key(queue)
            for consumer in client.xinfo_consumers(key, GROUP):
                if consumer["pending"] == 0 and consumer["idle"] > idle_ms:
                    client.xgroup_delconsumer(key, GROUP, consumer["name"])
                    forgotten += 1
        # Registered consumers whose heartbeat is long gone (their groups' entries are).
        for name, registered in client.hgetall(CONSUMER_REGISTRY).items():
            gone = time.time() - float(registered) > self.consumer_forget_idle_seconds
            if gone and not client.exists(HEARTBEAT_PREFIX + name.decode()):
                client.hdel(CONSUMER_REGISTRY, name)
        return forgotten

    def _list_keys(self, queue: str) -> list[str]:
        return [self._q_for_pri(queue, priority) for priority in self.priority_steps]

    def move_lists(self) -> int:
        """Move what kombu list clients pushed onto this channel's stream queues into the
        streams (atomically per queue). Returns how many messages moved."""
        moved = 0
        for queue in self.stream_queues:
            if queue not in self._groups_ready:
                continue
            keys = [stream_key(queue), *self._list_keys(queue)]
            moved += int(self._scripts["move_lists"](keys=keys, args=[LIST_MOVE_LIMIT]))
        return moved

    def maybe_move_lists(self) -> None:
        now = monotonic()
        if now >= self._lists_move_due:
            moved = self.move_lists()
            self._lists_move_due = now + (
                LIST_MOVE_BUSY_SECONDS if moved else LIST_MOVE_IDLE_SECONDS
            )


class Heartbeat:
    """A consuming channel's liveness: a daemon thread that refreshes the consumer's
    heartbeat and hands dead consumers' messages back, every `HEARTBEAT_EVERY_SECONDS`.

    A thread, not the event loop, so a worker whose loop is busy (a solo pool running a
    long task) is not taken for dead; a killed process stops it, which is the point.
    (`heartbeat_every_seconds` and `heartbeat_ttl_seconds` are transport options.)"""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.pid = os.getpid()
        self.key = HEARTBEAT_PREFIX + channel.consumer_name
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="broadcast-broker-heartbeat", daemon=True
        )

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        try:
            client = self.channel._sync_client
            with client.pipeline(transaction=False) as pipe:
                pipe.delete(self.key)
                pipe.hdel(CONSUMER_REGISTRY, self.channel.consumer_name)
                pipe.execute()
        except (redis_errors.RedisError, OSError):
            pass  # the heartbeat expires on its own; nothing is held after a warm stop

    def beat(self) -> None:
        """Refresh the heartbeat; its value names the stream queues this channel consumes
        (what `Channel.queue_state` counts)."""
        client = self.channel._sync_client
        channel = self.channel
        queues = ",".join(sorted(q for q in channel.active_queues if channel.is_stream(q)))
        with client.pipeline(transaction=False) as pipe:
            pipe.set(self.key, queues, px=int(self.channel.heartbeat_ttl_seconds * 1000))
            pipe.hset(CONSUMER_REGISTRY, self.channel.consumer_name, repr(time.time()))
            pipe.execute()

    def _run(self) -> None:
        while not self._stopped.wait(self.channel.heartbeat_every_seconds):
            try:
                self.beat()
                self.channel.qos.settle_kept()
                self.channel.reclaim_unknown()
                self.channel.reclaim()
            except (redis_errors.RedisError, OSError) as exc:
                log.debug("broker heartbeat: %s, next tick", type(exc).__name__)


class Transport(redis_transport.Transport):
    Channel = Channel
    # kombu's Redis transport sets it in `__init__`: a MultiChannelPoller (never None).
    cycle: _KombuPoller

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Connection.as_uri() asks the transport for a URL only when it says it can parse
        # one; the class attribute stays False, so Connection still parses the URL itself.
        # Tools that pick a broker client by the URL's scheme (Flower's Broker page) then
        # see redis://, not this class's import path.
        self.can_parse_url = True

    def as_uri(self, uri: str, include_password: bool = False, mask: str = "**") -> str:
        client = self.client
        assert client is not None  # the Connection that built this transport
        password = client.password if include_password else (mask if client.password else None)
        auth = f"{client.userid or ''}:{password}@" if password or client.userid else ""
        return f"redis://{auth}{client.hostname or 'localhost'}:{client.port or 6379}/" + str(
            client.virtual_host or 0
        )

    def _deliver(self, message: Any, queue: str | None) -> None:
        """Every message kombu delivers passes here. Stream entries are envelopes already
        (or stand-ins); a fanout message (Celery's remote control, events) that is no
        envelope is dropped with a log line instead of raising in the worker."""
        try:
            checked = checked_envelope(message)
            if "delivery_tag" not in checked["properties"]:
                raise UnreadableEntry("the envelope has no delivery tag")
        except UnreadableEntry as exc:
            log.warning("broadcast.broker.unreadable_fanout queue=%s reason=%s", queue, exc)
            return
        super()._deliver(checked, queue)

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        cycle = self.cycle
        previous = getattr(cycle, "_move_lists_tref", None)
        if previous is not None:
            previous.cancel()

        def move_lists() -> None:
            for channel in list(cycle._channels):
                if channel.active_queues and channel._stream_consumption(channel.active_queues):
                    try:
                        channel.maybe_move_lists()
                    except channel.connection_errors:
                        log.debug("moving list messages: broker unreachable, next tick")
                    return  # one channel moves for the process, as kombu's restore does

        cycle._move_lists_tref = loop.call_repeatedly(LIST_MOVE_BUSY_SECONDS, move_lists)
