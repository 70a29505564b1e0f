"""OTLP/HTTP wire encodings of an `Export` (see `spans`): protobuf and OTLP JSON.

Protobuf goes through the official generated classes (`message`). OTLP JSON is written
straight from the `Export` (`document`), as proto3's JSON mapping of the same message with
OTLP's two deviations (OTLP spec, "JSON Protobuf Encoding"): trace and span ids are
lowercase **hex** strings, not base64, and enums are **integers**, not names; keys are
lowerCamelCase, 64-bit integers decimal strings, fields at their default left out.
`tests/test_otlp_encoding.py` checks that `document(e)` equals the protobuf library's own
JSON of `message(e)` with the ids rewritten to hex. `parse_json` is the inverse, so tests
and emulators read our JSON back with the same generated classes.

Attribute values come from plain Python values: str, bool, int (64-bit), float, and lists
of one of those; anything else (dicts, mixed lists, larger integers) is sent as a compact
JSON string, which is what every OTLP receiver we target expects for structured content
(`gen_ai.input.messages`, OpenInference `metadata`, ...).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from destinations.json_body import compact_json, json_text
from destinations.otlp.spans import SCOPE_NAME, SCOPE_VERSION, Export, SpanEvent, SpanRecord

_Message = TypeVar("_Message", bound=Message)

AttributeValue = str | bool | int | float | list[str] | list[int] | list[float] | list[bool]

# Span and link fields that OTLP JSON carries as hex instead of proto3's base64.
_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


class Encoding(StrEnum):
    JSON = "json"
    PROTOBUF = "protobuf"

    @property
    def content_type(self) -> str:
        """The `Content-Type` of a body in this encoding."""
        return "application/json" if self is Encoding.JSON else "application/x-protobuf"


class InvalidOtlpBody(ValueError):
    """A body that is not a valid OTLP message in the claimed encoding."""


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def any_value(value: Any) -> AnyValue:
    """The `AnyValue` for a plain Python value (see the module docstring for the mapping)."""
    # bool before int: bool is an int subclass, and OTLP keeps them apart.
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, list | tuple) and _homogeneous_scalars(value):
        return AnyValue(array_value=ArrayValue(values=[any_value(item) for item in value]))
    return AnyValue(string_value=json_text(value))


def attributes(values: Mapping[str, Any]) -> list[KeyValue]:
    """`KeyValue`s for a mapping, skipping None values (an absent attribute, not a null)."""
    return [
        KeyValue(key=key, value=any_value(value))
        for key, value in values.items()
        if value is not None
    ]


def encode(export: Export, encoding: Encoding) -> bytes:
    """The export's body in `encoding`, uncompressed."""
    if encoding is Encoding.JSON:
        return compact_json(document(export))
    return message(export).SerializeToString()


# Protobuf


def message(export: Export) -> ExportTraceServiceRequest:
    """The `ExportTraceServiceRequest` of an export."""
    scope = InstrumentationScope(name=SCOPE_NAME, version=SCOPE_VERSION)
    spans = [_span_message(span) for span in export.spans]
    resource = Resource(attributes=attributes(export.resource))
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(resource=resource, scope_spans=[ScopeSpans(scope=scope, spans=spans)])
        ]
    )


def _span_message(span: SpanRecord) -> Span:
    return Span(
        trace_id=bytes.fromhex(span.trace_id),
        span_id=bytes.fromhex(span.span_id),
        parent_span_id=bytes.fromhex(span.parent_span_id or ""),
        name=span.name,
        kind=span.kind,
        start_time_unix_nano=span.start_time_unix_nano,
        end_time_unix_nano=span.end_time_unix_nano,
        attributes=attributes(span.attributes),
        events=[
            Span.Event(
                time_unix_nano=event.time_unix_nano,
                name=event.name,
                attributes=attributes(event.attributes),
            )
            for event in span.events
        ],
        status=Status(code=span.status_code, message=span.status_message),
    )


# OTLP JSON: proto3 JSON of `message(export)`, ids in hex, written without the message


def document(export: Export) -> dict[str, Any]:
    """The OTLP JSON document of an export (see the module docstring)."""
    resource_attributes = json_attributes(export.resource)
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": resource_attributes} if resource_attributes else {},
                "scopeSpans": [
                    {
                        "scope": {"name": SCOPE_NAME, "version": SCOPE_VERSION},
                        "spans": [_span_document(span) for span in export.spans],
                    }
                ],
            }
        ]
    }


def _span_document(span: SpanRecord) -> dict[str, Any]:
    document: dict[str, Any] = {"traceId": span.trace_id, "spanId": span.span_id}
    if span.parent_span_id:
        document["parentSpanId"] = span.parent_span_id
    _set_if(document, "name", span.name)
    _set_if(document, "kind", span.kind)
    _set_if(document, "startTimeUnixNano", _int64_text(span.start_time_unix_nano))
    _set_if(document, "endTimeUnixNano", _int64_text(span.end_time_unix_nano))
    _set_if(document, "attributes", json_attributes(span.attributes))
    _set_if(document, "events", [_event_document(event) for event in span.events])
    status: dict[str, Any] = {}
    _set_if(status, "code", span.status_code)
    _set_if(status, "message", span.status_message)
    document["status"] = status
    return document


def _event_document(event: SpanEvent) -> dict[str, Any]:
    document: dict[str, Any] = {}
    _set_if(document, "timeUnixNano", _int64_text(event.time_unix_nano))
    _set_if(document, "name", event.name)
    _set_if(document, "attributes", json_attributes(event.attributes))
    return document


def json_attributes(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The OTLP JSON of `attributes(values)`."""
    return [
        {"key": key, "value": json_value(value)}
        for key, value in values.items()
        if value is not None
    ]


def json_value(value: Any) -> dict[str, Any]:
    """The OTLP JSON of `any_value(value)`."""
    # str first: most attributes are strings, and this runs for every attribute of every
    # span (the checks in `any_value`'s order were a third of an OTLP delivery's CPU).
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
        return {"intValue": str(int(value))}
    if isinstance(value, float):
        return {"doubleValue": _json_number(value)}
    if isinstance(value, list | tuple) and _homogeneous_scalars(value):
        return {"arrayValue": {"values": [json_value(item) for item in value]}}
    return {"stringValue": json_text(value)}


def _set_if(document: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` unless `value` is its field's default, which proto3 JSON leaves out."""
    if value:
        document[key] = value


def _int64_text(value: int) -> str | None:
    return str(value) if value else None  # proto3 JSON: 64-bit integers are decimal strings


def _json_number(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


_JSON_HEAD, _JSON_TAIL = b'{"resourceSpans":[', b"]}"


def merge_bodies(bodies: Sequence[bytes], encoding: Encoding) -> bytes:
    """One export request holding every span of `bodies` (each an encoded export request).

    Protobuf needs no parsing: concatenated messages of one type parse as their merge, and
    a repeated field (`resource_spans`) concatenates. OTLP JSON joins the lists.
    """
    if encoding is Encoding.PROTOBUF:
        return b"".join(bodies)
    if all(b.startswith(_JSON_HEAD) and b.endswith(_JSON_TAIL) for b in bodies):
        inner = (b[len(_JSON_HEAD) : -len(_JSON_TAIL)] for b in bodies)
        return _JSON_HEAD + b",".join(part for part in inner if part) + _JSON_TAIL
    merged = [part for body in bodies for part in json.loads(body).get("resourceSpans", [])]
    return compact_json({"resourceSpans": merged})


def parse_json(body: bytes) -> ExportTraceServiceRequest:
    """The message of an OTLP JSON body (the inverse of `document`). Raises
    `InvalidOtlpBody`."""
    return _parse_json_message(body, ExportTraceServiceRequest())


def parse(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    """Decode a request body by its content type. Raises `InvalidOtlpBody`."""
    if content_type.split(";")[0].strip().lower() == Encoding.JSON.content_type:
        return parse_json(body)
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise InvalidOtlpBody(f"not an OTLP protobuf message: {exc}") from None
    return request


def parse_response(body: bytes, content_type: str) -> ExportTraceServiceResponse:
    """An `ExportTraceServiceResponse` from a response body; empty when it is not one.

    A server may answer a success with an empty body, plain text or an HTML page; none of
    that is an error for the delivery, so this never raises.
    """
    response = ExportTraceServiceResponse()
    if not body.strip():
        return response
    try:
        if "json" in content_type.lower():
            return _parse_json_message(body, response)
        response.ParseFromString(body)
    except (DecodeError, InvalidOtlpBody):  # an unreadable success body is still a success
        return ExportTraceServiceResponse()
    return response


def gzipped(body: bytes) -> bytes:
    """`body` gzipped with mtime 0, so the same body always compresses to the same bytes."""
    return gzip.compress(body, compresslevel=6, mtime=0)


def _parse_json_message(body: bytes, message: _Message) -> _Message:
    try:
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError("the body is not a JSON object")
        _rewrite_ids(document, _hex_to_base64)
        return json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError, binascii.Error) as exc:
        raise InvalidOtlpBody(f"not an OTLP JSON message: {exc}") from None


def _rewrite_ids(document: dict[str, Any], convert: Callable[[str], str]) -> None:
    for resource_spans in _dicts(document.get("resourceSpans")):
        for scope_spans in _dicts(resource_spans.get("scopeSpans")):
            for span in _dicts(scope_spans.get("spans")):
                _convert_ids(span, convert)
                for link in _dicts(span.get("links")):
                    _convert_ids(link, convert)


def _convert_ids(node: dict[str, Any], convert: Callable[[str], str]) -> None:
    for key in _ID_FIELDS:
        if isinstance(node.get(key), str) and node[key]:
            node[key] = convert(node[key])


def _dicts(value: Any) -> Iterable[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _hex_to_base64(value: str) -> str:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"id {value!r} is not hex") from None
    return base64.b64encode(raw).decode("ascii")


def _homogeneous_scalars(values: list[Any] | tuple[Any, ...]) -> bool:
    kinds = {type(item) for item in values}
    return len(kinds) == 1 and kinds <= {str, bool, int, float}
