"""An OTLP/HTTP vendor endpoint on a real loopback server, and readers for what it got.

`OtlpEmulator` answers like an OTLP receiver behind a vendor's auth: a request without the
vendor's exact auth headers gets 401; a content type the vendor does not take gets 415; a
body that `opentelemetry-proto` cannot decode gets 400; otherwise the next scripted reply
(429 with Retry-After, 400, a partial success...) or a plain success. Read-only routes
(Phoenix's `/v1/projects`, LangSmith's `/sessions`) answer 200 with `{}` behind the same
auth. Every body is decoded with the generated classes (OTLP JSON via the id/enum
conversion in `destinations.otlp.encoding.parse`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from destinations.otlp.encoding import Encoding, InvalidOtlpBody, parse
from harness.receiver import ReceivedRequest, Reply
from tests.emulators import Emulator

ALL_ENCODINGS = frozenset(Encoding)


class OtlpEmulator(Emulator):
    """`with OtlpEmulator(path, headers) as vendor:` serves on `vendor.url`."""

    def __init__(
        self,
        traces_path: str,
        required_headers: Mapping[str, str],
        *,
        encodings: Iterable[Encoding] = ALL_ENCODINGS,
        read_paths: Iterable[str] = (),
    ) -> None:
        self.traces_path = traces_path
        self.required_headers = {name.lower(): value for name, value in required_headers.items()}
        self.encodings = frozenset(encodings)
        self.read_paths = tuple(read_paths)
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._exports: list[ExportTraceServiceRequest] = []
        super().__init__()

    # -- driving it -----------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Answer the next valid export requests with these replies, in order."""
        with self._lock:
            self._script.extend(replies)

    def reset(self) -> None:
        """Forget what was received and scripted: one emulator can serve many tests."""
        with self._lock:
            self._script.clear()
            self._exports.clear()
        self.receiver.clear()

    def requests(self) -> list[ReceivedRequest]:
        return self.receiver.requests()

    def exports(self) -> list[ExportTraceServiceRequest]:
        """Every export request that passed auth and decoding, decoded."""
        with self._lock:
            return list(self._exports)

    def spans(self) -> list[Span]:
        return [span for export in self.exports() for span in all_spans(export)]

    # -- answering ------------------------------------------------------------------------

    def _respond(self, request: ReceivedRequest) -> Reply:
        path = request.path.split("?", 1)[0]
        for name, value in self.required_headers.items():
            if request.headers.get(name) != value:
                return Reply(401, b'{"error":"invalid credentials"}')
        if request.method == "GET" and path in self.read_paths:
            return Reply(200, b"{}", {"Content-Type": "application/json"})
        if request.method != "POST" or path != self.traces_path:
            return Reply(404, b"not found")
        content_type = request.headers.get("content-type", "")
        encoding = next((e for e in self.encodings if e.content_type == content_type), None)
        if encoding is None:
            return Reply(415, b"unsupported content type")
        try:
            export = parse(request.body, content_type)
        except InvalidOtlpBody as exc:
            return Reply(400, str(exc).encode())
        with self._lock:
            self._exports.append(export)
            scripted = self._script.popleft() if self._script else None
        return scripted or success(encoding)


def success(encoding: Encoding, rejected_spans: int = 0, message: str = "") -> Reply:
    """An `ExportTraceServiceResponse` in `encoding`, with a partial success when asked."""
    response = ExportTraceServiceResponse()
    if rejected_spans:
        response.partial_success.rejected_spans = rejected_spans
        response.partial_success.error_message = message
    if encoding is Encoding.JSON:
        body = json_format.MessageToJson(response).encode()
    else:
        body = response.SerializeToString()
    return Reply(200, body, {"Content-Type": encoding.content_type})


def all_spans(export: ExportTraceServiceRequest) -> list[Span]:
    return [
        span
        for resource_spans in export.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]


def resource_attributes(export: ExportTraceServiceRequest) -> dict[str, Any]:
    (resource_spans,) = export.resource_spans
    return attribute_dict(resource_spans.resource.attributes)


def attribute_dict(values: Iterable[KeyValue]) -> dict[str, Any]:
    """KeyValues as a plain dict; fails on a duplicate key (a receiver keeps only one)."""
    result: dict[str, Any] = {}
    for item in values:
        assert item.key not in result, f"duplicate attribute {item.key}"
        result[item.key] = plain(item.value)
    return result


def plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [plain(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attribute_dict(value.kvlist_value.values)
    return getattr(value, kind) if kind else None
