"""Grafana Cloud, New Relic and Dynatrace: OTLP endpoint presets with their auth headers.

All three speak the GenAI dialect exactly as the generic collector does (`otlp/genai.py`):

| trace | attribute |
| --- | --- |
| `trace_name` / `span_name` / `generation_name` | span `name` |
| `trace_id` / `parent_span_id` | `traceId` / root's `parentSpanId` (see `otlp/spans.py`) |
| `user` / `session_id` | `user.id` / `session.id` |
| other `trace` keys | `broadcast.metadata.<key>` |
| model, usage, messages | `gen_ai.*` (root and span: previews) |
| total tokens, cost (USD) | `broadcast.usage.total_tokens`, `broadcast.cost.*` (no convention) |

- `grafana`: `{base_url}/otlp/v1/traces`, OTLP JSON,
  `Authorization: Basic base64(instance_id:api_key)`;
- `newrelic`: `https://otlp.nr-data.net/v1/traces` (EU `otlp.eu01.nr-data.net`, or the
  full `endpoint` given), protobuf, `api-key: <license_key>`;
- `dynatrace`: `{environment_url}/api/v2/otlp/v1/traces`, protobuf only (JSON gets 415),
  `Authorization: Api-Token <api_token>`.

Each Test Connection posts one marked span (`otlp/exporter.py`); 401/403 is rejected.
"""

from __future__ import annotations

import base64

from marshmallow import fields, validate

from destinations.base import ConfigSchema
from destinations.config_fields import secret_field, url_field
from destinations.otlp.encoding import Encoding
from destinations.otlp.exporter import OtlpDestination
from destinations.registry import register
from destinations.transport import join_url

NEW_RELIC_ENDPOINTS = {
    "us": "https://otlp.nr-data.net/v1/traces",
    "eu": "https://otlp.eu01.nr-data.net/v1/traces",
}
# New Relic caps a payload at about 1 MB; stay under it before compression.
NEW_RELIC_MAX_BODY_BYTES = 1_000_000


class GrafanaConfig(ConfigSchema):
    base_url = url_field(required=True)
    instance_id = fields.String(required=True, validate=validate.Regexp(r"^\d+$"))
    api_key = secret_field()


class NewRelicConfig(ConfigSchema):
    license_key = secret_field()
    region = fields.String(load_default="us", validate=validate.OneOf(sorted(NEW_RELIC_ENDPOINTS)))
    # Overrides the region's endpoint: FedRAMP (`https://gov-otlp.nr-data.net/v1/traces`),
    # an infinite-tracing trace observer, or a proxy in front of New Relic.
    endpoint = url_field(load_default=None, allow_none=True)


class DynatraceConfig(ConfigSchema):
    environment_url = url_field(required=True)
    api_token = secret_field()


@register
class GrafanaDestination(OtlpDestination):
    slug = "grafana"
    display_name = "Grafana Cloud"
    config_schema = GrafanaConfig
    encoding = Encoding.JSON
    gzip = True

    def traces_url(self) -> str:
        base = self.config["base_url"].rstrip("/")
        # The OTLP gateway lives under /otlp; accept a base URL given with or without it.
        if not base.endswith("/otlp"):
            base += "/otlp"
        return join_url(base, "/v1/traces")

    def auth_headers(self) -> dict[str, str]:
        pair = f"{self.config['instance_id']}:{self.config['api_key']}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}


@register
class NewRelicDestination(OtlpDestination):
    slug = "newrelic"
    display_name = "New Relic"
    config_schema = NewRelicConfig
    encoding = Encoding.PROTOBUF
    gzip = True
    max_body_bytes = NEW_RELIC_MAX_BODY_BYTES

    def traces_url(self) -> str:
        return self.config.get("endpoint") or NEW_RELIC_ENDPOINTS[self.config.get("region") or "us"]

    def auth_headers(self) -> dict[str, str]:
        return {"api-key": self.config["license_key"]}


@register
class DynatraceDestination(OtlpDestination):
    slug = "dynatrace"
    display_name = "Dynatrace"
    config_schema = DynatraceConfig
    encoding = Encoding.PROTOBUF  # Dynatrace answers JSON with 415
    gzip = True

    def traces_url(self) -> str:
        return join_url(self.config["environment_url"], "/api/v2/otlp/v1/traces")

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Api-Token {self.config['api_token']}"}
