"""PostHog LLM analytics: `$ai_generation` events through the batch API.

| trace | PostHog event (property names as posthog-python's `posthog.ai` writes them) |
| --- | --- |
| every request | one `$ai_generation` event; `uuid` from (request id, destination id) |
| `span_name` (only when given) | a `$ai_span` event, the generation's `$ai_parent_id` |
| `trace_id` (else the request id) | `$ai_trace_id` on every event |
| `trace_name` (when given) | the plain property `trace_name` (as OpenRouter sends it) |
| `generation_name` (default: the model) | `$ai_span_name` of the generation |
| `parent_span_id` (any form) | `$ai_parent_id` of our top event (span, else generation) |
| `user` (else the owner) | `distinct_id`; without `user`, `$process_person_profile: false` |
| `session_id` | `$ai_session_id` |
| other `trace` keys | `metadata_<key>`; containers deeper than 3 levels → `'[truncated]'` |
| model / provider (lower-cased) | `$ai_model` / `$ai_provider` |
| messages (OpenAI chat format) | `$ai_input` / `$ai_output_choices` (privacy: left out) |
| tool definitions (with the messages) | `$ai_tools` |
| `prompt_tokens` (cached included) | `$ai_input_tokens` (int); `$ai_cache_reporting_exclusive` |
|  | `false` |
| `completion_tokens` | `$ai_output_tokens` |
| cached / cache-write / reasoning | `$ai_cache_read_input_tokens` / |
|  | `$ai_cache_creation_input_tokens` / `$ai_reasoning_tokens` (when reported) |
| cost (USD) total / input / output | `$ai_total_cost_usd` / `$ai_input_cost_usd` / |
|  | `$ai_output_cost_usd` (PostHog uses given costs instead of pricing tokens) |
| duration / time to first token | `$ai_latency` / `$ai_time_to_first_token` (seconds) |
| streamed, sampling parameters | `$ai_stream`, `$ai_model_parameters` |
| first finish reason | `$ai_stop_reason` |
| failed request | `$ai_is_error: true`, `$ai_error` (message), `$ai_http_status` (the code) |
| finish time | event `timestamp` (the SDK stamps an event when the call returns) |

Differences from the SDK's own `$ai_generation` (posthog.ai.utils.capture_streaming_event),
each on purpose: no `$ai_base_url` (the gateway's upstream URL is not in the trace); no
`$ai_lib`/`$ai_lib_version`/`$ai_tokens_source` (the SDK's self-identification; we set
`$lib: broadcast`); `$ai_provider` is the gateway's provider lower-cased, not the SDK's
client name; we add the ids (`$ai_span_id`, `$ai_parent_id`, a deterministic `uuid`),
`$ai_session_id`, costs, `$ai_stream`, `$ai_time_to_first_token` and
`$ai_cache_reporting_exclusive: false`, which the SDK's streaming path leaves to defaults
(the gateway's `prompt_tokens` include cached tokens whatever the provider, and PostHog
assumes exclusive cache counts for Anthropic).

Wire: `POST {endpoint}/batch/` with `{"api_key", "batch": [events], "historical_migration":
false, "sent_at"}` (the SDK's envelope, its legacy `/batch/` lane); every event carries
`$geoip_disable: true` as the SDK's server-side events do (the gateway's address is not
the user's). Limits are the SDK's: an event at most 900 KiB
(content truncated to fit, else `PayloadTooLarge`), a request at most 5 MiB, 100 events.
PostHog de-duplicates events by `uuid`, so retries and replays do not duplicate.

Test Connection: the capture endpoints answer 200 to any key, so the probe asks
`POST {endpoint}/flags/?v=2` (feature flags, read-only) with the key: 401 means rejected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NotRequired, TypedDict

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
from destinations.chat_format import ChatMessage, chat_messages
from destinations.config_fields import custom_headers_field, secret_field, url_field
from destinations.ids import derived_uuid
from destinations.json_body import compact_json
from destinations.registry import register
from destinations.trace import Trace
from destinations.transport import HttpRequest, join_url

DEFAULT_ENDPOINT = "https://us.i.posthog.com"
BATCH_PATH = "/batch/"
FLAGS_PATH = "/flags/?v=2"
# posthog-python's limits (posthog/consumer.py: MAX_MSG_SIZE, BATCH_SIZE_LIMIT, flush_at).
MAX_EVENT_BYTES = 900 * 1024
MAX_BATCH_BYTES = 5 * 1024 * 1024
MAX_BATCH_EVENTS = 100
# Room for the envelope (api key, `sent_at`, brackets) inside the request limit.
ENVELOPE_BYTES = 4096
MAX_METADATA_DEPTH = 3
TRUNCATED = "[truncated]"
LIBRARY = "broadcast"
LIBRARY_VERSION = "0.1.0"
CONNECTION_TEST_DISTINCT_ID = "broadcast-connection-test"
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "content-encoding", "x-test-connection"}
)


class PosthogConfig(ConfigSchema):
    api_key = secret_field(max_length=512)
    endpoint = url_field(load_default=DEFAULT_ENDPOINT)
    headers = custom_headers_field(RESERVED_HEADERS)


class Event(TypedDict):
    event: str
    distinct_id: str
    uuid: str
    timestamp: str
    properties: dict[str, Any]


class BatchEnvelope(TypedDict):
    api_key: str
    batch: list[Event]
    historical_migration: bool
    sent_at: NotRequired[str]


def events(trace: Trace, destination_id: str) -> list[Event]:
    """Pure: this request's events, the `$ai_span` (when `span_name`) first."""
    meta = trace.metadata
    shared = _shared_properties(trace)
    distinct_id = trace.end_user or trace.owner
    timestamp = _iso(trace.finished_at)
    generation_id = derived_uuid(trace.request_id, destination_id, "posthog-generation")
    out: list[Event] = []
    parent = meta.parent_span_id
    if meta.span_name:
        span_id = derived_uuid(trace.request_id, destination_id, "posthog-span")
        span_properties = {
            **shared,
            "$ai_span_id": span_id,
            "$ai_span_name": meta.span_name,
            "$ai_latency": _seconds(trace),
        }
        if parent:
            span_properties["$ai_parent_id"] = parent
        if trace.is_error:
            span_properties["$ai_is_error"] = True
        out.append(
            Event(
                event="$ai_span",
                distinct_id=distinct_id,
                uuid=span_id,
                timestamp=timestamp,
                properties=span_properties,
            )
        )
        parent = span_id
    properties = {**shared, **generation_properties(trace), "$ai_span_id": generation_id}
    if parent:
        properties["$ai_parent_id"] = parent
    out.append(
        Event(
            event="$ai_generation",
            distinct_id=distinct_id,
            uuid=generation_id,
            timestamp=timestamp,
            properties=properties,
        )
    )
    return out


def generation_properties(trace: Trace) -> dict[str, Any]:
    """The `$ai_generation` properties that describe the LLM call (see the module table)."""
    usage, cost = trace.usage, trace.cost
    values: dict[str, Any] = {
        "$ai_span_name": trace.generation_name,
        "$ai_model": trace.model,
        "$ai_provider": trace.provider.strip().lower(),
        "$ai_input_tokens": int(usage.input_tokens),
        "$ai_output_tokens": int(usage.output_tokens),
        "$ai_cache_reporting_exclusive": False,
        "$ai_latency": _seconds(trace),
        "$ai_stream": trace.streamed,
        "$ai_model_parameters": dict(trace.model_parameters),
    }
    optional: dict[str, Any] = {
        "$ai_cache_read_input_tokens": usage.cached_input_tokens,
        "$ai_cache_creation_input_tokens": usage.cache_write_input_tokens,
        "$ai_reasoning_tokens": usage.reasoning_tokens,
        "$ai_total_cost_usd": cost.total,
        "$ai_input_cost_usd": cost.input,
        "$ai_output_cost_usd": cost.output,
        "$ai_stop_reason": trace.finish_reasons[0] if trace.finish_reasons else None,
    }
    if trace.streamed and trace.time_to_first_token_ms is not None:
        optional["$ai_time_to_first_token"] = trace.time_to_first_token_ms / 1000.0
    values.update({key: value for key, value in optional.items() if value is not None})
    # Content goes only when there is content (privacy mode leaves none): tool definitions
    # are part of the prompt, so they go with it.
    if trace.input_messages:
        values["$ai_input"] = _messages(chat_messages(trace.input_messages))
        if trace.tools:
            values["$ai_tools"] = list(trace.tools)
    if trace.output_messages:
        values["$ai_output_choices"] = _messages(chat_messages(trace.output_messages))
    if trace.is_error:
        values["$ai_is_error"] = True
        values["$ai_error"] = trace.error.message if trace.error else "request failed"
        status = _http_status(trace)
        if status is not None:
            values["$ai_http_status"] = status
    else:
        values["$ai_http_status"] = 200
    return values


def metadata_value(value: Any, level: int = 1) -> Any:
    """A custom property value with containers below `MAX_METADATA_DEPTH` levels replaced
    by `'[truncated]'` (the value itself, if a container, is level 1)."""
    if isinstance(value, Mapping | list | tuple):
        if level > MAX_METADATA_DEPTH:
            return TRUNCATED
        if isinstance(value, Mapping):
            return {str(k): metadata_value(v, level + 1) for k, v in value.items()}
        return [metadata_value(item, level + 1) for item in value]
    return value


def batch_envelope(api_key: str, batch: list[Event], now: datetime) -> BatchEnvelope:
    """Pure: the body of one `/batch/` request (the SDK's envelope)."""
    return BatchEnvelope(
        api_key=api_key, batch=batch, historical_migration=False, sent_at=_iso(now)
    )


@register
class PosthogDestination(HttpDestination):
    slug = "posthog"
    display_name = "PostHog"
    config_schema = PosthogConfig
    batch_limits = BatchLimits(
        max_items=MAX_BATCH_EVENTS // 2, max_bytes=MAX_BATCH_BYTES - ENVELOPE_BYTES
    )

    def encode_item(self, trace: Trace, context: DeliveryContext) -> EncodedItem:
        """This request's events; the generation (which carries the content) fitted to the
        per-event limit. Raises `PayloadTooLarge`."""
        shaped: list[list[Event]] = []

        def generation_bytes(candidate: Trace) -> bytes:
            shaped[:] = [events(candidate, context.destination_id)]
            return compact_json(shaped[0][-1])

        fit_to_budget(trace, generation_bytes, MAX_EVENT_BYTES)  # the last call fitted
        return EncodedItem(shaped[0], sum(len(compact_json(event)) + 1 for event in shaped[0]))

    def build_request(self, trace: Trace, context: DeliveryContext) -> HttpRequest:
        return self.batch_request([self.encode_item(trace, context).payload], context)

    def batch_request(self, payloads: Sequence[Any], context: DeliveryContext) -> HttpRequest:
        batch = [event for shaped in payloads for event in shaped]
        body = compact_json(batch_envelope(self.config["api_key"], batch, context.now))
        return HttpRequest(
            "POST", self._url(BATCH_PATH), {"Content-Type": "application/json"}, body
        )

    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        """Ask for the key's feature flags: the one public call that checks the key."""
        body = compact_json(
            {"api_key": self.config["api_key"], "distinct_id": CONNECTION_TEST_DISTINCT_ID}
        )
        result = self.transport.send(
            HttpRequest("POST", self._url(FLAGS_PATH), {"Content-Type": "application/json"}, body)
        )
        return check_from_transport(result, rejected_message="PostHog rejected the project API key")

    def _url(self, path: str) -> str:
        return join_url(self.config.get("endpoint") or DEFAULT_ENDPOINT, path)


def _shared_properties(trace: Trace) -> dict[str, Any]:
    """What every event of the request carries: trace, session, names, metadata."""
    values: dict[str, Any] = {
        "$ai_trace_id": trace.grouping_id,
        "$lib": LIBRARY,
        "$lib_version": LIBRARY_VERSION,
        # The gateway's address is not the user's: no GeoIP, as the SDK does server-side.
        "$geoip_disable": True,
    }
    if trace.session_id:
        values["$ai_session_id"] = trace.session_id
    if trace.metadata.trace_name:
        values["trace_name"] = trace.metadata.trace_name
    if not trace.end_user:
        values["$process_person_profile"] = False
    for key, value in trace.metadata.extra.items():
        values[f"metadata_{key}"] = metadata_value(value)
    return values


def _messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    return [dict(message) for message in messages]


def _http_status(trace: Trace) -> int | None:
    code = trace.error.code if trace.error else None
    if code and code.isdigit() and 100 <= int(code) <= 599:
        return int(code)
    return None


def _seconds(trace: Trace) -> float:
    return trace.duration_ms / 1000.0


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
