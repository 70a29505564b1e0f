"""The span hierarchy of one trace, and the `ExportTraceServiceRequest` that carries it.

| trace | OTLP |
| --- | --- |
| `trace_id` (32 hex: used as is; else derived from it) | every span's `traceId` |
| no `trace_id` | `traceId` derived from the request id |
| `trace_name` (default: model) | root span `name`, kind INTERNAL |
| `span_name` (only when given) | intermediate span `name`, kind INTERNAL, child of the root |
| `generation_name` (default: `chat {model}`) | generation span `name`, kind CLIENT |
| `parent_span_id` (16 hex, any case) | `parentSpanId` of our root (the root stays) |
| `parent_span_id` (any other form) | no parent; kept in `broadcast.parent_span_id` (noted) |
| `status: error` | `status` ERROR + message on every span; `exception` event on generation |

Each span is the child of the one above it in this table.

Ids: the trace id comes from (grouping id, destination id), so requests sharing a
`trace_id` share one OTLP trace per destination; span ids come from (request id,
destination id, level), so a retry re-sends the same ids and the vendor de-duplicates.
Each request sends its own root span, so a grouped trace has one root per request, each
with its own times; with `parent_span_id` the root hangs under the caller's span, so
`trace_name` never vanishes.

A caller's `trace_id` that already is a valid OTLP trace id (32 lowercase hex, not all
zeros) is used verbatim: that is the only way a `parent_span_id` from the caller's own
tracing can point into the same trace. The caller's original `trace_id` is always kept
in the attribute `broadcast.trace.id`.

Attributes come from a dialect: a pure function of (trace, span) to a mapping, see
`genai.py` and `openinference.py`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from destinations.base import DeliveryContext
from destinations.ids import derived_hex, otlp_span_id
from destinations.otlp.encoding import attributes
from destinations.trace import Trace

SCOPE_NAME = "broadcast"
SCOPE_VERSION = "1.0.0"
SERVICE_NAME = "broadcast"
ORIGINAL_TRACE_ID = "broadcast.trace.id"
ORIGINAL_PARENT_SPAN_ID = "broadcast.parent_span_id"
CONNECTION_TEST_NAME = "broadcast connection test"
CONNECTION_TEST_ATTRIBUTE = "broadcast.connection_test"

_OTLP_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Level(StrEnum):
    """Where a span sits in the hierarchy; also the role its span id is derived from."""

    TRACE = "trace"
    SPAN = "span"
    GENERATION = "generation"


@dataclass(frozen=True)
class PlannedSpan:
    """One span of the hierarchy, before a dialect gives it attributes. Ids are hex."""

    level: Level
    name: str
    span_id: str
    parent_span_id: str | None


@dataclass(frozen=True)
class Hierarchy:
    """The OTLP trace id and the spans to send under it, topmost first, generation last."""

    trace_id: str
    spans: tuple[PlannedSpan, ...]


Dialect = Callable[[Trace, PlannedSpan], Mapping[str, Any]]


def otlp_trace_id(trace: Trace, destination_id: str) -> str:
    """32 hex: the caller's `trace_id` if it already is one, else derived (see module doc)."""
    caller = trace.metadata.trace_id
    if caller and _OTLP_TRACE_ID.match(caller) and caller != "0" * 32:
        return caller
    return derived_hex(trace.grouping_id, destination_id, "trace", nbytes=16)


def span_id(trace: Trace, destination_id: str, level: Level) -> str:
    """16 hex, from (request id, destination id, level): the same on every retry."""
    return derived_hex(trace.request_id, destination_id, level.value, nbytes=8)


def generation_span_name(trace: Trace) -> str:
    """The caller's `generation_name`, else `chat {model}` as the GenAI conventions name it."""
    return trace.metadata.generation_name or f"chat {trace.model}"


def hierarchy(trace: Trace, destination_id: str) -> Hierarchy:
    """Pure: the spans to send for `trace` to `destination_id` (see the module table)."""
    meta = trace.metadata
    root = PlannedSpan(
        Level.TRACE,
        trace.trace_name,
        span_id(trace, destination_id, Level.TRACE),
        otlp_span_id(meta.parent_span_id),
    )
    spans: list[PlannedSpan] = [root]
    parent = root.span_id
    if meta.span_name:
        middle = PlannedSpan(
            Level.SPAN, meta.span_name, span_id(trace, destination_id, Level.SPAN), parent
        )
        spans.append(middle)
        parent = middle.span_id
    spans.append(
        PlannedSpan(
            Level.GENERATION,
            generation_span_name(trace),
            span_id(trace, destination_id, Level.GENERATION),
            parent,
        )
    )
    return Hierarchy(otlp_trace_id(trace, destination_id), tuple(spans))


def export_request(
    trace: Trace,
    destination_id: str,
    dialect: Dialect,
    resource: Mapping[str, Any] | None = None,
) -> ExportTraceServiceRequest:
    """Pure: one `ExportTraceServiceRequest` with the trace's spans in `dialect`.

    `resource` adds resource attributes to `service.name` (e.g. the project name).
    """
    plan = hierarchy(trace, destination_id)
    start, end = unix_nanos(trace.started_at), unix_nanos(trace.finished_at)
    spans = []
    for planned in plan.spans:
        values = dict(dialect(trace, planned))
        if trace.metadata.trace_id:
            values.setdefault(ORIGINAL_TRACE_ID, trace.metadata.trace_id)
        if planned.level is Level.TRACE and parent_span_note(trace):
            values.setdefault(ORIGINAL_PARENT_SPAN_ID, trace.metadata.parent_span_id)
        span = Span(
            trace_id=bytes.fromhex(plan.trace_id),
            span_id=bytes.fromhex(planned.span_id),
            parent_span_id=bytes.fromhex(planned.parent_span_id or ""),
            name=planned.name,
            kind=(
                Span.SpanKind.SPAN_KIND_CLIENT
                if planned.level is Level.GENERATION
                else Span.SpanKind.SPAN_KIND_INTERNAL
            ),
            start_time_unix_nano=start,
            end_time_unix_nano=end,
            attributes=attributes(values),
            status=_status(trace),
        )
        if trace.is_error and planned.level is Level.GENERATION:
            span.events.append(_exception_event(trace, end))
        spans.append(span)
    return _single_resource(spans, resource)


def _single_resource(
    spans: list[Span], resource: Mapping[str, Any] | None
) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(
                    attributes=attributes({"service.name": SERVICE_NAME, **(resource or {})})
                ),
                scope_spans=[
                    ScopeSpans(
                        scope=InstrumentationScope(name=SCOPE_NAME, version=SCOPE_VERSION),
                        spans=spans,
                    )
                ],
            )
        ]
    )


def connection_test_export(
    context: DeliveryContext, resource: Mapping[str, Any] | None = None
) -> ExportTraceServiceRequest:
    """Pure: one INTERNAL span named `CONNECTION_TEST_NAME`, marked
    `broadcast.connection_test=true`, at `context.now`, in a trace of its own derived from
    the destination id."""
    destination_id = context.destination_id
    at = unix_nanos(context.now)
    span = Span(
        trace_id=bytes.fromhex(derived_hex(destination_id, CONNECTION_TEST_NAME, nbytes=16)),
        span_id=bytes.fromhex(derived_hex(destination_id, CONNECTION_TEST_NAME, nbytes=8)),
        name=CONNECTION_TEST_NAME,
        kind=Span.SpanKind.SPAN_KIND_INTERNAL,
        start_time_unix_nano=at,
        end_time_unix_nano=at,
        attributes=attributes({CONNECTION_TEST_ATTRIBUTE: True}),
        status=Status(code=Status.StatusCode.STATUS_CODE_OK),
    )
    return _single_resource([span], resource)


def parent_span_note(trace: Trace) -> str | None:
    """What the delivery log should say when the caller's `parent_span_id` is not an OTLP
    span id and so could not parent our spans; None when it could (or there is none)."""
    given = trace.metadata.parent_span_id
    if given is None or otlp_span_id(given) is not None:
        return None
    return "parent_span_id is not a 16-hex span id: sent without a parent"


def unix_nanos(moment: datetime) -> int:
    # Integer arithmetic: a float timestamp loses the microseconds at this magnitude.
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def error_message(trace: Trace) -> str:
    """The provider's error message, or a generic one for a failure that carries none."""
    if trace.error is None:
        return "request failed"
    return trace.error.message


def error_type(trace: Trace) -> str:
    """The GenAI `error.type`: the error code when there is one, else `_OTHER`."""
    return trace.error.code if trace.error and trace.error.code else "_OTHER"


def _status(trace: Trace) -> Status:
    if trace.is_error:
        return Status(code=Status.StatusCode.STATUS_CODE_ERROR, message=error_message(trace))
    return Status(code=Status.StatusCode.STATUS_CODE_OK)


def _exception_event(trace: Trace, at: int) -> Span.Event:
    return Span.Event(
        time_unix_nano=at,
        name="exception",
        attributes=attributes(
            {"exception.type": error_type(trace), "exception.message": error_message(trace)}
        ),
    )
