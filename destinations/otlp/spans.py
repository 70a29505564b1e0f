"""The span hierarchy of one trace, and the `Export` that carries it (encoded by `encoding`).

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

What this module builds is wire-neutral (`Export`: plain values, hex ids, nanoseconds):
`encoding` writes it as protobuf or straight to OTLP JSON. Building protobuf objects only
to walk them again for JSON cost as much as all the rest of an OTLP delivery. The records
are named tuples: built for every trace and destination, and a frozen dataclass costs a
`setattr` per field to build.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from destinations.base import DeliveryContext
from destinations.ids import derived_hex, otlp_span_id
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


class PlannedSpan(NamedTuple):
    """One span of the hierarchy, before a dialect gives it attributes. Ids are hex."""

    level: Level
    name: str
    span_id: str
    parent_span_id: str | None


class Hierarchy(NamedTuple):
    """The OTLP trace id and the spans to send under it, topmost first, generation last."""

    trace_id: str
    spans: tuple[PlannedSpan, ...]


class SpanEvent(NamedTuple):
    name: str
    time_unix_nano: int
    attributes: Mapping[str, Any]


class SpanRecord(NamedTuple):
    """One span, ready to encode: ids in hex, times in unix nanoseconds, `kind` and
    `status_code` the OTLP enum values, attributes plain values (None: left out)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: Span.SpanKind.ValueType
    start_time_unix_nano: int
    end_time_unix_nano: int
    attributes: Mapping[str, Any]
    status_code: Status.StatusCode.ValueType
    status_message: str = ""
    events: tuple[SpanEvent, ...] = ()


class Export(NamedTuple):
    """One export request: one resource, one instrumentation scope, its spans."""

    resource: Mapping[str, Any]
    spans: tuple[SpanRecord, ...]


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


def export_spans(
    trace: Trace,
    destination_id: str,
    dialect: Dialect,
    resource: Mapping[str, Any] | None = None,
) -> Export:
    """Pure: the export of the trace's spans in `dialect`.

    `resource` adds resource attributes to `service.name` (e.g. the project name).
    """
    plan = hierarchy(trace, destination_id)
    start, end = unix_nanos(trace.started_at), unix_nanos(trace.finished_at)
    status_code, status_message = _status(trace)
    spans = []
    for planned in plan.spans:
        values = dict(dialect(trace, planned))
        if trace.metadata.trace_id:
            values.setdefault(ORIGINAL_TRACE_ID, trace.metadata.trace_id)
        if planned.level is Level.TRACE and parent_span_note(trace):
            values.setdefault(ORIGINAL_PARENT_SPAN_ID, trace.metadata.parent_span_id)
        generation = planned.level is Level.GENERATION
        spans.append(
            SpanRecord(
                trace_id=plan.trace_id,
                span_id=planned.span_id,
                parent_span_id=planned.parent_span_id,
                name=planned.name,
                kind=Span.SPAN_KIND_CLIENT if generation else Span.SPAN_KIND_INTERNAL,
                start_time_unix_nano=start,
                end_time_unix_nano=end,
                attributes=values,
                status_code=status_code,
                status_message=status_message,
                events=(_exception_event(trace, end),) if generation and trace.is_error else (),
            )
        )
    return Export(_resource(resource), tuple(spans))


def _resource(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    return {"service.name": SERVICE_NAME, **(extra or {})}


def connection_test_export(
    context: DeliveryContext, resource: Mapping[str, Any] | None = None
) -> Export:
    """Pure: one INTERNAL span named `CONNECTION_TEST_NAME`, marked
    `broadcast.connection_test=true`, at `context.now`, in a trace of its own derived from
    the destination id."""
    destination_id = context.destination_id
    at = unix_nanos(context.now)
    span = SpanRecord(
        trace_id=derived_hex(destination_id, CONNECTION_TEST_NAME, nbytes=16),
        span_id=derived_hex(destination_id, CONNECTION_TEST_NAME, nbytes=8),
        parent_span_id=None,
        name=CONNECTION_TEST_NAME,
        kind=Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=at,
        end_time_unix_nano=at,
        attributes={CONNECTION_TEST_ATTRIBUTE: True},
        status_code=Status.STATUS_CODE_OK,
    )
    return Export(_resource(resource), (span,))


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


def _status(trace: Trace) -> tuple[Status.StatusCode.ValueType, str]:
    if trace.is_error:
        return Status.STATUS_CODE_ERROR, error_message(trace)
    return Status.STATUS_CODE_OK, ""


def _exception_event(trace: Trace, at: int) -> SpanEvent:
    return SpanEvent(
        "exception",
        at,
        {"exception.type": error_type(trace), "exception.message": error_message(trace)},
    )
