"""Arize Phoenix (self-hosted or Phoenix Cloud): OTLP/HTTP protobuf with OpenInference.

| trace | Phoenix (see `otlp/openinference.py` for the attribute table) |
| --- | --- |
| `project_name` config | resource `openinference.project.name` (the Phoenix project) |
| `trace_id` | trace id (derived unless already 32 hex), original in `broadcast.trace.id` |
| `trace_name` / `span_name` | CHAIN spans, named so |
| `generation_name` (default `chat {model}`) | the LLM span |
| `parent_span_id` (16 hex) | parent of our root span (else kept in `broadcast.parent_span_id`) |
| `session_id` / `user` | `session.id` / `user.id` (Phoenix sessions come from root spans) |
| other `trace` keys | `metadata` (Phoenix shows them as `metadata.<key>`) |

Phoenix accepts only protobuf on `/v1/traces` (JSON gets 415), gzip allowed, and inserts
spans `ON CONFLICT (span_id) DO NOTHING`, so our deterministic ids make retries no-ops.
Auth: `Authorization: Bearer <api_key>` when the server has auth on (Phoenix Cloud).
Test Connection: `GET /v1/projects?limit=1`, an authenticated read that creates nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import fields, validate

from destinations.base import (
    ConfigSchema,
    ConnectionCheck,
    DeliveryContext,
    check_from_transport,
)
from destinations.config_fields import url_field
from destinations.otlp.encoding import Encoding
from destinations.otlp.exporter import OtlpDestination
from destinations.otlp.openinference import openinference_attributes, resource_attributes
from destinations.otlp.spans import PlannedSpan
from destinations.registry import register
from destinations.trace import Trace
from destinations.transport import HttpRequest, join_url

DEFAULT_PROJECT = "default"


class PhoenixConfig(ConfigSchema):
    endpoint = url_field(required=True)
    api_key = fields.String(load_default=None, allow_none=True, metadata={"secret": True})
    project_name = fields.String(
        load_default=DEFAULT_PROJECT, validate=validate.Length(min=1, max=256)
    )


@register
class PhoenixDestination(OtlpDestination):
    slug = "phoenix"
    display_name = "Arize Phoenix"
    config_schema = PhoenixConfig
    encoding = Encoding.PROTOBUF
    gzip = True

    def traces_url(self) -> str:
        return join_url(self.config["endpoint"], "/v1/traces")

    def auth_headers(self) -> dict[str, str]:
        api_key = self.config.get("api_key")
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def resource_attributes(self) -> dict[str, Any]:
        return resource_attributes(self.config.get("project_name") or DEFAULT_PROJECT)

    def span_attributes(self, trace: Trace, span: PlannedSpan) -> Mapping[str, Any]:
        return openinference_attributes(trace, span)

    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        """An authenticated read of the projects list: proves the endpoint and the key."""
        url = join_url(self.config["endpoint"], "/v1/projects?limit=1")
        result = self.transport.send(
            HttpRequest("GET", url, {"Accept": "application/json", **self.auth_headers()})
        )
        return check_from_transport(result, rejected_message=self.rejected_message())
