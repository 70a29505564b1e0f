"""Raindrop: one AI event per request through the track API.

| trace | Raindrop `TrackAIEvent` (`raindrop.models` in the `raindrop-ai` SDK) |
| --- | --- |
| every request | one event; `event_id` from (request id, destination id) |
| `generation_name` (default: the model) | `event` (the event's name) |
| `user` (else the owner id) | `user_id` (Raindrop requires a non-empty one) |
| `session_id` | `ai_data.convo_id` (groups a conversation's turns) |
| model | `ai_data.model` |
| the last user message's text | `ai_data.input` |
| the first answer's text (else its tool calls) | `ai_data.output` |
| privacy mode | `ai_data.input` and `.output` are `"[redacted]"` (Raindrop refuses an event |
|  | with neither, so the content is replaced, not dropped) |
| neither text (e.g. a failed request) | `ai_data.input` `"[no text]"`, for the same reason |
| `trace_id` / `trace_name` / `span_name` | properties `trace_id` / `trace_name` / `span_name` |
| other `trace` keys | properties, as given (a key named like a system property below loses) |
| usage, cost, timing, model, provider | properties `model`, `provider`, `total_cost`, |
|  | `input_cost`, `output_cost`, `prompt_tokens`, `completion_tokens`, `total_tokens`, |
|  | `cached_tokens`, `reasoning_tokens`, `duration_ms`, `time_to_first_token_ms`, |
|  | `finish_reason`, `request_id`, `status`, `streamed` (and `error` when it failed) |
| finish time | `timestamp` |

Wire: `POST {base_url}/v1/events/track` (default `https://api.raindrop.ai`), a JSON array
of events, `Authorization: Bearer <write_key>` (as the SDK posts them). Limits are the
SDK's: an event at most 1 MB (content truncated to fit, else `PayloadTooLarge`), 10 events
per request. Raindrop documents no idempotency key beyond `event_id`, which is the same
on every retry.

Test Connection posts an empty array (`[]`): it proves the URL and the key and records
nothing; 401/403 is rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any, TypedDict

from destinations.base import (
    BatchLimits,
    ConfigSchema,
    ConnectionCheck,
    DeliveryContext,
    EncodedItem,
    HttpDestination,
    check_from_transport,
)
from destinations.budget import fit_to_budget
from destinations.config_fields import custom_headers_field, secret_field, url_field
from destinations.ids import derived_uuid
from destinations.json_body import compact_json
from destinations.registry import register
from destinations.trace import Message, Trace
from destinations.transport import HttpRequest, join_url

DEFAULT_BASE_URL = "https://api.raindrop.ai"
TRACK_PATH = "/v1/events/track"
# The SDK's limits (raindrop/analytics.py: max_ingest_size_bytes, upload_size).
MAX_EVENT_BYTES = 1024 * 1024
MAX_BATCH_EVENTS = 10
REDACTED = "[redacted]"
NO_TEXT = "[no text]"
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "authorization", "x-test-connection"}
)


class RaindropConfig(ConfigSchema):
    write_key = secret_field(max_length=512)
    base_url = url_field(load_default=DEFAULT_BASE_URL)
    headers = custom_headers_field(RESERVED_HEADERS)


class AIData(TypedDict):
    model: str | None
    input: str | None
    output: str | None
    convo_id: str | None


class TrackAIEvent(TypedDict):
    event_id: str
    user_id: str
    event: str
    ai_data: AIData
    properties: dict[str, Any]
    timestamp: str


def track_event(trace: Trace, destination_id: str) -> TrackAIEvent:
    """Pure: the event for one request (see the module table)."""
    if trace.content_redacted:
        question: str | None = REDACTED
        answer: str | None = REDACTED
    else:
        question, answer = _last_user_text(trace), _answer_text(trace)
        if not question and not answer:
            question = NO_TEXT
    return TrackAIEvent(
        event_id=derived_uuid(trace.request_id, destination_id, "raindrop"),
        user_id=trace.end_user or trace.owner,
        event=trace.generation_name,
        ai_data=AIData(model=trace.model, input=question, output=answer, convo_id=trace.session_id),
        properties=properties(trace),
        timestamp=trace.finished_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    )


def properties(trace: Trace) -> dict[str, Any]:
    """The caller's keys as given, then the trace's own (which win a name clash)."""
    meta, usage, cost = trace.metadata, trace.usage, trace.cost
    values: dict[str, Any] = dict(meta.extra)
    system: dict[str, Any] = {
        "trace_id": meta.trace_id,
        "trace_name": meta.trace_name,
        "span_name": meta.span_name,
        "model": trace.model,
        "provider": trace.provider,
        "request_id": trace.request_id,
        "status": trace.status,
        "total_cost": cost.total,
        "input_cost": cost.input,
        "output_cost": cost.output,
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "cached_tokens": usage.cached_input_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "duration_ms": round(trace.duration_ms, 3),
        "time_to_first_token_ms": trace.time_to_first_token_ms,
        "finish_reason": trace.finish_reasons[0] if trace.finish_reasons else None,
        "streamed": trace.streamed,
    }
    if trace.is_error:
        system["error"] = trace.error.message if trace.error else "request failed"
    values.update({key: value for key, value in system.items() if value is not None})
    return values


@register
class RaindropDestination(HttpDestination):
    slug = "raindrop"
    display_name = "Raindrop"
    config_schema = RaindropConfig
    batch_limits = BatchLimits(
        max_items=MAX_BATCH_EVENTS, max_bytes=MAX_BATCH_EVENTS * MAX_EVENT_BYTES
    )

    def encode_item(self, trace: Trace, context: DeliveryContext) -> EncodedItem:
        """The event, content truncated to the SDK's per-event limit."""
        shaped: list[TrackAIEvent] = []

        def encode(candidate: Trace) -> bytes:
            shaped[:] = [track_event(candidate, context.destination_id)]
            return compact_json(shaped[0])

        body = fit_to_budget(trace, encode, MAX_EVENT_BYTES)
        return EncodedItem(shaped[0], len(body) + 1)

    def build_request(self, trace: Trace, context: DeliveryContext) -> HttpRequest:
        return self.batch_request([self.encode_item(trace, context).payload], context)

    def batch_request(self, payloads: Sequence[Any], context: DeliveryContext) -> HttpRequest:
        return self._post(compact_json(list(payloads)))

    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        """An empty batch: proves the URL and the write key, records nothing."""
        return check_from_transport(
            self.transport.send(self._post(b"[]")),
            rejected_message="Raindrop rejected the write key",
        )

    def _post(self, body: bytes) -> HttpRequest:
        headers = {
            "Authorization": f"Bearer {self.config['write_key']}",
            "Content-Type": "application/json",
        }
        base = self.config.get("base_url") or DEFAULT_BASE_URL
        return HttpRequest("POST", join_url(base, TRACK_PATH), headers, body)


def _last_user_text(trace: Trace) -> str | None:
    chosen = next(
        (m for m in reversed(trace.input_messages) if m.role == "user" and m.content), None
    ) or next((m for m in reversed(trace.input_messages) if m.content), None)
    return chosen.content if chosen else None


def _answer_text(trace: Trace) -> str | None:
    if not trace.output_messages:
        return None
    return _readable(trace.output_messages[0])


def _readable(message: Message) -> str | None:
    if message.content:
        return message.content
    calls = [f"{call.name}({call.arguments})" for call in message.tool_calls]
    return "\n".join(calls) or None
