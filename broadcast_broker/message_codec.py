"""The broker's JSON codec, with the event limits enforced where a message is decoded.

Why here: a prefork worker's main process decodes every task message and pickles the
decoded arguments for its child (`celery.worker.request.Request` puts them in
`request_dict`; `celery.concurrency.asynpool` pickles it). An argument nested about 900
levels deep makes that pickling raise `RecursionError` in the main process, which kills
the worker before any task code runs, and the message comes back to kill the next one.
So no check inside a task can help: this codec, registered for `application/json` in
celeryconfig.py, replaces kombu's decoder in every process that loads the config.

Decoding: kombu's own JSON decoder (C, raising `RecursionError` rather than crashing on
absurd depth), then an iterative walk over the decoded containers checks the depth: the
only extra cost for a message within the limits. Any other message is decoded with the
containers beyond the limit cut out (located by a scan, never by recursion), and each
task argument that broke a limit is replaced by an `settings.event_limits` limit marker,
so the task runs, sees the marker and rejects the event with the reason and the event's
id. A body that is not a Celery task message at all (or not JSON) raises `ValueError`,
which kombu reports as a decode error: Celery logs it and acknowledges the message, and
the worker carries on.

Encoding: kombu's encoder; an argument too deep to encode becomes a limit marker instead
of an `EncodeError` at the gateway's `.delay()`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kombu.serialization import register
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from broadcast_broker import wire_json
from settings.event_limits import EventLimits, limit_marker, short_path

CONTENT_TYPE = "application/json"
# A task message wraps its argument in two containers (protocol 2: [args, kwargs, embed]
# then the args list; protocol 1: the body dict then "args"), and a delivery's trace
# nests extra trace keys one level deeper than the event did: the codec allows that much
# more than the event limit, and `check_event` holds the event to the exact limit.
WRAPPER_LEVELS = 2
DEPTH_MARGIN = 2
# The message envelope (headers, argsrepr) on top of the event's own bytes.
SIZE_MARGIN = 256 * 1024

_BRACKET_OR_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)
_CUT = "\u0000broadcast:cut\u0000"
# The cut mark as JSON text (a raw control character is not allowed inside a JSON string).
_CUT_JSON = '"\\u0000broadcast:cut\\u0000"'


def message_bytes_limit(limits: EventLimits) -> int:
    """The size of a task message body carrying an event at the limit: the event's bytes
    plus the envelope's. Compressed bodies inflate to at most this (celeryconfig.py)."""
    return limits.max_bytes + SIZE_MARGIN


class MessageCodec:
    """kombu encoder/decoder pair bound to one set of limits."""

    def __init__(self, limits: EventLimits) -> None:
        self.limits = limits
        self.max_depth = limits.max_depth + WRAPPER_LEVELS + DEPTH_MARGIN
        self.max_bytes = message_bytes_limit(limits)

    def loads(self, data: str | bytes) -> Any:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        if len(text) > self.max_bytes:
            return self._with_markers(
                self._cut_loads(text), None, f"larger than {self.limits.max_bytes} bytes"
            )
        try:
            body = wire_json.loads(text)
        except RecursionError:  # deeper than the interpreter's limit: certainly too deep
            pass
        else:
            if not _too_deep(body, self.max_depth):
                return body
        body = self._cut_loads(text)
        return self._with_markers(
            body, _first_cut_path(body), f"nested deeper than {self.limits.max_depth} levels"
        )

    def dumps(self, body: Any) -> str:
        try:
            return wire_json.dumps(body)
        except RecursionError:
            pass
        body = list(body) if isinstance(body, tuple) else body
        args, kwargs = _arguments(body)
        if args is None:
            raise ValueError("message nested too deep to encode")
        reason = f"event: nested deeper than {self.limits.max_depth} levels"
        for index, value in enumerate(args):
            if _too_deep_to_encode(value):
                args[index] = limit_marker(value, reason)
        for key, value in list(kwargs.items()):
            if _too_deep_to_encode(value):
                kwargs[key] = limit_marker(value, reason)
        return kombu_dumps(body)

    def _cut_loads(self, text: str) -> Any:
        """Decode with every container deeper than the limit replaced by a cut mark."""
        pieces: list[str] = []
        depth, cut_start, kept = 0, -1, 0
        for match in _BRACKET_OR_STRING.finditer(text):
            token = match.group()
            if token[0] == '"':
                continue
            if token in "[{":
                depth += 1
                if depth == self.max_depth + 1:
                    cut_start = match.start()
            else:
                if depth == self.max_depth + 1 and cut_start >= 0:
                    pieces += [text[kept:cut_start], _CUT_JSON]
                    kept, cut_start = match.end(), -1
                depth -= 1
        pieces.append(text[kept:] if cut_start < 0 else text[kept:cut_start] + _CUT_JSON)
        return kombu_loads("".join(pieces))

    def _with_markers(self, body: Any, cut_path: str | None, reason: str) -> Any:
        """Replace each task argument that broke a limit by a limit marker."""
        args, kwargs = _arguments(body)
        if args is None:
            raise ValueError(f"message {reason}")
        slots: list[tuple[Any, Any, str]] = [(args, i, str(i)) for i in range(len(args))]
        slots += [(kwargs, key, str(key)) for key in kwargs]
        for container, key, name in slots:
            value = container[key]
            if cut_path is None:
                if isinstance(value, Mapping | list):
                    container[key] = limit_marker(value, f"event: {reason}")
            elif cut_path == name or cut_path.startswith(name + "."):
                field = short_path(cut_path[len(name) + 1 :] or "event")
                container[key] = limit_marker(value, f"{field}: {reason}")
        return body


def register_codec(limits: EventLimits) -> MessageCodec:
    """Register the codec as kombu's `json` serializer (content type application/json)."""
    codec = MessageCodec(limits)
    register("json", codec.dumps, codec.loads, content_type=CONTENT_TYPE, content_encoding="utf-8")
    return codec


def _too_deep(value: Any, max_depth: int) -> bool:
    """Whether a container in decoded JSON nests deeper than `max_depth` (the outermost
    container is level 1). Iterative, and visits each container once."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack += [(child, depth + 1) for child in children if isinstance(child, dict | list)]
    return False


def _arguments(body: Any) -> tuple[list[Any] | None, dict[str, Any]]:
    """The (args, kwargs) of a protocol 2 or protocol 1 task message body, else (None, {})."""
    if isinstance(body, list) and len(body) == 3 and isinstance(body[0], list | tuple):
        args = body[0] if isinstance(body[0], list) else list(body[0])
        body[0] = args
        kwargs = body[1] if isinstance(body[1], dict) else {}
        return args, kwargs
    if isinstance(body, dict) and isinstance(body.get("args"), list):
        given = body.get("kwargs")
        return body["args"], given if isinstance(given, dict) else {}
    return None, {}


def _first_cut_path(body: Any) -> str | None:
    """The dotted path, relative to the task arguments, of the first cut, in document order."""
    stack: list[tuple[Any, str]] = []
    args, kwargs = _arguments(body)
    if args is None:
        return None
    stack += [(kwargs[key], str(key)) for key in reversed(list(kwargs))]
    stack += [(args[i], str(i)) for i in reversed(range(len(args)))]
    while stack:
        value, path = stack.pop()
        if value == _CUT:
            return path
        if isinstance(value, dict):
            stack += [(value[k], f"{path}.{k}") for k in reversed(list(value))]
        elif isinstance(value, list):
            stack += [(value[i], f"{path}.{i}") for i in reversed(range(len(value)))]
    return None


def _too_deep_to_encode(value: Any) -> bool:
    try:
        kombu_dumps(value)
    except RecursionError:
        return True
    return False
