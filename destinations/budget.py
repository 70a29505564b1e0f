"""Byte budgets: shrink message content until a payload fits the vendor's limit.

Big text fields go first (message content and tool-call arguments, each cut with a
visible marker); a payload that still does not fit is `PayloadTooLarge`, a permanent
outcome with a reason, never a silent drop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from destinations.base import PayloadTooLarge
from destinations.json_body import compact_json
from destinations.trace import Message, ToolCall, Trace
from destinations.transport import HttpRequest

MIN_FIELD_CHARS = 256


def truncation_marker(dropped: int) -> str:
    return f"…[truncated {dropped} chars]"


def fit_to_budget(trace: Trace, encode: Callable[[Trace], bytes], max_bytes: int) -> bytes:
    """`encode(trace)`, with content truncated (halving the per-field cap) until it fits."""
    body = encode(trace)
    if len(body) <= max_bytes:
        return body
    cap = _longest_field(trace)
    while len(body) > max_bytes:
        if cap <= MIN_FIELD_CHARS:
            raise PayloadTooLarge(
                f"{len(body)} bytes with content truncated, limit {max_bytes} bytes"
            )
        cap = max(cap // 2, MIN_FIELD_CHARS)
        body = encode(truncate_content(trace, cap))
    return body


def fitted_json(
    trace: Trace, serialize: Callable[[Trace], Any], max_bytes: int
) -> tuple[Any, bytes]:
    """`serialize(trace)` and its compact JSON, content truncated to fit `max_bytes`
    (see `fit_to_budget`). Raises `PayloadTooLarge`."""
    shapes: dict[int, Any] = {}

    def encode(candidate: Trace) -> bytes:
        shape = serialize(candidate)
        shapes[0] = shape
        return compact_json(shape)

    body = fit_to_budget(trace, encode, max_bytes)
    return shapes[0], body


def fitted_json_post(
    url: str,
    headers: Mapping[str, str],
    trace: Trace,
    serialize: Callable[[Trace], Any],
    max_bytes: int,
    **options: Any,
) -> HttpRequest:
    """A JSON POST of `serialize(trace)` within `max_bytes` (see `fit_to_budget`).

    Raises `PayloadTooLarge`; `options` go to `HttpRequest` (e.g. `response_limit`).
    """
    body = fit_to_budget(trace, lambda t: compact_json(serialize(t)), max_bytes)
    return HttpRequest(
        "POST", url, {**headers, "Content-Type": "application/json"}, body, **options
    )


def truncate_content(trace: Trace, max_chars: int) -> Trace:
    """The trace with every message content and tool-call argument cut to `max_chars`."""
    return dataclasses.replace(
        trace,
        input_messages=tuple(_truncate_message(m, max_chars) for m in trace.input_messages),
        output_messages=tuple(_truncate_message(m, max_chars) for m in trace.output_messages),
    )


def _truncate(text: str | None, max_chars: int) -> str | None:
    if text is None or len(text) <= max_chars:
        return text
    return text[:max_chars] + truncation_marker(len(text) - max_chars)


def _truncate_message(message: Message, max_chars: int) -> Message:
    return dataclasses.replace(
        message,
        content=_truncate(message.content, max_chars),
        tool_calls=tuple(
            ToolCall(call.id, call.name, _truncate(call.arguments, max_chars) or "")
            for call in message.tool_calls
        ),
    )


def _longest_field(trace: Trace) -> int:
    lengths = [0]
    for message in (*trace.input_messages, *trace.output_messages):
        lengths.append(len(message.content or ""))
        lengths.extend(len(call.arguments) for call in message.tool_calls)
    return max(lengths)
