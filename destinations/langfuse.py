"""Langfuse: OTLP spans in the v4 format (default), or the legacy ingestion API.

`ingestion: otel` (default; Langfuse Cloud since its v4 cutover, self-hosted v4):
`POST {base_url}/api/public/otel/v1/traces`, OTLP protobuf (gzip), Basic auth
(public:secret) and `x-langfuse-ingestion-version: 4`; the span attributes and their
mapping are in `langfuse_otel.py`. A v4 server refuses trace, span and generation events
on the legacy endpoint (a 207 with a 400 each), so the legacy mode is for self-hosted
v2/v3 servers only.

`ingestion: legacy`: one batch per request on `POST {base_url}/api/public/ingestion`:

| trace | legacy | v4 (`otel`; `lf.` = `langfuse.`) |
| --- | --- | --- |
| `trace_id` | trace `id` as given (else derived) | `traceId` (32 hex as is, else derived) |
| `trace_name` (default: model) | trace `name` | root span name; `lf.trace.name` everywhere |
| `span_name` | a `span-create` under the trace | a `span` observation under the root |
| `generation_name` (default: model) | `generation-create` `name` | `generation` name |
| `parent_span_id` (any form) | top observation's `parentObservationId` | root's parent (16 hex) |
| `user` / `session_id` | trace `userId` / `sessionId` | `user.id` / `session.id` everywhere |
| `environment`, `release`, `version` | first-class fields (when accepted) | `lf.environment`, ... |
| other `trace` keys | trace `metadata` | `lf.trace.metadata.<key>` everywhere |
| model, parameters, `tool_choice` | `model`, `modelParameters` | `lf.observation.model.*` |
| provider, finish reasons, tools, error | generation `metadata` | `lf.observation.metadata.*` |
| messages | generation `input` / `output` | generation `lf.observation.input` / `output` |
| preview (`previews.py`) | trace `input` / `output` (own trace only) | root input / output |
| usage | `usageDetails`, see `usage_details` | `lf.observation.usage_details` |
| cost (USD, the gateway's) | `costDetails` input, output, total | `lf.observation.cost_details` |
| time to first token | `completionStartTime` | `lf.observation.completion_start_time` |
| failed request | `level: ERROR`, generation `statusMessage` | `lf.observation.level` ERROR |

A `parent_span_id` that is not 16 hex cannot be an OTLP parent: in v4 mode our root then
has no parent and the id is kept in `broadcast.parent_span_id` (`otlp/spans.py`).

Content travels once: the full messages on the generation, a bounded preview on the trace
(legacy) or root (v4). Every id comes from (request id, destination id), so a retried
legacy batch is de-duplicated by Langfuse; trace `input`/`output` are set only when the
trace is this request's alone, so requests sharing a `trace_id` do not overwrite each
other's. A 207 is read per event. Test Connection (both modes) lists the keys' projects.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar, NotRequired, TypedDict

from marshmallow import fields, validate

from destinations.base import (
    BatchLimits,
    ConfigSchema,
    ConnectionCheck,
    DeliveryContext,
    DeliveryResult,
    EncodedItem,
    HttpDestination,
    check_from_transport,
    describe_response,
    result_from_transport,
)
from destinations.budget import fitted_json_post
from destinations.chat_format import ChatMessage, chat_message, chat_messages
from destinations.config_fields import secret_field, url_field
from destinations.ids import derived_hex, derived_uuid
from destinations.langfuse_common import (
    cost_details,
    generation_metadata,
    iso_time,
    model_parameters,
    promoted_fields,
    usage_details,
)
from destinations.langfuse_otel import langfuse_attributes
from destinations.otlp.encoding import Encoding
from destinations.otlp.exporter import OtlpDestination
from destinations.otlp.spans import PlannedSpan
from destinations.outcomes import Outcome, classify_status
from destinations.previews import input_preview, output_preview
from destinations.registry import register
from destinations.trace import Trace
from destinations.transport import HttpRequest, HttpTransport, TransportResult, join_url

DEFAULT_BASE_URL = "https://us.cloud.langfuse.com"
INGESTION_PATH = "/api/public/ingestion"
OTEL_TRACES_PATH = "/api/public/otel/v1/traces"
PROJECTS_PATH = "/api/public/projects"
OTEL, LEGACY = "otel", "legacy"
# The header that selects Langfuse's v4 ingestion path for OTLP spans.
INGESTION_VERSION_HEADER = "x-langfuse-ingestion-version"
INGESTION_VERSION = "4"
# Langfuse's documented batch limit ("Batch sizes are limited to 3.5 MB in total").
MAX_BATCH_BYTES = 3_500_000
# A 207 names every refused event with Langfuse's validation message; keep enough to read it.
MULTI_STATUS_LIMIT = 64 * 1024
REJECTION_MESSAGE_CHARS = 200
KEYS_REJECTED = "keys rejected by Langfuse: check the public key, the secret key and the base URL"


class LangfuseConfig(ConfigSchema):
    public_key = fields.String(required=True, validate=validate.Length(min=1, max=256))
    secret_key = secret_field(max_length=256)
    base_url = url_field(load_default=DEFAULT_BASE_URL)
    # `legacy` only for self-hosted Langfuse v2/v3 servers, which have no v4 span format.
    ingestion = fields.String(load_default=OTEL, validate=validate.OneOf([OTEL, LEGACY]))


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
    input: NotRequired[str]  # previews: the full messages are on the generation
    output: NotRequired[str]


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
    start, end = iso_time(trace.started_at), iso_time(trace.finished_at)
    promoted, metadata = promoted_fields(meta.extra)

    trace_body = TraceBody(id=trace_id, timestamp=start, name=trace.trace_name, metadata=metadata)
    if trace.end_user:
        trace_body["userId"] = trace.end_user
    if trace.session_id:
        trace_body["sessionId"] = trace.session_id
    trace_body.update(promoted)  # type: ignore[typeddict-item]
    if meta.trace_id is None:
        _set_previews(trace_body, trace)

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
        modelParameters=model_parameters(trace),
        usageDetails=usage_details(trace),
        metadata=generation_metadata(trace),
        **observation_fields,  # type: ignore[typeddict-item]
    )
    if parent:
        generation["parentObservationId"] = parent
    if trace.time_to_first_token_ms is not None:
        generation["completionStartTime"] = iso_time(
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
class LangfuseDestination(OtlpDestination):
    """Langfuse, in the config's `ingestion` mode (see the module docstring)."""

    slug = "langfuse"
    display_name = "Langfuse"
    config_schema = LangfuseConfig
    encoding: ClassVar[Encoding] = Encoding.PROTOBUF
    gzip = True
    max_body_bytes = MAX_BATCH_BYTES

    def __init__(self, config: Mapping[str, Any], transport: HttpTransport) -> None:
        super().__init__(config, transport)
        if self.legacy:
            # One ingestion batch per trace: the legacy body is not an OTLP export to merge.
            self.batch_limits = BatchLimits()

    @property
    def legacy(self) -> bool:
        ingestion: str = self.config.get("ingestion", OTEL)
        return ingestion == LEGACY

    # -- ingestion: otel ------------------------------------------------------------------

    def traces_url(self) -> str:
        return self._url(OTEL_TRACES_PATH)

    def auth_headers(self) -> dict[str, str]:
        return {**self._auth_headers(), INGESTION_VERSION_HEADER: INGESTION_VERSION}

    def span_attributes(self, trace: Trace, span: PlannedSpan) -> Mapping[str, Any]:
        return langfuse_attributes(trace, span)

    # -- both modes -----------------------------------------------------------------------

    def encode_item(self, trace: Trace, context: DeliveryContext) -> EncodedItem:
        if self.legacy:
            return HttpDestination.encode_item(self, trace, context)
        return super().encode_item(trace, context)

    def batch_request(self, payloads: Sequence[Any], context: DeliveryContext) -> HttpRequest:
        if self.legacy:
            return HttpDestination.batch_request(self, payloads, context)
        return super().batch_request(payloads, context)

    def interpret_batch(
        self, result: TransportResult, traces: Sequence[Trace]
    ) -> list[DeliveryResult]:
        if self.legacy:  # the legacy API takes any parent id as given: nothing to note
            return HttpDestination.interpret_batch(self, result, traces)
        return super().interpret_batch(result, traces)

    def build_request(self, trace: Trace, context: DeliveryContext) -> HttpRequest:
        if not self.legacy:
            return super().build_request(trace, context)
        return fitted_json_post(
            self._url(INGESTION_PATH),
            self._auth_headers(),
            trace,
            lambda t: ingestion_batch(t, context.destination_id),
            MAX_BATCH_BYTES,
            response_limit=MULTI_STATUS_LIMIT,
        )

    def interpret(self, result: TransportResult) -> DeliveryResult:
        """OTLP's reading in `otel` mode; in `legacy` mode a 207 is read per event: 4xx items
        are recorded and dropped, others retried."""
        if not self.legacy:
            return super().interpret(result)
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
        """List the keys' projects: proves the keys and that they belong to a project.

        The same read in both modes: it creates nothing, and a v4 server answers it too.
        """
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


def _set_previews(body: TraceBody, trace: Trace) -> None:
    preview_in, preview_out = input_preview(trace), output_preview(trace)
    if preview_in is not None:
        body["input"] = preview_in
    if preview_out is not None:
        body["output"] = preview_out


def _set_io(body: GenerationBody, trace: Trace) -> None:
    if trace.input_messages:
        body["input"] = chat_messages(trace.input_messages)
    if len(trace.output_messages) == 1:
        body["output"] = chat_message(trace.output_messages[0])
    elif trace.output_messages:
        body["output"] = chat_messages(trace.output_messages)
