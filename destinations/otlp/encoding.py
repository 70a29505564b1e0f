"""OTLP/HTTP wire encodings of an `ExportTraceServiceRequest`: protobuf and OTLP JSON.

OTLP JSON is proto3's JSON mapping with two deviations (OTLP spec, "JSON Protobuf
Encoding"): trace and span ids are lowercase **hex** strings, not base64, and enums are
**integers**, not names. `google.protobuf.json_format` does the rest (lowerCamelCase keys,
int64 as decimal strings). `parse_json` is the exact inverse, so tests and emulators read
our JSON back with the same generated classes.

Attribute values are built here too (`attributes`), from plain Python values: str, bool,
int, float, and lists of one of those; anything else (dicts, mixed lists) is sent as a
compact JSON string, which is what every OTLP receiver we target expects for structured
content (`gen_ai.input.messages`, OpenInference `metadata`, ...).
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue

from destinations.json_body import compact_json, json_text

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


def any_value(value: Any) -> AnyValue:
    """The `AnyValue` for a plain Python value (see the module docstring for the mapping)."""
    # bool before int: bool is an int subclass, and OTLP keeps them apart.
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
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


def encode(request: ExportTraceServiceRequest, encoding: Encoding) -> bytes:
    """The request body in `encoding`, uncompressed."""
    return encode_json(request) if encoding is Encoding.JSON else request.SerializeToString()


def encode_json(request: ExportTraceServiceRequest) -> bytes:
    """OTLP JSON: proto3 JSON with hex ids and integer enums.

    A direct walk over the set fields: `json_format.MessageToDict`'s generic walk (maps,
    `Any`, wrappers, none of which OTLP traces use) was half of a trace's encoding time.
    `tests/test_otlp_encoding.py` checks that it equals `MessageToDict` with the ids
    rewritten to hex, for every sample trace."""
    return compact_json(_json_object(request))


def _json_object(message: Message) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for field, value in message.ListFields():
        name, convert = _json_plan(field)
        document[name] = [convert(item) for item in value] if field.is_repeated else convert(value)
    return document


@functools.cache
def _json_plan(field: FieldDescriptor) -> tuple[str, Callable[[Any], Any]]:
    """A field's JSON key and how its values convert (proto3 JSON, OTLP's deviations)."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return field.json_name, _json_object
    if kind == FieldDescriptor.TYPE_BYTES:
        to_text = bytes.hex if field.json_name in _ID_FIELDS else _base64_text
        return field.json_name, to_text
    if kind in _INT64_KINDS:
        return field.json_name, str  # proto3 JSON: 64-bit integers are decimal strings
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return field.json_name, _json_number
    return field.json_name, _same  # string, bool, 32-bit integers, enums as integers


_INT64_KINDS = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def _same(value: Any) -> Any:
    return value


def _base64_text(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _json_number(value: float) -> float | str:
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
    merged = ExportTraceServiceRequest()
    for body in bodies:
        merged.resource_spans.extend(parse_json(body).resource_spans)
    return encode_json(merged)


def parse_json(body: bytes) -> ExportTraceServiceRequest:
    """Inverse of `encode_json`. Raises `InvalidOtlpBody`."""
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


def _parse_json_message(body: bytes, message: Any) -> Any:
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
