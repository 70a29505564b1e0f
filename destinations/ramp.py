"""Ramp (AI usage): OTLP/HTTP JSON spans with GenAI conventions and the request's cost.

| trace | Ramp (OTLP attributes; `otlp/spans.py`, `otlp/openrouter_genai.py`) |
| --- | --- |
| `trace_id` | trace id (derived unless already 32 hex), original in `broadcast.trace.id` |
| `trace_name` / `span_name` / `generation_name` | span `name`s |
| `parent_span_id` (16 hex) | the root's `parentSpanId` (else kept in `broadcast.parent_span_id`) |
| `user` / `session_id` | `user.id` / `session.id` (+ `gen_ai.conversation.id`) |
| other `trace` keys | `trace.metadata.<key>` |
| model, provider, usage, messages | `gen_ai.*` (OTel GenAI conventions) |
| total tokens | `gen_ai.usage.total_tokens` |
| cost (USD, the gateway's) | `gen_ai.usage.cost` (total) and `broadcast.cost.total` / `.input` / |
|  | `.output`: no convention names cost, and Ramp's reader is not public (unverified) |

Where and how (**unverified**: Ramp publishes neither; OpenRouter documents only the base
URL and an API key generated in Ramp's OpenRouter integration):

- URL: `{base_url}/v1/traces`, `base_url` default
  `https://api.ramp.com/developer/v1/ai-usage/openrouter` (OpenRouter's default);
- auth: `Authorization: Bearer <api_key>`;
- OTLP JSON (what OpenRouter sends its OTLP destinations), not compressed.

Test Connection posts one marked span (`otlp/exporter.py`); 401/403 is rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from destinations.base import ConfigSchema
from destinations.config_fields import custom_headers_field, secret_field, url_field
from destinations.otlp.encoding import Encoding
from destinations.otlp.exporter import OtlpDestination
from destinations.otlp.openrouter_genai import openrouter_genai_attributes
from destinations.otlp.spans import PlannedSpan
from destinations.registry import register
from destinations.trace import Trace
from destinations.transport import join_url

DEFAULT_BASE_URL = "https://api.ramp.com/developer/v1/ai-usage/openrouter"
TRACES_PATH = "/v1/traces"
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "content-encoding", "authorization", "x-test-connection"}
)


class RampConfig(ConfigSchema):
    api_key = secret_field(max_length=1024)
    base_url = url_field(load_default=DEFAULT_BASE_URL)
    headers = custom_headers_field(RESERVED_HEADERS)


@register
class RampDestination(OtlpDestination):
    slug = "ramp"
    display_name = "Ramp"
    config_schema = RampConfig
    encoding = Encoding.JSON

    def traces_url(self) -> str:
        return join_url(self.config.get("base_url") or DEFAULT_BASE_URL, TRACES_PATH)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config['api_key']}"}

    def span_attributes(self, trace: Trace, span: PlannedSpan) -> Mapping[str, Any]:
        return openrouter_genai_attributes(trace, span)

    def rejected_message(self) -> str:
        return "Ramp rejected the API key"
