"""OpenTelemetry Collector (or any OTLP/HTTP traces receiver): GenAI semantic conventions.

| trace | OTLP (see `otlp/spans.py` and `otlp/genai.py` for the full tables) |
| --- | --- |
| `trace_id` | `traceId` (derived unless already 32 hex), original in `broadcast.trace.id` |
| `trace_name` / `span_name` / `generation_name` | span `name` of root / intermediate / generation |
| `parent_span_id` (16 hex) | `parentSpanId` of our root (else kept in `broadcast.parent_span_id`) |
| `user` / `session_id` | `user.id` / `session.id` (+ `gen_ai.conversation.id`) |
| other `trace` keys | `broadcast.metadata.<key>` |
| model, usage, messages | `gen_ai.*` (root and span: previews) |
| total tokens, cost (USD) | `broadcast.usage.total_tokens`, `broadcast.cost.*` (no convention) |

Config: `endpoint` is the full `/v1/traces` URL; `headers` (secret) are sent as given,
e.g. `Authorization: Bearer …`; `encoding` json (default) or protobuf; `compression`
none (default) or gzip. Test Connection posts one marked span (`otlp/exporter.py`).
"""

from __future__ import annotations

from marshmallow import fields, validate

from destinations.base import ConfigSchema
from destinations.config_fields import custom_headers_field, url_field
from destinations.otlp.encoding import Encoding
from destinations.otlp.exporter import OtlpDestination
from destinations.registry import register

# Headers the exporter sets itself; a user header of the same name would corrupt the body.
RESERVED_HEADERS = frozenset({"content-type", "content-encoding", "content-length"}) | {
    "x-test-connection"  # marks Test Connection's probes only
}


class OtelCollectorConfig(ConfigSchema):
    endpoint = url_field(required=True)
    headers = custom_headers_field(RESERVED_HEADERS)
    encoding = fields.String(
        load_default=Encoding.JSON.value, validate=validate.OneOf([e.value for e in Encoding])
    )
    compression = fields.String(load_default="none", validate=validate.OneOf(["none", "gzip"]))


@register
class OtelCollectorDestination(OtlpDestination):
    slug = "otel-collector"
    display_name = "OpenTelemetry Collector"
    config_schema = OtelCollectorConfig

    def traces_url(self) -> str:
        endpoint: str = self.config["endpoint"]
        return endpoint

    def auth_headers(self) -> dict[str, str]:
        return dict(self.config.get("headers") or {})

    def wire_encoding(self) -> Encoding:
        return Encoding(self.config.get("encoding", Encoding.JSON.value))

    def use_gzip(self) -> bool:
        return self.config.get("compression") == "gzip"

    def rejected_message(self) -> str:
        return "the collector rejected the credentials in the configured headers"
