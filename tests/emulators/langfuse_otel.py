"""Langfuse v4's OTLP endpoint on loopback, built from Langfuse's own server code.

Answers as `web/src/pages/api/public/otel/v1/traces/index.ts` (langfuse/langfuse) does:
401 without valid Basic auth; 400 `Invalid content type` unless JSON or protobuf; gzip
bodies inflated (by `harness.receiver`); 400 when the body does not decode; 400 for an
`x-langfuse-ingestion-version` above 4 or not a number; 200 `{}` for an export with no
resource spans; otherwise 200 after queueing. `GET /api/public/projects` answers the Test
Connection.

Each accepted span becomes an observation the way `OtelIngestionProcessor.processToEvent`
maps the attributes this project sends (`observation`), spans with ids of the wrong length
are refused (`validateOtelSpanIds`), and every `langfuse.*` attribute name is checked
against the `langfuse` SDK's own `LangfuseOtelSpanAttributes` (pinned 4.18.0 in
tests/requirements-native.txt): an unknown name is recorded in `unknown_names`.
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

from langfuse._client.attributes import LangfuseOtelSpanAttributes
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from destinations.otlp.encoding import InvalidOtlpBody, parse
from harness.receiver import ReceivedRequest, Reply
from tests.emulators import Emulator, json_reply
from tests.emulators.otlp_receiver import attribute_dict

PUBLIC_KEY = "pk-lf-emulator"
SECRET_KEY = "sk-lf-emulator"
TRACES_PATH = "/api/public/otel/v1/traces"

A = LangfuseOtelSpanAttributes
# Every attribute name the SDK defines, and the prefixes under which it writes per-key values.
SDK_NAMES = frozenset(
    value for name, value in vars(A).items() if name.isupper() and isinstance(value, str)
)
SDK_PREFIXES = (A.TRACE_METADATA + ".", A.OBSERVATION_METADATA + ".")


def unknown_langfuse_names(attributes: dict[str, Any]) -> list[str]:
    """`langfuse.*` names the SDK does not define (Langfuse would file them as plain metadata)."""
    return sorted(
        key
        for key in attributes
        if key.startswith("langfuse.") and key not in SDK_NAMES and not key.startswith(SDK_PREFIXES)
    )


def observation(span: Span, resource: dict[str, Any]) -> dict[str, Any]:
    """What Langfuse stores for `span` (the subset of `processToEvent` our spans exercise)."""
    attrs = attribute_dict(span.attributes)
    return {
        "traceId": span.trace_id.hex(),
        "id": span.span_id.hex(),
        "parentObservationId": span.parent_span_id.hex() or None,
        "name": span.name,
        "type": str(attrs.get(A.OBSERVATION_TYPE, "span")).upper(),
        "traceName": attrs.get(A.TRACE_NAME),
        "userId": attrs.get("langfuse.user.id") or attrs.get(A.TRACE_USER_ID),
        "sessionId": attrs.get("langfuse.session.id")
        or attrs.get(A.TRACE_SESSION_ID)
        or attrs.get("gen_ai.conversation.id"),
        "tags": list(attrs.get(A.TRACE_TAGS, [])),
        "environment": attrs.get(A.ENVIRONMENT)
        or resource.get("deployment.environment.name")
        or "default",
        "release": attrs.get(A.RELEASE),
        "version": attrs.get(A.VERSION),
        "level": attrs.get(A.OBSERVATION_LEVEL)
        or ("ERROR" if span.status.code == span.status.STATUS_CODE_ERROR else "DEFAULT"),
        "statusMessage": attrs.get(A.OBSERVATION_STATUS_MESSAGE) or span.status.message or None,
        "input": _json_or_text(attrs.get(A.OBSERVATION_INPUT)),
        "output": _json_or_text(attrs.get(A.OBSERVATION_OUTPUT)),
        "model": attrs.get(A.OBSERVATION_MODEL),
        "modelParameters": _json_or_text(attrs.get(A.OBSERVATION_MODEL_PARAMETERS)) or {},
        "usageDetails": _json_or_text(attrs.get(A.OBSERVATION_USAGE_DETAILS)) or {},
        "costDetails": _json_or_text(attrs.get(A.OBSERVATION_COST_DETAILS))
        or ({"total": attrs["gen_ai.usage.cost"]} if "gen_ai.usage.cost" in attrs else {}),
        "completionStartTime": attrs.get(A.OBSERVATION_COMPLETION_START_TIME),
        "metadata": {
            **_prefixed(attrs, A.OBSERVATION_METADATA),
            **_prefixed(attrs, A.TRACE_METADATA),
        },
        "startTimeUnixNano": span.start_time_unix_nano,
        "endTimeUnixNano": span.end_time_unix_nano,
        "unknown_names": unknown_langfuse_names(attrs),
    }


class LangfuseOtelEmulator(Emulator):
    """`with LangfuseOtelEmulator() as langfuse:` serves on `langfuse.url`."""

    def __init__(self, public_key: str = PUBLIC_KEY, secret_key: str = SECRET_KEY) -> None:
        token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode("ascii")
        self.expected_auth = f"Basic {token}"
        self._lock = threading.Lock()
        super().__init__()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.observations: list[dict[str, Any]] = []
            self.invalid_spans = 0
            self.ingestion_versions: list[str | None] = []
        self.receiver.clear()

    def export_requests(self) -> list[ReceivedRequest]:
        return self.receiver.requests(TRACES_PATH)

    def stored(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.observations)

    def _respond(self, request: ReceivedRequest) -> Reply:
        if request.headers.get("authorization") != self.expected_auth:
            return json_reply(401, {"message": "Invalid credentials. Confirm the keys."})
        if request.method == "GET" and request.path == "/api/public/projects":
            return json_reply(200, {"data": [{"id": "proj-1", "name": "Broadcast demo"}]})
        if request.method != "POST" or request.path != TRACES_PATH:
            return json_reply(404, {"message": "not found"})
        return self._export(request)

    def _export(self, request: ReceivedRequest) -> Reply:
        body = request.body  # the receiver already inflated a gzip body, as Langfuse does
        content_type = request.headers.get("content-type", "").lower()
        if "application/json" not in content_type and "application/x-protobuf" not in content_type:
            return json_reply(400, {"error": "Invalid content type"})
        try:
            export = parse(body, content_type)
        except InvalidOtlpBody:
            return json_reply(400, {"error": "Failed to parse OTel Trace"})
        version = request.headers.get("x-langfuse-ingestion-version")
        if version is not None and (not version.isdigit() or int(version) > 4):
            return json_reply(
                400, {"error": f'Unsupported x-langfuse-ingestion-version: "{version}".'}
            )
        if not export.resource_spans:
            return json_reply(200, {})
        with self._lock:
            self.ingestion_versions.append(version)
            for resource_spans in export.resource_spans:
                resource = attribute_dict(resource_spans.resource.attributes)
                for span in (s for scope in resource_spans.scope_spans for s in scope.spans):
                    if len(span.trace_id) != 16 or len(span.span_id) != 8:
                        self.invalid_spans += 1
                        continue
                    self.observations.append(observation(span, resource))
        return json_reply(200, {"id": "job-1"})


def _prefixed(attrs: dict[str, Any], prefix: str) -> dict[str, Any]:
    # As `extractMetadata`: `<prefix>.<key>` attributes become `metadata[key]`.
    return {
        key[len(prefix) + 1 :]: value
        for key, value in attrs.items()
        if key.startswith(prefix + ".")
    }


def _json_or_text(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value
