"""Previews: the request's input and output as a trace list shows them, bounded.

Receivers show a trace's input and output from its root span (Langfuse's root
observation, Phoenix's and LangSmith's root run, Weave's root call). The full messages
travel once, on the generation; the root (and a `span_name` span) carry a preview: the
last user message and the answer, each cut to `PREVIEW_BYTES` of UTF-8 with a marker.
That is how "send content once" and "show a preview" both hold. Privacy mode leaves no
messages, hence no preview.
"""

from __future__ import annotations

from destinations.trace import Message, Trace

PREVIEW_BYTES = 2048
MARKER = "…[preview]"


def input_preview(trace: Trace) -> str | None:
    """The last user message with text (else the last message with text), bounded."""
    chosen = next(
        (m for m in reversed(trace.input_messages) if m.role == "user" and m.content), None
    ) or next((m for m in reversed(trace.input_messages) if m.content), None)
    return bounded(chosen.content) if chosen and chosen.content else None


def output_preview(trace: Trace) -> str | None:
    """The first answer's text, else its tool calls as `name(arguments)`, bounded."""
    if not trace.output_messages:
        return None
    text = _readable(trace.output_messages[0])
    return bounded(text) if text else None


def bounded(text: str, limit: int = PREVIEW_BYTES) -> str:
    """`text` if its UTF-8 fits `limit` bytes, else a prefix that fits, with `MARKER`."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    room = limit - len(MARKER.encode("utf-8"))
    return encoded[:room].decode("utf-8", "ignore") + MARKER


def _readable(message: Message) -> str | None:
    if message.content:
        return message.content
    calls = [f"{call.name}({call.arguments})" for call in message.tool_calls]
    return "\n".join(calls) or None
