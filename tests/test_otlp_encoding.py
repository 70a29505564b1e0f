"""OTLP encodings: protobuf and OTLP JSON (hex ids, integer enums), attribute values."""

from __future__ import annotations

import base64
import json
import math

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from broadcast_engine.events import build_trace
from destinations.otlp.encoding import (
    Encoding,
    InvalidOtlpBody,
    any_value,
    attributes,
    encode,
    message,
    parse,
    parse_json,
    parse_response,
)
from destinations.otlp.genai import genai_attributes
from destinations.otlp.openinference import openinference_attributes
from destinations.otlp.spans import Export, SpanEvent, SpanRecord, export_spans, unix_nanos
from harness.samples import chat_event, error_event, tool_call_event
from tests.emulators.otlp_receiver import plain, success


def _export(event: dict | None = None) -> Export:
    trace = build_trace(event or chat_event(1, trace={"trace_name": "T", "span_name": "S"}))
    return export_spans(trace, "dst_1", genai_attributes)


def _json(export: Export) -> dict:
    return json.loads(encode(export, Encoding.JSON))


def test_json_uses_hex_ids_integer_enums_and_string_int64() -> None:
    export = _export(error_event(1, trace={"trace_name": "T", "span_name": "S"}))
    request = message(export)
    document = _json(export)
    spans = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    for span, original in zip(spans, request.resource_spans[0].scope_spans[0].spans, strict=True):
        assert span["traceId"] == original.trace_id.hex() and len(span["traceId"]) == 32
        assert span["spanId"] == original.span_id.hex() and len(span["spanId"]) == 16
        assert isinstance(span["kind"], int)
        assert span["status"]["code"] == 2  # ERROR, as an integer
        assert span["startTimeUnixNano"] == str(original.start_time_unix_nano)
    assert spans[1]["parentSpanId"] == spans[0]["spanId"]
    assert spans[2]["parentSpanId"] == spans[1]["spanId"]
    assert "parentSpanId" not in spans[0]
    assert spans[2]["kind"] == 3 and spans[0]["kind"] == 1


def test_json_round_trips_through_the_generated_classes() -> None:
    export = _export()
    request = message(export)
    assert parse_json(encode(export, Encoding.JSON)) == request
    # And the conversion is exactly the OTLP deviation: undo it by hand, proto3 JSON parses.
    document = _json(export)
    for span in document["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in span:
                span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    assert json_format.ParseDict(document, ExportTraceServiceRequest()) == request


@pytest.mark.parametrize("encoding", list(Encoding))
def test_parse_by_content_type(encoding: Encoding) -> None:
    export = _export()
    assert parse(encode(export, encoding), encoding.content_type) == message(export)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[]", "application/json"),
        (b"\xff\xff\xff", "application/x-protobuf"),
        (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}', "application/json"),
    ],
)
def test_invalid_bodies_are_named_errors(body: bytes, content_type: str) -> None:
    with pytest.raises(InvalidOtlpBody):
        parse(body, content_type)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("x", "x"),
        (True, True),
        (3, 3),
        (0.5, 0.5),
        (["a", "b"], ["a", "b"]),
        ([1, 2], [1, 2]),
        ({"k": [1, "a"]}, '{"k":[1,"a"]}'),
        ([1, "a"], '[1,"a"]'),
        ("é", "é"),
    ],
)
def test_attribute_values(value: object, expected: object) -> None:
    assert plain(any_value(value)) == expected


def test_bool_is_not_sent_as_int_and_none_is_absent() -> None:
    assert any_value(True).WhichOneof("value") == "bool_value"
    assert [kv.key for kv in attributes({"a": None, "b": 0})] == ["b"]


def test_nanoseconds_are_exact() -> None:
    trace = build_trace(chat_event(0))
    assert unix_nanos(trace.started_at) == 1795428000 * 10**9
    assert unix_nanos(trace.finished_at) - unix_nanos(trace.started_at) == 850_000_000


@pytest.mark.parametrize("encoding", list(Encoding))
def test_partial_success_response_is_read_in_both_encodings(encoding: Encoding) -> None:
    reply = success(encoding, rejected_spans=2, message="bad attribute")
    response = parse_response(reply.body, encoding.content_type)
    assert response.partial_success.rejected_spans == 2
    assert response.partial_success.error_message == "bad attribute"


@pytest.mark.parametrize("body", [b"", b"ok", b"<html>hi</html>", b"\xff\xfe"])
def test_unreadable_success_bodies_are_empty_responses(body: bytes) -> None:
    assert parse_response(body, "text/html").partial_success.rejected_spans == 0
    assert parse_response(body, "application/json").partial_success.rejected_spans == 0


def _oracle_json(request: ExportTraceServiceRequest) -> dict:
    """The protobuf library's own proto3 JSON, with OTLP's hex ids: what the OTLP JSON
    encoding must produce (it writes the document itself, for speed)."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = base64.b64decode(span[key]).hex()
    return document


def _every_value_kind() -> Export:
    """Values that proto3 JSON writes specially: 64-bit ints, doubles, enums, defaults."""
    edge = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "f": 0.5, "zero": 0.0}
    edge |= {"b": False, "list": [1, 2], "doc": {"k": 1}, "empty": "", "n": -(2**40)}
    edge |= {"big": 2**63, "min": -(2**63), "none": None, "floats": [0.5, math.nan]}
    span = SpanRecord(
        trace_id=bytes(range(16)).hex(),
        span_id=bytes(range(8)).hex(),
        parent_span_id=bytes(range(8, 16)).hex(),
        name="edge",
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=2**63 - 1,
        end_time_unix_nano=1,
        attributes=edge,
        status_code=Status.STATUS_CODE_ERROR,
        status_message="boom",
        events=(SpanEvent("e", 5, {"n": -(2**40)}), SpanEvent("", 0, {})),
    )
    bare = SpanRecord(bytes(16).hex(), bytes(8).hex(), None, "", 0, 0, 0, {}, 0)
    return Export({}, (span, bare))


@pytest.mark.parametrize(
    "export",
    [
        _export(),
        _export(error_event(2)),
        _export(tool_call_event(3)),
        export_spans(build_trace(chat_event(4)), "dst_2", openinference_attributes),
        _every_value_kind(),
    ],
    ids=["chat", "error", "tool-call", "openinference", "every-value-kind"],
)
def test_json_equals_the_protobuf_librarys_json_with_hex_ids(export: Export) -> None:
    assert _json(export) == _oracle_json(message(export))
