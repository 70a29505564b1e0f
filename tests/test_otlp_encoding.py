"""OTLP encodings: protobuf and OTLP JSON (hex ids, integer enums), attribute values."""

from __future__ import annotations

import base64
import json
import math

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from destinations.otlp.encoding import (
    Encoding,
    InvalidOtlpBody,
    any_value,
    attributes,
    encode,
    encode_json,
    parse,
    parse_json,
    parse_response,
)
from destinations.otlp.genai import genai_attributes
from destinations.otlp.openinference import openinference_attributes
from destinations.otlp.spans import export_request, unix_nanos
from harness.samples import chat_event, error_event, tool_call_event
from tasks.events import build_trace
from tests.emulators.otlp_receiver import plain, success


def _request(event: dict | None = None) -> ExportTraceServiceRequest:
    trace = build_trace(event or chat_event(1, trace={"trace_name": "T", "span_name": "S"}))
    return export_request(trace, "dst_1", genai_attributes)


def test_json_uses_hex_ids_integer_enums_and_string_int64() -> None:
    request = _request(error_event(1, trace={"trace_name": "T", "span_name": "S"}))
    document = json.loads(encode_json(request))
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
    request = _request()
    assert parse_json(encode_json(request)) == request
    # And the conversion is exactly the OTLP deviation: undo it by hand, proto3 JSON parses.
    document = json.loads(encode_json(request))
    for span in document["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in span:
                span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    assert json_format.ParseDict(document, ExportTraceServiceRequest()) == request


@pytest.mark.parametrize("encoding", list(Encoding))
def test_parse_by_content_type(encoding: Encoding) -> None:
    request = _request()
    assert parse(encode(request, encoding), encoding.content_type) == request


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
    """The protobuf library's own proto3 JSON, with OTLP's hex ids: what `encode_json`
    must produce (it walks the fields itself, for speed)."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for node in (span, *span.get("links", [])):
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if node.get(key):
                            node[key] = base64.b64decode(node[key]).hex()
    return document


def _every_field_kind() -> ExportTraceServiceRequest:
    """Values that proto3 JSON writes specially: 64-bit ints, bytes, doubles, enums."""
    span = Span(
        trace_id=bytes(range(16)),
        span_id=bytes(range(8)),
        parent_span_id=bytes(range(8, 16)),
        name="edge",
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=2**63 - 1,
        end_time_unix_nano=1,
        status=Status(code=Status.STATUS_CODE_ERROR, message="boom"),
        dropped_attributes_count=3,
        events=[Span.Event(name="e", time_unix_nano=5, attributes=attributes({"n": -(2**40)}))],
        links=[Span.Link(trace_id=bytes(16), span_id=bytes(8), attributes=attributes({"x": 1}))],
    )
    span.attributes.extend(attributes({"nan": math.nan, "inf": math.inf, "ninf": -math.inf}))
    span.attributes.extend(attributes({"f": 0.5, "b": False, "list": [1, 2], "doc": {"k": 1}}))
    span.attributes.add(key="raw", value=AnyValue(bytes_value=b"\x00\xffbytes"))
    span.attributes.add(key="empty", value=AnyValue(string_value=""))
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.append(span)
    return request


@pytest.mark.parametrize(
    "request_",
    [
        _request(),
        _request(error_event(2)),
        _request(tool_call_event(3)),
        export_request(build_trace(chat_event(4)), "dst_2", openinference_attributes),
        _every_field_kind(),
    ],
    ids=["chat", "error", "tool-call", "openinference", "every-field-kind"],
)
def test_json_equals_the_protobuf_librarys_json_with_hex_ids(request_) -> None:
    assert json.loads(encode_json(request_)) == _oracle_json(request_)
