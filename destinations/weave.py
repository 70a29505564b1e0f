"""W&B Weave via its OTLP endpoint: GenAI semantic conventions plus Weave's keys.

| trace | Weave call (OTLP attribute) |
| --- | --- |
| `entity` / `project` config | resource `wandb.entity` / `wandb.project` (routing) |
| `trace_id` | trace (OTLP trace id); original in `broadcast.trace.id` and `openrouter_trace_id` |
| `trace_name` / `span_name` / `generation_name` | op name (span name) and `wandb.display_name` |
| `parent_span_id` | parent call (parent of our topmost span) |
| `user` | `user_id` attribute (and `user.id`) |
| `session_id` | `session_id` attribute, thread `wandb.thread_id`, `gen_ai.conversation.id` |
| other `trace` keys | call attributes under their own names (and `trace.metadata.<key>`) |
| reasoning tokens | also `gen_ai.usage.reasoning_tokens` (the name Weave extracts) |
| model, usage, cost, messages | `gen_ai.*` as in `otlp/genai.py` |

Auth: `wandb-api-key` header (current docs). Weave documents no credential check, so
Test Connection posts an empty export request and reads 401/403 as rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import fields, validate

from destinations.base import ConfigSchema
from destinations.config_fields import secret_field, url_field
from destinations.otlp.encoding import Encoding
from destinations.otlp.exporter import OtlpDestination
from destinations.otlp.genai import genai_attributes
from destinations.otlp.spans import Level, PlannedSpan
from destinations.registry import register
from destinations.trace import Trace
from destinations.transport import join_url

DEFAULT_BASE_URL = "https://trace.wandb.ai"


class WeaveConfig(ConfigSchema):
    api_key = secret_field()
    entity = fields.String(required=True, validate=validate.Length(min=1, max=256))
    project = fields.String(required=True, validate=validate.Length(min=1, max=256))
    base_url = url_field(load_default=DEFAULT_BASE_URL)


def weave_attributes(trace: Trace, span: PlannedSpan) -> dict[str, Any]:
    """Pure: the GenAI dialect plus Weave's call keys (see the module table)."""
    values: dict[str, Any] = dict(trace.metadata.extra)
    values.update(genai_attributes(trace, span))
    values.update(
        {
            "wandb.display_name": span.name,
            "wandb.thread_id": trace.session_id,
            "user_id": trace.end_user,
            "session_id": trace.session_id,
            "openrouter_trace_id": trace.metadata.trace_id,
        }
    )
    if span.level is Level.GENERATION:
        values["gen_ai.usage.reasoning_tokens"] = trace.usage.reasoning_tokens
    return values


@register
class WeaveDestination(OtlpDestination):
    slug = "weave"
    display_name = "W&B Weave"
    config_schema = WeaveConfig
    encoding = Encoding.PROTOBUF

    def traces_url(self) -> str:
        return join_url(self.config.get("base_url") or DEFAULT_BASE_URL, "/otel/v1/traces")

    def auth_headers(self) -> dict[str, str]:
        return {"wandb-api-key": self.config["api_key"]}

    def resource_attributes(self) -> dict[str, Any]:
        return {"wandb.entity": self.config["entity"], "wandb.project": self.config["project"]}

    def span_attributes(self, trace: Trace, span: PlannedSpan) -> Mapping[str, Any]:
        return weave_attributes(trace, span)
