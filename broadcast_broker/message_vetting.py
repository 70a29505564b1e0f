"""What makes a broker message readable as a Celery task, checked before Celery reads it.

Celery's worker trusts a task message's shape: its strategy unpacks the body as
`(args, kwargs, embed)`, uses the `id` header as a dict key, hands `timelimit` to the
pool as two numbers. A message that breaks one of these raised `TypeError` or
`ValueError` in the worker's *main* process, which then exited; the message, never
acknowledged, came back and stopped the next worker too (14 of 40 kinds of raw message
on the gateway's list did). `problem(message, limits)` names what is wrong with a
message, or returns None when Celery can take it; the worker's consumer
(broadcast_engine/vetting_consumer.py) sets the others aside, recorded, and acknowledges them.

Checked, in order: a transport's own "unreadable" mark (an entry that was not even an
envelope, see broadcast_broker/stream_transport.py); headers are an object; the content type is
JSON (kombu hands "trusted" types such as `application/data`, or none at all, through as
raw bytes); the body's size; that it decodes (the broker codec, broadcast_broker/message_codec.py,
with the event limits); the body's shape for protocol 2 (`[args, kwargs, embed]`, or
the hybrid object with `args`) and protocol 1 (an object with `task`, `id`, `args`); and
the types of the fields Celery's main process uses (`id`, `task`, `timelimit`, `eta`,
`expires`, `retries`, ...). Task arguments themselves are the task's business: an
invalid event is rejected by fan-out with the field named, like any other.

No Celery import here: the stream transport uses the marks, and a gateway never loads this.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# What a transport puts on a message it could not read (broadcast_broker/stream_transport.py).
UNREADABLE_HEADER = "x-broadcast-unreadable"
UNREADABLE_SIZE_HEADER = "x-broadcast-unreadable-size"
UNREADABLE_SHA256_HEADER = "x-broadcast-unreadable-sha256"
UNREADABLE_CONTENT_TYPE = "application/x-broadcast-unreadable"

JSON_CONTENT_TYPE = "application/json"
# A task id or name longer than this is no Celery id (a UUID is 36 characters).
MAX_ID_CHARS = 256
# `argsrepr` and similar texts Celery logs and shows in Flower.
MAX_REPR_CHARS = 64 * 1024
# Unicode's control, format-less line-breaking characters: no id may carry one (a newline
# in a task id forged whole lines in Celery's text log).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class RawFacts:
    """What can be said of a message's bytes without reading them."""

    size: int
    sha256: str

    @classmethod
    def of(cls, *parts: bytes) -> RawFacts:
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part)
        return cls(sum(len(part) for part in parts), digest.hexdigest())


def raw_bytes(body: Any) -> bytes:
    """A message body as the bytes it travelled as (UTF-8 for a text body)."""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    return b""


def unreadable_headers(reason: str, facts: RawFacts) -> dict[str, Any]:
    """The headers a transport sets on the stand-in for an entry it could not read."""
    return {
        UNREADABLE_HEADER: reason,
        UNREADABLE_SIZE_HEADER: facts.size,
        UNREADABLE_SHA256_HEADER: facts.sha256,
    }


def transport_mark(headers: Any) -> tuple[str, RawFacts] | None:
    """The reason and raw facts a transport marked a message with, if it did."""
    if not isinstance(headers, Mapping) or UNREADABLE_HEADER not in headers:
        return None
    size = headers.get(UNREADABLE_SIZE_HEADER)
    digest = headers.get(UNREADABLE_SHA256_HEADER)
    facts = RawFacts(
        size if isinstance(size, int) else 0, digest if isinstance(digest, str) else ""
    )
    return str(headers[UNREADABLE_HEADER])[:MAX_REPR_CHARS], facts


@dataclass(frozen=True)
class VettingLimits:
    """`max_body_bytes`: a body larger than this is set aside without being decoded."""

    max_body_bytes: int


def problem(message: Any, limits: VettingLimits) -> str | None:
    """Why `message` (a kombu `Message`) cannot be handed to Celery, or None.

    Decodes the body through the message (`message.decode()`), which caches it: Celery
    reads the same decoded payload afterwards, so a message is decoded once. Never raises
    for anything in the message.
    """
    marked = transport_mark(message.headers)
    if marked is not None:
        return marked[0]
    headers = message.headers
    if not isinstance(headers, Mapping):
        return f"headers must be an object, not {type(headers).__name__}"
    content_type = message.content_type
    if content_type != JSON_CONTENT_TYPE:
        return f"content type {_shown(content_type)} is not {JSON_CONTENT_TYPE}"
    body = message.body
    if not isinstance(body, bytes | bytearray | memoryview | str) or not body:
        return "the body is empty"
    if len(body) > limits.max_body_bytes:
        return f"the body is {len(body)} bytes, more than {limits.max_body_bytes}"
    try:
        payload = message.decode()
    except Exception as exc:  # boundary: kombu wraps any decoder error, we name it
        return f"the body is not JSON a worker can read ({_described(exc)})"
    if isinstance(payload, Mapping) and "args" in payload:
        # Celery's hybrid form (either protocol): the task's fields come from the body,
        # the headers winning.
        found = _arguments(payload.get("args", ()), payload.get("kwargs", {}))
        return found or _task_fields({**payload, **headers}, "field")
    if "task" in headers:
        return _protocol_2(headers, payload)
    return _protocol_1(payload)


def _protocol_2(headers: Mapping[str, Any], payload: Any) -> str | None:
    if isinstance(payload, list | tuple) and len(payload) == 3:
        args, kwargs, embed = payload
        found = _arguments(args, kwargs)
        if found is None and embed is not None and not isinstance(embed, Mapping):
            found = f"the body's third item (callbacks) must be an object, not {_kind(embed)}"
    else:
        return f"the body must be [args, kwargs, embed], not {_kind(payload)}"
    return found or _task_fields(headers, "header")


def _protocol_1(payload: Any) -> str | None:
    if not isinstance(payload, Mapping):
        return f"a message without a task header must be a task object, not {_kind(payload)}"
    if "task" not in payload:
        return "neither the headers nor the body name a task"
    found = _arguments(payload.get("args", ()), payload.get("kwargs", {}))
    return found or _task_fields(payload, "field")


def _arguments(args: Any, kwargs: Any) -> str | None:
    if not isinstance(args, list | tuple):
        return f"args must be a list, not {_kind(args)}"
    if not isinstance(kwargs, Mapping):
        return f"kwargs must be an object, not {_kind(kwargs)}"
    return None


def _task_fields(fields: Mapping[str, Any], where: str) -> str | None:
    """The fields of a task that Celery's main process reads, each of its expected type."""
    for name in ("task", "id"):
        value = fields.get(name)
        if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
            return f"{where} {name!r} must be a string of 1 to {MAX_ID_CHARS} characters"
        if _CONTROL.search(value):
            return f"{where} {name!r} must not contain control characters"
    for name in ("root_id", "parent_id", "group", "taskset", "shadow"):
        value = fields.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_ID_CHARS):
            return f"{where} {name!r} must be a string of at most {MAX_ID_CHARS} characters"
    for name in ("argsrepr", "kwargsrepr", "origin", "lang", "eta", "expires"):
        value = fields.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_REPR_CHARS):
            return f"{where} {name!r} must be a string"
    for name in ("retries", "replaced_task_nesting"):
        value = fields.get(name)
        if value is not None and (type(value) is not int or value < 0):
            return f"{where} {name!r} must be a non-negative integer"
    ignore_result = fields.get("ignore_result")
    if ignore_result is not None and not isinstance(ignore_result, bool):
        return f"{where} 'ignore_result' must be true or false"
    stamped = fields.get("stamped_headers")
    if stamped is not None and (
        not isinstance(stamped, list | tuple) or not all(isinstance(s, str) for s in stamped)
    ):
        return f"{where} 'stamped_headers' must be a list of strings"
    stamps = fields.get("stamps")
    if stamps is not None and not isinstance(stamps, Mapping):
        return f"{where} 'stamps' must be an object"
    return _time_limits(fields.get("timelimit"), where)


def _time_limits(value: Any, where: str) -> str | None:
    if value is None:
        return None
    shape = f"{where} 'timelimit' must be [soft, hard], each null or seconds"
    if not isinstance(value, list | tuple) or len(value) != 2:
        return shape
    for limit in value:
        if limit is None:
            continue
        if isinstance(limit, bool) or not isinstance(limit, int | float):
            return shape
        if not (math.isfinite(limit) and 0 <= limit <= 365 * 86400):
            return shape
    return None


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _shown(value: Any) -> str:
    if value is None:
        return "(none)"
    return repr(value)[:100] if isinstance(value, str) else f"of type {_kind(value)}"


def _described(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__ or exc
    text = str(cause).splitlines()[0] if str(cause) else ""
    return f"{type(cause).__name__}: {text[:200]}" if text else type(cause).__name__
