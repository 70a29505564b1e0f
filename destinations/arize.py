"""Arize AX: OTLP/HTTP protobuf with OpenInference attributes.

| trace | Arize AX (see `otlp/openinference.py` for the attribute table) |
| --- | --- |
| `model_id` config ("Project Name") | resource `openinference.project.name` and legacy `model_id` |
| `trace_id` | trace id (derived unless already 32 hex), original in `broadcast.trace.id` |
| `trace_name` / `span_name` | CHAIN spans, named so |
| `generation_name` (default `chat {model}`) | the LLM span |
| `parent_span_id` (16 hex) | parent of our root span (else kept in `broadcast.parent_span_id`) |
| `session_id` / `user` | `session.id` / `user.id` |
| other `trace` keys | `metadata` (JSON), a `tags` list also as `tag.tags` |

Auth headers (as arize-otel sends them): `authorization: <api_key>`,
`arize-space-id: <space_key>`, `arize-interface: otel`. Arize documents no credential
check, so Test Connection posts one marked span (`otlp/exporter.py`); 401/403 is
rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import fields, validate

from destinations.base import ConfigSchema
from destinations.config_fields import secret_field, url_field
from destinations.otlp.encoding import Encoding
from destinations.otlp.exporter import OtlpDestination
from destinations.otlp.openinference import openinference_attributes, resource_attributes
from destinations.otlp.spans import PlannedSpan
from destinations.registry import register
from destinations.trace import Trace
from destinations.transport import join_url

DEFAULT_BASE_URL = "https://otlp.arize.com"


class ArizeConfig(ConfigSchema):
    api_key = secret_field()
    space_key = fields.String(required=True, validate=validate.Length(min=1))
    model_id = fields.String(required=True, validate=validate.Length(min=1, max=256))
    base_url = url_field(load_default=DEFAULT_BASE_URL)


@register
class ArizeDestination(OtlpDestination):
    slug = "arize"
    display_name = "Arize AX"
    config_schema = ArizeConfig
    encoding = Encoding.PROTOBUF
    gzip = True

    def traces_url(self) -> str:
        return join_url(self.config.get("base_url") or DEFAULT_BASE_URL, "/v1/traces")

    def auth_headers(self) -> dict[str, str]:
        return {
            "authorization": self.config["api_key"],
            "arize-space-id": self.config["space_key"],
            "arize-interface": "otel",
        }

    def resource_attributes(self) -> dict[str, Any]:
        # Older Arize routed by a `model_id` resource attribute; current Arize by the
        # OpenInference project name. Both carry the configured project.
        return {**resource_attributes(self.config["model_id"]), "model_id": self.config["model_id"]}

    def span_attributes(self, trace: Trace, span: PlannedSpan) -> Mapping[str, Any]:
        return openinference_attributes(trace, span)
