"""Documented, configurable limits on a gateway's event, checked without recursion.

| limit | default | environment variable |
| --- | --- | --- |
| nesting depth (the event object itself is level 1) | 64 | `BROADCAST_EVENT_MAX_DEPTH` |
| total size (approximate JSON bytes) | 16 MiB | `BROADCAST_EVENT_MAX_BYTES` |
| `request.messages` entries | 10,000 | `BROADCAST_EVENT_MAX_MESSAGES` |
| characters in one string (keys included) | 8 Mi | `BROADCAST_EVENT_MAX_STRING_CHARS` |

One more rule, not configurable: an integer must fit in 64 bits (JSON allows any; OTLP
attributes, the stored trace's encoder and most vendors' readers do not).

`check_event` walks the event with an explicit stack, so an event nested a million levels
deep costs a loop, never a `RecursionError`. The broker codec (`broadcast_broker.message_codec`)
enforces the depth and size limits on the raw message before Celery touches the decoded
arguments; an event it had to cut arrives as a *limit marker*: a small dict with the
event's `id`, `user_id`, `org_id` and the reason under `LIMIT_MARKER`, which
`broadcast_engine.events.build_trace` turns into a rejection like any other invalid event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LIMIT_MARKER = "__broadcast_limit_exceeded__"
# Bytes counted per scalar, key and container besides string contents (quotes, commas...).
_OVERHEAD = 4


class LimitExceeded(ValueError):
    """The event breaks a limit; `path` is the dotted field path (`event` for the whole)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = short_path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def short_path(path: str, keep: int = 6) -> str:
    """A dotted path cut to its first `keep` parts (a nested-too-deep path is long)."""
    parts = path.split(".", keep)
    if len(parts) <= keep:
        return path
    return ".".join(parts[:keep]) + ".…"


@dataclass(frozen=True)
class EventLimits:
    max_depth: int = 64
    max_bytes: int = 16 * 1024 * 1024
    max_messages: int = 10_000
    max_string_chars: int = 8 * 1024 * 1024

    @classmethod
    def from_config(cls, config: Any) -> EventLimits:
        """From a `BroadcastConfig` (its `event_max_*` fields)."""
        return cls(
            max_depth=config.event_max_depth,
            max_bytes=config.event_max_bytes,
            max_messages=config.event_max_messages,
            max_string_chars=config.event_max_string_chars,
        )


_JSON_TYPES = frozenset({str, dict, list, int, float, bool, type(None)})
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_event(event: Any, limits: EventLimits) -> None:
    """Raise `LimitExceeded` naming the first offending field; never anything else."""
    if not isinstance(event, Mapping):
        return
    messages = (event.get("request") or {}) if isinstance(event.get("request"), Mapping) else {}
    count = messages.get("messages")
    if isinstance(count, list) and len(count) > limits.max_messages:
        raise LimitExceeded(
            "request.messages", f"more than {limits.max_messages} messages ({len(count)})"
        )
    size = 0
    # (value, its parent's path, its key, depth): a path is built for containers only, and
    # for a leaf only when it breaks a limit.
    stack: list[tuple[Any, str, Any, int]] = [(event, "", _ROOT, 1)]
    while stack:
        value, parent, key, depth = stack.pop()
        kind = type(value)  # JSON gives these exact types; an ABC (Mapping) check is slow
        if isinstance(value, str):
            size += len(value) + _OVERHEAD
            if len(value) > limits.max_string_chars:
                raise LimitExceeded(
                    _path(parent, key) or "event",
                    f"string longer than {limits.max_string_chars} characters",
                )
        elif (
            kind is dict
            or kind is list
            or (kind not in _JSON_TYPES and isinstance(value, Mapping | list | tuple))
        ):
            path = _path(parent, key)
            if depth > limits.max_depth:
                raise LimitExceeded(
                    path or "event", f"nested deeper than {limits.max_depth} levels"
                )
            mapping = kind is dict or (kind is not list and isinstance(value, Mapping))
            for child_key, child in value.items() if mapping else enumerate(value):
                if isinstance(child_key, str):
                    size += len(child_key) + _OVERHEAD
                    if len(child_key) > limits.max_string_chars:
                        raise LimitExceeded(
                            _path(path, child_key)[:200],
                            f"key longer than {limits.max_string_chars} characters",
                        )
                stack.append((child, path, child_key, depth + 1))
        elif kind is int and not INT64_MIN <= value <= INT64_MAX:
            raise LimitExceeded(_path(parent, key) or "event", "integer beyond 64 bits")
        else:
            size += 8 + _OVERHEAD
        if size > limits.max_bytes:
            raise LimitExceeded("event", f"larger than {limits.max_bytes} bytes")


_ROOT = object()


def _path(parent: str, key: Any) -> str:
    """The dotted path of `key` under `parent` ("" for the event itself)."""
    if key is _ROOT:
        return parent
    return f"{parent}.{key}" if parent else str(key)


def limit_marker(event: Any, reason: str) -> dict[str, Any]:
    """What travels instead of an event that broke a limit before it could be decoded whole."""
    marker: dict[str, Any] = {LIMIT_MARKER: reason}
    if isinstance(event, Mapping):
        for name in ("id", "user_id", "org_id"):
            value = event.get(name)
            if isinstance(value, str):
                marker[name] = value[:256]
    return marker


def marker_reason(event: Any) -> str | None:
    """The reason carried by a limit marker, or None for an ordinary event."""
    if isinstance(event, Mapping) and isinstance(event.get(LIMIT_MARKER), str):
        return event[LIMIT_MARKER]
    return None
