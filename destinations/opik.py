"""Comet Opik: one Opik trace per request and its spans, through the REST batch API.

| trace | Opik (`TraceWrite` / `SpanWrite` of `opik.rest_api.types`) |
| --- | --- |
| every request | one trace (`id` UUIDv7, see below), `project_name` from the config |
| `trace_name` (default: the model) | trace `name` |
| `trace_id` (else the request id) | `metadata.openrouter_trace_id` of the trace and its spans |
|  | (never the id: requests sharing a `trace_id` stay distinct traces) |
| `span_name` (only when given) | a `general` span, parent of the LLM span |
| `generation_name` (default: the model) | the `llm` span's `name` |
| `parent_span_id` (any form) | `metadata.openrouter_parent_span_id` (an Opik span id is ours) |
| request id | `metadata.openrouter_observation_id` of the LLM span |
| `user` / `session_id` | `metadata.user_id` / `thread_id` (Opik's conversation threads) |
| `tags` (a list of strings) | trace `tags` |
| other `trace` keys | `metadata` of the trace and of every span |
| model / provider (lower-cased) | LLM span `model` / `provider` |
| messages | LLM span `input.messages` / `output.choices` (OpenAI chat shapes) |
| preview (`previews.py`) | trace `input.input` / `output.output` (full content: the span) |
| usage | LLM span `usage`: `prompt_tokens`, `completion_tokens`, `total_tokens`, and cached / |
|  | reasoning tokens as `original_usage.prompt_tokens_details.cached_tokens`, |
|  | `original_usage.prompt_tokens_details.cache_write_tokens`, |
|  | `original_usage.completion_tokens_details.reasoning_tokens` (Opik's flattening) |
| cost (USD) | LLM span `total_estimated_cost` (Opik shows it instead of pricing the tokens); |
|  | `metadata.cost` `{input, output, total}` |
| sampling parameters | LLM span `metadata.model_parameters` |
| finish reasons | LLM span `metadata.finish_reasons` |
| time to first token | LLM span and trace `ttft` (milliseconds) |
| failed request | `error_info` `{exception_type: code, message}` on the trace and the LLM span |

Ids: Opik requires UUIDv7. Each id's 48-bit time is the request's start (ms) and its
other bits come from (request id, destination id, role) (`ids.derived_uuid7`): time
ordered, and the same on every retry or replay, so a re-sent trace or span names the same
Opik entity.

Wire: `POST {base_url}/v1/private/traces/batch` `{"traces": [...]}`, then
`POST {base_url}/v1/private/spans/batch` `{"spans": [...]}` (each 204), with
`Authorization: <api_key>` (no `Bearer`, as the SDK sends it) and `Comet-Workspace:
<workspace>`. A batch is one request of each, at most 1,000 items and 5 MB each (the
SDK's batcher limits). The spans go only once the traces were taken; a failure of either
is the whole batch's outcome (a retry re-sends both, with the same ids).

Test Connection: `POST {base_url}/v1/private/auth` `{}` (the SDK's `check.access`):
401/403 reject the key or the workspace.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NotRequired, TypedDict

from marshmallow import fields, validate

from destinations.base import (
    BatchLimits,
    ConfigSchema,
    ConnectionCheck,
    DeliveryContext,
    DeliveryResult,
    EncodedItem,
    HttpDestination,
    ItemRefused,
    PayloadTooLarge,
    check_from_transport,
    not_attempted,
    pack,
)
from destinations.budget import fit_to_budget
from destinations.chat_format import chat_messages
from destinations.config_fields import custom_headers_field, secret_field, url_field
from destinations.ids import derived_uuid7
from destinations.json_body import compact_json
from destinations.outcomes import Outcome
from destinations.previews import input_preview, output_preview
from destinations.registry import register
from destinations.trace import Trace
from destinations.transport import HttpRequest, join_url

DEFAULT_BASE_URL = "https://www.comet.com/opik/api"
TRACES_PATH = "/v1/private/traces/batch"
SPANS_PATH = "/v1/private/spans/batch"
AUTH_PATH = "/v1/private/auth"
# The SDK's batchers: at most 1,000 items and 5 MB (opik.config.MAX_BATCH_SIZE_MB).
MAX_BATCH_ITEMS = 1000
MAX_BATCH_BYTES = 5 * 1024 * 1024
ENVELOPE_BYTES = 1024
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "authorization", "comet-workspace", "x-test-connection"}
)


class OpikConfig(ConfigSchema):
    api_key = secret_field(max_length=512)
    workspace = fields.String(required=True, validate=validate.Length(min=1, max=256))
    project_name = fields.String(required=True, validate=validate.Length(min=1, max=256))
    base_url = url_field(load_default=DEFAULT_BASE_URL)
    headers = custom_headers_field(RESERVED_HEADERS)


class ErrorInfo(TypedDict):
    exception_type: str
    message: str
    traceback: str


class TraceWrite(TypedDict):
    id: str
    project_name: str
    name: str
    start_time: str
    end_time: str
    metadata: dict[str, Any]
    input: NotRequired[dict[str, Any]]
    output: NotRequired[dict[str, Any]]
    tags: NotRequired[list[str]]
    thread_id: NotRequired[str]
    error_info: NotRequired[ErrorInfo]
    ttft: NotRequired[float]


class SpanWrite(TypedDict):
    id: str
    project_name: str
    trace_id: str
    name: str
    type: str
    start_time: str
    end_time: str
    metadata: dict[str, Any]
    parent_span_id: NotRequired[str]
    input: NotRequired[dict[str, Any]]
    output: NotRequired[dict[str, Any]]
    model: NotRequired[str]
    provider: NotRequired[str]
    usage: NotRequired[dict[str, int]]
    total_estimated_cost: NotRequired[float]
    error_info: NotRequired[ErrorInfo]
    ttft: NotRequired[float]


class OpikItems(TypedDict):
    """One request's share of a batch: its trace and its spans."""

    traces: list[TraceWrite]
    spans: list[SpanWrite]


def opik_id(trace: Trace, destination_id: str, role: str) -> str:
    """A UUIDv7 from the request's start and (request id, destination id, role)."""
    return derived_uuid7(trace.started_at, trace.request_id, destination_id, "opik", role)


def opik_items(trace: Trace, destination_id: str, project_name: str) -> OpikItems:
    """Pure: the trace and spans of one request (see the module table)."""
    meta = trace.metadata
    trace_id = opik_id(trace, destination_id, "trace")
    start, end = _iso(trace.started_at), _iso(trace.finished_at)
    tags, shared = _split_tags(trace)
    shared["openrouter_trace_id"] = trace.grouping_id
    error = _error_info(trace)
    top = TraceWrite(
        id=trace_id,
        project_name=project_name,
        name=trace.trace_name,
        start_time=start,
        end_time=end,
        metadata={**shared, **({"user_id": trace.end_user} if trace.end_user else {})},
    )
    question, answer = input_preview(trace), output_preview(trace)
    if question is not None:
        top["input"] = {"input": question}
    if answer is not None:
        top["output"] = {"output": answer}
    if tags:
        top["tags"] = tags
    if trace.session_id:
        top["thread_id"] = trace.session_id
    if meta.parent_span_id:
        top["metadata"]["openrouter_parent_span_id"] = meta.parent_span_id
    if error:
        top["error_info"] = error
    ttft = _ttft(trace)
    if ttft is not None:
        top["ttft"] = ttft

    spans: list[SpanWrite] = []
    parent: str | None = None
    if meta.span_name:
        parent = opik_id(trace, destination_id, "span")
        spans.append(
            SpanWrite(
                id=parent,
                project_name=project_name,
                trace_id=trace_id,
                name=meta.span_name,
                type="general",
                start_time=start,
                end_time=end,
                metadata=dict(shared),
            )
        )
    llm = SpanWrite(
        id=opik_id(trace, destination_id, "llm"),
        project_name=project_name,
        trace_id=trace_id,
        name=trace.generation_name,
        type="llm",
        start_time=start,
        end_time=end,
        metadata={**shared, **_llm_metadata(trace)},
        model=trace.model,
        provider=trace.provider.strip().lower(),
        usage=opik_usage(trace),
    )
    if parent:
        llm["parent_span_id"] = parent
    if trace.input_messages:
        llm["input"] = {"messages": [dict(m) for m in chat_messages(trace.input_messages)]}
        if trace.tools:
            llm["input"]["tools"] = list(trace.tools)
    if trace.output_messages:
        llm["output"] = {
            "choices": [
                {"index": index, "message": dict(message), "finish_reason": _reason(trace, index)}
                for index, message in enumerate(chat_messages(trace.output_messages))
            ]
        }
    if trace.cost.total is not None:
        llm["total_estimated_cost"] = trace.cost.total
    if error:
        llm["error_info"] = error
    if ttft is not None:
        llm["ttft"] = ttft
    spans.append(llm)
    return OpikItems(traces=[top], spans=spans)


def opik_usage(trace: Trace) -> dict[str, int]:
    """Opik's usage map: OpenAI's three counts, and the details flattened under
    `original_usage.` as the SDK flattens an OpenAI usage object."""
    usage = trace.usage
    values = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "original_usage.prompt_tokens": usage.input_tokens,
        "original_usage.completion_tokens": usage.output_tokens,
        "original_usage.total_tokens": usage.total_tokens,
    }
    details = {
        "original_usage.prompt_tokens_details.cached_tokens": usage.cached_input_tokens,
        "original_usage.prompt_tokens_details.cache_write_tokens": usage.cache_write_input_tokens,
        "original_usage.completion_tokens_details.reasoning_tokens": usage.reasoning_tokens,
    }
    values.update({key: value for key, value in details.items() if value is not None})
    return {key: int(value) for key, value in values.items()}


@register
class OpikDestination(HttpDestination):
    slug = "opik"
    display_name = "Comet Opik"
    config_schema = OpikConfig
    # Each request contributes one trace and up to two spans.
    batch_limits = BatchLimits(
        max_items=MAX_BATCH_ITEMS // 2, max_bytes=MAX_BATCH_BYTES - ENVELOPE_BYTES
    )

    def encode_item(self, trace: Trace, context: DeliveryContext) -> EncodedItem:
        """This request's trace and spans, content truncated to fit one request."""
        shaped: list[OpikItems] = []

        def encode(candidate: Trace) -> bytes:
            shaped[:] = [opik_items(candidate, context.destination_id, self.config["project_name"])]
            return compact_json(shaped[0])

        body = fit_to_budget(trace, encode, MAX_BATCH_BYTES - ENVELOPE_BYTES)
        return EncodedItem(shaped[0], len(body))

    def build_request(self, trace: Trace, context: DeliveryContext) -> HttpRequest:
        """The traces request of a batch of one (the spans request follows it)."""
        return self.batch_requests([self.encode_item(trace, context).payload])[0]

    def batch_requests(self, payloads: Sequence[OpikItems]) -> tuple[HttpRequest, HttpRequest]:
        """Pure: the traces request and the spans request for these requests' items."""
        traces = [item for payload in payloads for item in payload["traces"]]
        spans = [item for payload in payloads for item in payload["spans"]]
        return (
            self._post(TRACES_PATH, compact_json({"traces": traces})),
            self._post(SPANS_PATH, compact_json({"spans": spans})),
        )

    def deliver_batch(
        self, traces: Sequence[Trace], context: DeliveryContext
    ) -> list[DeliveryResult]:
        """Per group within the limits: the traces, then (if taken) the spans."""
        results: dict[int, DeliveryResult] = {}
        items: list[tuple[int, EncodedItem]] = []
        for index, trace in enumerate(traces):
            try:
                items.append((index, self.encode_item(trace, context)))
            except PayloadTooLarge as exc:
                results[index] = DeliveryResult(
                    Outcome.PERMANENT, None, 0.0, error=f"payload too large: {exc}"
                )
            except ItemRefused as exc:
                results[index] = DeliveryResult(Outcome.PERMANENT, None, 0.0, error=str(exc))
        stopped: DeliveryResult | None = None
        for group in pack(items, self.batch_limits):
            indexes = [index for index, _ in group]
            if stopped is not None:
                results.update((index, not_attempted(stopped)) for index in indexes)
                continue
            traces_request, spans_request = self.batch_requests([i.payload for _, i in group])
            answer = self.interpret(self.transport.send(traces_request))
            if answer.outcome is Outcome.DELIVERED:
                answer = self.interpret(self.transport.send(spans_request))
            results.update((index, answer) for index in indexes)
            if answer.concerns_destination:
                stopped = answer
        return [results[index] for index in range(len(traces))]

    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        """`POST /v1/private/auth` with the key and workspace, as the SDK checks access."""
        result = self.transport.send(self._post(AUTH_PATH, b"{}"))
        return check_from_transport(
            result, rejected_message="Opik rejected the API key or the workspace"
        )

    def _post(self, path: str, body: bytes) -> HttpRequest:
        headers = {
            "Authorization": self.config["api_key"],
            "Comet-Workspace": self.config["workspace"],
            "Content-Type": "application/json",
        }
        base = self.config.get("base_url") or DEFAULT_BASE_URL
        return HttpRequest("POST", join_url(base, path), headers, body)


def _llm_metadata(trace: Trace) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "openrouter_observation_id": trace.request_id,
        "model_parameters": dict(trace.model_parameters),
        "streamed": trace.streamed,
    }
    cost = {"input": trace.cost.input, "output": trace.cost.output, "total": trace.cost.total}
    if any(value is not None for value in cost.values()):
        metadata["cost"] = {key: value for key, value in cost.items() if value is not None}
    if trace.finish_reasons:
        metadata["finish_reasons"] = list(trace.finish_reasons)
    if trace.content_redacted:
        metadata["privacy_mode"] = True
    return metadata


def _split_tags(trace: Trace) -> tuple[list[str], dict[str, Any]]:
    extra = dict(trace.metadata.extra)
    tags = extra.get("tags")
    if isinstance(tags, list) and tags and all(isinstance(tag, str) for tag in tags):
        del extra["tags"]
        return list(tags), extra
    return [], extra


def _error_info(trace: Trace) -> ErrorInfo | None:
    if not trace.is_error:
        return None
    code = trace.error.code if trace.error and trace.error.code else "error"
    message = trace.error.message if trace.error else "request failed"
    return ErrorInfo(exception_type=code, message=message, traceback="")


def _ttft(trace: Trace) -> float | None:
    if trace.streamed and trace.time_to_first_token_ms is not None:
        return float(trace.time_to_first_token_ms)
    return None


def _reason(trace: Trace, index: int) -> str:
    reasons = trace.finish_reasons
    if index < len(reasons):
        return reasons[index]
    return reasons[0] if reasons else "stop"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
