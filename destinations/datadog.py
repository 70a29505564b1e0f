"""Datadog LLM Observability: spans to `POST {url}/api/intake/llm-obs/v1/trace/spans`.

| trace | Datadog |
| --- | --- |
| `trace_id` (else derived from the request) | every span's `trace_id` |
| `trace_name` (default: the model) | this request's top span `name` (kind `workflow`) |
| `span_name` | an intermediate `workflow` span |
| `generation_name` (default: the model) | the `llm` span's `name` |
| `parent_span_id` (16 hex, any case) | our top span's parent, as a decimal id (the top stays) |
| `parent_span_id` (other forms) | unusable as a Datadog id: `meta.metadata.parent_span_id` |
| `user` | tag `user_id:{user}` (with `service:{ml_app}` on every span) |
| `session_id` | `session_id` |
| other `trace` keys, model parameters | `llm` span `meta.metadata` (non-scalars as JSON) |
| model, provider | `meta.model_name`, `meta.model_provider` (lower-cased) |
| messages, tool calls, tool results | `meta.input.messages`, `meta.output.messages` |
| `tools` (with input messages) | `meta.tool_definitions` |
| usage | `metrics`: `input_tokens`, `output_tokens`, `total_tokens`, cache and reasoning |
| time to first token | `metrics.time_to_first_token` (seconds) |
| cost (USD) | `metrics` `input_cost`, `output_cost`, `total_cost` |
| failed request | `status: error`, `meta.error` (`message`, `type`) on every span |

Span ids are derived from (request id, destination id). Each request sends its own top
span with its own times, so requests sharing a `trace_id` never re-send or overwrite each
other's; the top span's `input`/`output` is a bounded preview (`previews.py`: last user
turn, first completion), the messages go once, on the `llm` span. Datadog refuses spans
older than 24 hours: such a delivery is permanent without being sent. 202 = delivered;
a 429 waits for `Retry-After`, else `X-RateLimit-Reset`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NotRequired, TypedDict

from marshmallow import ValidationError, fields

from destinations.base import (
    BatchLimits,
    ConfigSchema,
    ConnectionCheck,
    DeliveryContext,
    DeliveryResult,
    EncodedItem,
    HttpDestination,
    ItemRefused,
    check_from_transport,
    result_from_transport,
)
from destinations.budget import fitted_json
from destinations.config_fields import secret_field, url_field
from destinations.ids import derived_hex, otlp_span_id
from destinations.json_body import compact_json
from destinations.outcomes import parse_retry_after
from destinations.previews import input_preview, output_preview
from destinations.registry import register
from destinations.trace import Message, Trace
from destinations.transport import HttpRequest, TransportResult, join_url

DEFAULT_URL = "https://api.us5.datadoghq.com"
SPANS_PATH = "/api/intake/llm-obs/v1/trace/spans"
VALIDATE_PATH = "/api/v1/validate"
# Datadog's SDK caps a payload at 5 MiB ("actual limit is 5.1MB"); stay under it.
MAX_PAYLOAD_BYTES = 5_000_000
MAX_SPAN_AGE = timedelta(hours=24)
ML_APP_MAX_CHARS = 193
ML_APP_PUNCTUATION = frozenset("_-:./")
ROOT_PARENT = "undefined"
PARENT_NOT_USED = "parent_span_id is not a 16-hex span id: kept in metadata, not as the parent"
KEY_REJECTED = "Datadog key rejected: check the API key and that the URL is your Datadog site"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def validate_ml_app(value: str) -> None:
    """Datadog's application naming rules (HTTP API reference, "Application naming")."""
    if not value:
        raise ValidationError("Must not be empty.")
    if len(value) > ML_APP_MAX_CHARS:
        raise ValidationError(f"Must be at most {ML_APP_MAX_CHARS} characters.")
    if value != value.lower():
        raise ValidationError("Must be lowercase.")
    if any(not (c.isalnum() or c in ML_APP_PUNCTUATION) for c in value):
        raise ValidationError("May contain only letters, digits and _ - : . /")
    if "__" in value or value.endswith("_"):
        raise ValidationError("Must not contain contiguous or trailing underscores.")


class DatadogConfig(ConfigSchema):
    api_key = secret_field(max_length=256)
    ml_app = fields.String(required=True, validate=validate_ml_app)
    url = url_field(load_default=DEFAULT_URL)


class ToolCall(TypedDict):
    name: str
    arguments: dict[str, Any]
    tool_id: str
    type: str


class ToolResult(TypedDict):
    name: str
    result: str
    tool_id: str
    type: str


class SpanMessage(TypedDict):
    role: str
    content: str
    tool_calls: NotRequired[list[ToolCall]]
    tool_results: NotRequired[list[ToolResult]]


class SpanIO(TypedDict, total=False):
    value: str
    messages: list[SpanMessage]


class SpanError(TypedDict):
    message: str
    type: str


class SpanMeta(TypedDict):
    kind: str
    model_name: NotRequired[str]
    model_provider: NotRequired[str]
    input: NotRequired[SpanIO]
    output: NotRequired[SpanIO]
    metadata: NotRequired[dict[str, str | int | float | bool]]
    tool_definitions: NotRequired[list[dict[str, Any]]]
    error: NotRequired[SpanError]


class Span(TypedDict):
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    duration: int
    status: str
    meta: SpanMeta
    metrics: NotRequired[dict[str, int | float]]


class SpansPayload(TypedDict):
    ml_app: str
    tags: list[str]
    spans: list[Span]
    session_id: NotRequired[str]


class SpansRequestData(TypedDict):
    type: str
    attributes: SpansPayload


class SpansRequest(TypedDict):
    data: SpansRequestData


def span_id(*parts: str) -> str:
    """A 64-bit span id written as Datadog's SDKs write them: a decimal string."""
    return str(int(derived_hex(*parts, nbytes=8), 16))


def spans_request(trace: Trace, destination_id: str, ml_app: str) -> SpansRequest:
    """Pure: the intake body for one request (root, optional workflow span, llm span)."""
    meta = trace.metadata
    trace_id = meta.trace_id or derived_hex(trace.request_id, destination_id, "trace", nbytes=16)
    start_ns = _ns(trace.started_at)
    duration = _ns(trace.finished_at) - start_ns
    status = "error" if trace.is_error else "ok"
    error = _error(trace)

    def span(name: str, id_: str, parent: str, span_meta: SpanMeta) -> Span:
        if error:
            span_meta["error"] = error
        return Span(
            name=name,
            trace_id=trace_id,
            span_id=id_,
            parent_id=parent,
            start_ns=start_ns,
            duration=duration,
            status=status,
            meta=span_meta,
        )

    spans: list[Span] = []
    # The caller's own span (16 hex, a 64-bit id) as Datadog writes span ids; anything
    # else cannot name a Datadog span, and a parent that is no span would hide the trace.
    caller = otlp_span_id(meta.parent_span_id)
    parent = span_id(trace.request_id, destination_id, "root")
    root_meta = SpanMeta(kind="workflow")
    root_meta.update(_text_io(trace))  # type: ignore[typeddict-item]
    top_parent = str(int(caller, 16)) if caller else ROOT_PARENT
    spans.append(span(trace.trace_name, parent, top_parent, root_meta))
    if meta.span_name:
        workflow = span_id(trace.request_id, destination_id, "span")
        spans.append(span(meta.span_name, workflow, parent, SpanMeta(kind="workflow")))
        parent = workflow

    llm_meta = SpanMeta(
        kind="llm",
        model_name=trace.model,
        model_provider=trace.provider.lower(),
        metadata=_metadata(trace),
    )
    if trace.input_messages:
        llm_meta["input"] = SpanIO(messages=[_message(m) for m in trace.input_messages])
        if trace.tools:
            llm_meta["tool_definitions"] = [_tool_definition(tool) for tool in trace.tools]
    if trace.output_messages:
        llm_meta["output"] = SpanIO(messages=[_message(m) for m in trace.output_messages])
    llm = span(
        trace.generation_name, span_id(trace.request_id, destination_id, "llm"), parent, llm_meta
    )
    llm["metrics"] = metrics(trace)
    spans.append(llm)

    payload = SpansPayload(ml_app=ml_app, tags=_tags(trace, ml_app), spans=spans)
    if trace.session_id:
        payload["session_id"] = trace.session_id
    return SpansRequest(data=SpansRequestData(type="span", attributes=payload))


def metrics(trace: Trace) -> dict[str, int | float]:
    """The llm span's token, cost and time-to-first-token metrics; unknown ones left out."""
    usage, cost = trace.usage, trace.cost
    values: dict[str, int | float | None] = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "cache_write_input_tokens": usage.cache_write_input_tokens,
        "reasoning_output_tokens": usage.reasoning_tokens,
        "input_cost": cost.input,
        "output_cost": cost.output,
        "total_cost": cost.total,
    }
    if usage.cached_input_tokens is not None or usage.cache_write_input_tokens is not None:
        # Without this split Datadog prices every input token at the uncached rate.
        values["non_cached_input_tokens"] = max(
            usage.input_tokens
            - (usage.cached_input_tokens or 0)
            - (usage.cache_write_input_tokens or 0),
            0,
        )
    if trace.time_to_first_token_ms is not None:
        values["time_to_first_token"] = trace.time_to_first_token_ms / 1000.0
    return {key: value for key, value in values.items() if value is not None}


def too_old(trace: Trace, now: datetime) -> bool:
    """Whether Datadog's intake would refuse the trace's spans for their age."""
    return now - trace.started_at > MAX_SPAN_AGE


@register
class DatadogDestination(HttpDestination):
    slug = "datadog"
    display_name = "Datadog LLM Observability"
    config_schema = DatadogConfig

    # Many requests' spans per intake call, within Datadog's payload limit.
    batch_limits = BatchLimits(max_items=100, max_bytes=MAX_PAYLOAD_BYTES - 64 * 1024)

    def build_request(self, trace: Trace, context: DeliveryContext) -> HttpRequest:
        item = self.encode_item(trace, context)
        return self.batch_request([item.payload], context)

    def encode_item(self, trace: Trace, context: DeliveryContext) -> EncodedItem:
        """One request's spans, fitted to the byte budget. Spans Datadog would refuse for
        their age are refused here, without a request (permanent for that trace)."""
        if too_old(trace, context.now):
            raise ItemRefused("spans older than 24 h are rejected by Datadog: not sent")
        ml_app = self.config["ml_app"]
        shape, body = fitted_json(
            trace, lambda t: spans_request(t, context.destination_id, ml_app), MAX_PAYLOAD_BYTES
        )
        return EncodedItem(shape, len(body))

    def batch_request(self, payloads: Sequence[Any], context: DeliveryContext) -> HttpRequest:
        """One intake call; with several requests, their session and tags move onto each
        span (the intake reads both per span), so nothing of one request leaks to another."""
        if len(payloads) == 1:
            body: Any = payloads[0]
        else:
            ml_app = self.config["ml_app"]
            spans: list[Span] = []
            for payload in payloads:
                attributes = payload["data"]["attributes"]
                for span in attributes["spans"]:
                    span["tags"] = attributes["tags"]
                    if "session_id" in attributes:
                        span["session_id"] = attributes["session_id"]
                    spans.append(span)
            merged = SpansPayload(ml_app=ml_app, tags=[f"service:{ml_app}"], spans=spans)
            body = SpansRequest(data=SpansRequestData(type="span", attributes=merged))
        return HttpRequest(
            "POST",
            self._url(SPANS_PATH),
            {**self._auth_headers(), "Content-Type": "application/json"},
            compact_json(body),
        )

    def interpret(self, result: TransportResult) -> DeliveryResult:
        """The outcome table, with `X-RateLimit-Reset` standing in for a missing Retry-After."""
        if result.retry_after is None and result.status_code == 429:
            reset = parse_retry_after(result.headers.get("x-ratelimit-reset"))
            result = dataclasses.replace(result, retry_after=reset)
        return result_from_transport(result)

    def interpret_batch(
        self, result: TransportResult, traces: Sequence[Trace]
    ) -> list[DeliveryResult]:
        """The intake's answer for each trace, noting a `parent_span_id` that is no Datadog
        span id (it is kept in the LLM span's metadata instead)."""
        delivery = self.interpret(result)
        return [
            dataclasses.replace(delivery, notes=(PARENT_NOT_USED,))
            if t.metadata.parent_span_id and not otlp_span_id(t.metadata.parent_span_id)
            else delivery
            for t in traces
        ]

    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        result = self.transport.send(
            HttpRequest("GET", self._url(VALIDATE_PATH), self._auth_headers())
        )
        return check_from_transport(result, rejected_message=KEY_REJECTED)

    def _url(self, path: str) -> str:
        return join_url(self.config.get("url", DEFAULT_URL), path)

    def _auth_headers(self) -> dict[str, str]:
        return {"DD-API-KEY": self.config["api_key"]}


def _ns(moment: datetime) -> int:
    # Integer arithmetic: a float timestamp would lose the nanoseconds' low digits.
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _error(trace: Trace) -> SpanError | None:
    if not trace.is_error:
        return None
    message = trace.error.message if trace.error else "request failed"
    code = trace.error.code if trace.error and trace.error.code else None
    return SpanError(message=message, type=f"provider_error_{code}" if code else "provider_error")


def _tags(trace: Trace, ml_app: str) -> list[str]:
    tags = [f"service:{ml_app}"]
    if trace.end_user:
        tags.append(f"user_id:{trace.end_user}")
    return tags


def _metadata(trace: Trace) -> dict[str, str | int | float | bool]:
    """The caller's keys, model parameters and our request facts, as Datadog scalars.

    Ours come last so a caller's key cannot disguise them (e.g. its own `request_id`).
    """
    raw: dict[str, Any] = {
        **trace.metadata.extra,
        **trace.model_parameters,
        "request_id": trace.request_id,
        "streamed": trace.streamed,
        "tools_offered": trace.tools_offered,
        "tool_calls_made": trace.tool_calls_made,
    }
    if isinstance(trace.tool_choice, str):
        raw["tool_choice"] = trace.tool_choice
    if trace.finish_reasons:
        raw["finish_reason"] = ",".join(trace.finish_reasons)
    if trace.content_redacted:
        raw["privacy_mode"] = True
    if trace.metadata.parent_span_id and not otlp_span_id(trace.metadata.parent_span_id):
        raw["parent_span_id"] = trace.metadata.parent_span_id  # kept, though unusable
    return {key: _scalar(value) for key, value in raw.items() if value is not None}


def _scalar(value: Any) -> str | int | float | bool:
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _message(message: Message) -> SpanMessage:
    out = SpanMessage(role=message.role, content=message.content or "")
    if message.tool_calls:
        out["tool_calls"] = [
            ToolCall(
                name=call.name,
                arguments=_arguments(call.arguments),
                tool_id=call.id,
                type="function",
            )
            for call in message.tool_calls
        ]
    if message.role == "tool":
        out["tool_results"] = [
            ToolResult(
                name=message.name or "",
                result=message.content or "",
                tool_id=message.tool_call_id or "",
                type="function",
            )
        ]
    return out


def _arguments(raw: str) -> dict[str, Any]:
    """Datadog wants an object; arguments that are not one (or were truncated) stay text."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {"value": raw}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _tool_definition(tool: dict[str, Any]) -> dict[str, Any]:
    nested = tool.get("function")
    function: dict[str, Any] = nested if isinstance(nested, dict) else tool
    return {
        "name": str(function.get("name", "")),
        "description": str(function.get("description", "")),
        "schema": function.get("parameters") or {},
    }


def _text_io(trace: Trace) -> dict[str, SpanIO]:
    """The top span's input/output text: bounded previews of the turn and the answer."""
    io: dict[str, SpanIO] = {}
    question, answer = input_preview(trace), output_preview(trace)
    if question is not None:
        io["input"] = SpanIO(value=question)
    if answer is not None:
        io["output"] = SpanIO(value=answer)
    return io
