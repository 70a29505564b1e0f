"""Langfuse: one ingestion batch per request (`POST {base_url}/api/public/ingestion`).

| trace | Langfuse |
| --- | --- |
| `trace_id` (else derived from the request) | trace `id`: requests sharing it share a trace |
| `trace_name` (default: the model) | trace `name` |
| `span_name` | a `span-create` between the trace and the generation |
| `generation_name` (default: the model) | the `generation-create`'s `name` |
| `parent_span_id` | `parentObservationId` of the top observation we create |
| `user` / `session_id` | trace `userId` / `sessionId` |
| `environment`, `release`, `version` | first-class fields (when Langfuse accepts the value) |
| other `trace` keys | trace `metadata` |
| model, parameters (and a string `tool_choice`) | generation `model`, `modelParameters` |
| provider, finish reasons, tools, error code | generation `metadata` |
| messages | generation `input` (chat messages), `output` (the assistant message, or a list) |
| usage | `usageDetails`, see `usage_details` |
| cost (USD) | `costDetails` `input`, `output`, `total` |
| time to first token | `completionStartTime` |
| failed request | `level: ERROR` on the span and the generation; generation `statusMessage` |

Every id (envelope ids, trace id when derived, observation ids) comes from
(request id, destination id), so a retried batch is de-duplicated by Langfuse. Trace
`input`/`output` are set only when the trace is this request's alone, so requests sharing a
`trace_id` do not overwrite each other's. A 207 is read per event.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NotRequired, TypedDict

from marshmallow import fields, validate

from destinations.base import (
    ConfigSchema,
    ConnectionCheck,
    DeliveryContext,
    DeliveryResult,
    HttpDestination,
    check_from_transport,
    describe_response,
    result_from_transport,
)
from destinations.budget import fitted_json_post
from destinations.chat_format import ChatMessage, chat_message, chat_messages
from destinations.config_fields import secret_field, url_field
from destinations.ids import derived_hex, derived_uuid
from destinations.outcomes import Outcome, classify_status
from destinations.registry import register
from destinations.trace import Trace
from destinations.transport import HttpRequest, TransportResult, join_url

DEFAULT_BASE_URL = "https://us.cloud.langfuse.com"
INGESTION_PATH = "/api/public/ingestion"
PROJECTS_PATH = "/api/public/projects"
# Langfuse's documented batch limit ("Batch sizes are limited to 3.5 MB in total").
MAX_BATCH_BYTES = 3_500_000
# Langfuse refuses environments that do not match this (they go to metadata instead).
ENVIRONMENT_PATTERN = re.compile(r"^(?!langfuse)[a-z0-9_-]{1,40}$")
PROMOTED_KEYS = ("environment", "release", "version")
# A 207 names every refused event with Langfuse's validation message; keep enough to read it.
MULTI_STATUS_LIMIT = 64 * 1024
REJECTION_MESSAGE_CHARS = 200
KEYS_REJECTED = "keys rejected by Langfuse: check the public key, the secret key and the base URL"


class LangfuseConfig(ConfigSchema):
    public_key = fields.String(required=True, validate=validate.Length(min=1, max=256))
    secret_key = secret_field(max_length=256)
    base_url = url_field(load_default=DEFAULT_BASE_URL)


class TraceBody(TypedDict):
    id: str
    timestamp: str
    name: str
    metadata: dict[str, Any]
    userId: NotRequired[str]
    sessionId: NotRequired[str]
    environment: NotRequired[str]
    release: NotRequired[str]
    version: NotRequired[str]
    input: NotRequired[list[ChatMessage]]
    output: NotRequired[ChatMessage | list[ChatMessage]]


class SpanBody(TypedDict):
    id: str
    traceId: str
    name: str
    startTime: str
    endTime: str
    parentObservationId: NotRequired[str]
    environment: NotRequired[str]
    version: NotRequired[str]
    level: NotRequired[str]
    statusMessage: NotRequired[str]


class GenerationBody(SpanBody):
    model: str
    modelParameters: dict[str, Any]
    usageDetails: dict[str, int]
    costDetails: NotRequired[dict[str, float]]
    completionStartTime: NotRequired[str]
    input: NotRequired[list[ChatMessage]]
    output: NotRequired[ChatMessage | list[ChatMessage]]
    metadata: dict[str, Any]


class IngestionEvent(TypedDict):
    id: str
    type: str
    timestamp: str
    body: TraceBody | SpanBody | GenerationBody


class IngestionBatch(TypedDict):
    batch: list[IngestionEvent]


def trace_id_for(trace: Trace, destination_id: str) -> str:
    """The caller's `trace_id` as given, else 32 hex characters derived from the request."""
    return trace.metadata.trace_id or derived_hex(
        trace.request_id, destination_id, "trace", nbytes=16
    )


def observation_id(trace: Trace, destination_id: str, role: str) -> str:
    """16 hex characters, like the OpenTelemetry span ids Langfuse's own SDKs use."""
    return derived_hex(trace.request_id, destination_id, role, nbytes=8)


def ingestion_batch(trace: Trace, destination_id: str) -> IngestionBatch:
    """Pure: the batch for one request: trace-create, span-create (when named), generation."""
    meta = trace.metadata
    trace_id = trace_id_for(trace, destination_id)
    start, end = _iso(trace.started_at), _iso(trace.finished_at)
    promoted, metadata = _promoted_fields(meta.extra)

    trace_body = TraceBody(id=trace_id, timestamp=start, name=trace.trace_name, metadata=metadata)
    if trace.end_user:
        trace_body["userId"] = trace.end_user
    if trace.session_id:
        trace_body["sessionId"] = trace.session_id
    trace_body.update(promoted)  # type: ignore[typeddict-item]
    if meta.trace_id is None:
        _set_io(trace_body, trace)

    observation_fields: dict[str, str] = {
        key: promoted[key] for key in ("environment", "version") if key in promoted
    }
    events = [_event(trace, destination_id, "trace-create", end, trace_body)]
    parent = meta.parent_span_id
    if meta.span_name:
        span = SpanBody(
            id=observation_id(trace, destination_id, "span"),
            traceId=trace_id,
            name=meta.span_name,
            startTime=start,
            endTime=end,
            **observation_fields,  # type: ignore[typeddict-item]
        )
        if parent:
            span["parentObservationId"] = parent
        if trace.is_error:
            span["level"] = "ERROR"
        events.append(_event(trace, destination_id, "span-create", end, span))
        parent = span["id"]

    generation = GenerationBody(
        id=observation_id(trace, destination_id, "generation"),
        traceId=trace_id,
        name=trace.generation_name,
        startTime=start,
        endTime=end,
        model=trace.model,
        modelParameters=_model_parameters(trace),
        usageDetails=usage_details(trace),
        metadata=_generation_metadata(trace),
        **observation_fields,  # type: ignore[typeddict-item]
    )
    if parent:
        generation["parentObservationId"] = parent
    if trace.time_to_first_token_ms is not None:
        generation["completionStartTime"] = _iso(
            trace.started_at + timedelta(milliseconds=trace.time_to_first_token_ms)
        )
    costs = cost_details(trace)
    if costs:
        generation["costDetails"] = costs
    _set_io(generation, trace)
    if trace.is_error:
        generation["level"] = "ERROR"
        if trace.error:
            generation["statusMessage"] = trace.error.message
    events.append(_event(trace, destination_id, "generation-create", end, generation))
    return IngestionBatch(batch=events)


def usage_details(trace: Trace) -> dict[str, int]:
    """Langfuse's usage buckets: `input`/`output` exclude the cached/reasoning details.

    That is how Langfuse itself splits an OpenAI usage object, so its price table applies
    each detail once; `total` is sent explicitly so it is not re-summed.
    """
    usage = trace.usage
    cached = usage.cached_input_tokens or 0
    written = usage.cache_write_input_tokens or 0
    reasoning = usage.reasoning_tokens or 0
    details = {
        "input": max(usage.input_tokens - cached - written, 0),
        "output": max(usage.output_tokens - reasoning, 0),
        "total": usage.total_tokens,
    }
    if usage.cached_input_tokens is not None:
        details["input_cached_tokens"] = cached
    if usage.cache_write_input_tokens is not None:
        details["input_cache_creation"] = written
    if usage.reasoning_tokens is not None:
        details["output_reasoning_tokens"] = reasoning
    return details


def cost_details(trace: Trace) -> dict[str, float]:
    """Langfuse's cost buckets (USD), only those the trace knows; empty when none."""
    cost = trace.cost
    pairs = (("input", cost.input), ("output", cost.output), ("total", cost.total))
    return {key: value for key, value in pairs if value is not None}


def read_multi_status(body: bytes) -> tuple[int, list[tuple[str, int, str]]] | None:
    """(number of successes, [(event id, status, message)]) from a 207 body; None if unreadable."""
    try:
        parsed = json.loads(body)
        successes = parsed["successes"]
        errors = [
            (str(item["id"]), int(item["status"]), _message_of(item)) for item in parsed["errors"]
        ]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(successes, list):
        return None
    return len(successes), errors


@register
class LangfuseDestination(HttpDestination):
    slug = "langfuse"
    display_name = "Langfuse"
    config_schema = LangfuseConfig

    def build_request(self, trace: Trace, context: DeliveryContext) -> HttpRequest:
        return fitted_json_post(
            self._url(INGESTION_PATH),
            self._auth_headers(),
            trace,
            lambda t: ingestion_batch(t, context.destination_id),
            MAX_BATCH_BYTES,
            response_limit=MULTI_STATUS_LIMIT,
        )

    def interpret(self, result: TransportResult) -> DeliveryResult:
        """A 207 is read per event: 4xx items are recorded and dropped, others retried."""
        if result.status_code != 207:
            return result_from_transport(result)
        status = read_multi_status(result.body)
        if status is None:
            # Langfuse answered, and every id we send is deterministic: a blind retry is
            # de-duplicated, whereas assuming success could lose the trace silently.
            return result_from_transport(
                result, Outcome.RETRYABLE, "unreadable 207 body: " + describe_response(result)
            )
        successes, errors = status
        rejected = tuple(f"{event_id}: HTTP {code} {message}" for event_id, code, message in errors)
        outcomes = {classify_status(code) for _, code, _ in errors}
        for outcome in (Outcome.RETRYABLE, Outcome.AUTH_FAILED):
            if outcome in outcomes:
                return self._partial(result, outcome, rejected)
        if errors and not successes:
            return self._partial(result, Outcome.PERMANENT, rejected)
        return self._partial(result, Outcome.DELIVERED, rejected)

    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        """List the keys' projects: proves the keys and that they belong to a project."""
        result = self.transport.send(
            HttpRequest("GET", self._url(PROJECTS_PATH), self._auth_headers())
        )
        check = check_from_transport(result, rejected_message=KEYS_REJECTED)
        if check.ok and not _lists_a_project(result.body):
            # Langfuse's own SDK treats keys that see no project as not working.
            return ConnectionCheck(
                Outcome.PERMANENT,
                "keys accepted but they belong to no Langfuse project",
                result.status_code,
            )
        return check

    def _url(self, path: str) -> str:
        return join_url(self.config.get("base_url", DEFAULT_BASE_URL), path)

    def _auth_headers(self) -> dict[str, str]:
        token = f"{self.config['public_key']}:{self.config['secret_key']}".encode()
        return {"Authorization": "Basic " + base64.b64encode(token).decode("ascii")}

    @staticmethod
    def _partial(
        result: TransportResult, outcome: Outcome, rejected: tuple[str, ...]
    ) -> DeliveryResult:
        # The refused items are the error; with none named, the response describes it.
        error = "; ".join(rejected) if outcome is not Outcome.DELIVERED else None
        delivery = result_from_transport(result, outcome, error or None)
        return dataclasses.replace(delivery, rejected=rejected)


def _message_of(item: Mapping[str, Any]) -> str:
    message = item.get("message") or json.dumps(item.get("error"), separators=(",", ":"))
    return str(message)[:REJECTION_MESSAGE_CHARS]


def _lists_a_project(body: bytes) -> bool:
    try:
        data = json.loads(body).get("data")
    except (ValueError, AttributeError):
        return False
    return isinstance(data, list) and bool(data)


def _event(
    trace: Trace, destination_id: str, kind: str, timestamp: str, body: Any
) -> IngestionEvent:
    # The envelope id is Langfuse's de-duplication key: one per (request, destination, kind).
    return IngestionEvent(
        id=derived_uuid(trace.request_id, destination_id, kind),
        type=kind,
        timestamp=timestamp,
        body=body,
    )


def _set_io(body: TraceBody | GenerationBody, trace: Trace) -> None:
    if trace.input_messages:
        body["input"] = chat_messages(trace.input_messages)
    if len(trace.output_messages) == 1:
        body["output"] = chat_message(trace.output_messages[0])
    elif trace.output_messages:
        body["output"] = chat_messages(trace.output_messages)


def _promoted_fields(extra: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """Split `environment`/`release`/`version` that Langfuse accepts from the metadata."""
    promoted: dict[str, str] = {}
    metadata = dict(extra)
    for key in PROMOTED_KEYS:
        value = extra.get(key)
        if not isinstance(value, str) or not value:
            continue
        if key == "environment" and not ENVIRONMENT_PATTERN.match(value):
            continue
        promoted[key] = value
        del metadata[key]
    return promoted, metadata


def _model_parameters(trace: Trace) -> dict[str, Any]:
    parameters = dict(trace.model_parameters)
    if isinstance(trace.tool_choice, str):
        parameters["tool_choice"] = trace.tool_choice
    return parameters


def _generation_metadata(trace: Trace) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "provider": trace.provider,
        "request_id": trace.request_id,
        "streamed": trace.streamed,
        "tools_offered": trace.tools_offered,
        "tool_calls_made": trace.tool_calls_made,
    }
    if trace.finish_reasons:
        metadata["finish_reasons"] = list(trace.finish_reasons)
    # Tool definitions are part of the prompt: they go wherever the messages go.
    if trace.tools and trace.input_messages:
        metadata["tools"] = list(trace.tools)
    if trace.error and trace.error.code is not None:
        metadata["error_code"] = trace.error.code
    if trace.content_redacted:
        metadata["privacy_mode"] = True
    return metadata


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
