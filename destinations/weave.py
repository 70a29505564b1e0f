"""W&B Weave via its OTLP endpoint: GenAI semantic conventions plus Weave's keys.

| trace | Weave call (OTLP attribute) |
| --- | --- |
| `entity` / `project` config | resource `wandb.entity` / `wandb.project` (routing) |
| `trace_id` | trace (OTLP trace id); original in `broadcast.trace.id` and `openrouter_trace_id` |
| `trace_name` / `span_name` / `generation_name` | op name (span name) and `wandb.display_name` |
| `parent_span_id` (16 hex) | parent call of our root call (else `broadcast.parent_span_id`) |
| `user` | `user_id` in `wandb.attributes` (and `user.id`) |
| `session_id` | `session_id` in `wandb.attributes`, thread `wandb.thread_id`, `session.id` |
| other `trace` keys | keys of `wandb.attributes` (JSON; never beside dotted attribute names) |
| provider | `llm.provider` (what Weave reads for the provider; OpenInference's values) |
| reasoning tokens | also `gen_ai.usage.reasoning_tokens` (the name Weave extracts) |
| model, usage, messages | `gen_ai.*` as in `otlp/genai.py` (root: previews) |
| cost (USD) | `wandb.attributes.cost` and `broadcast.cost.*` (Weave reads no cost key) |

`wandb.attributes` is Weave's hook whose keys become the call's attributes
(`weave/trace_server/opentelemetry/constants.py`, `WB_KEYS`); the caller's keys go there,
under ours, so a key such as `gen_ai.request.model` cannot pose as an attribute.

Auth: `wandb-api-key` header (current docs). Weave documents no credential check, so
Test Connection posts one marked span (`otlp/exporter.py`), 401/403 read as rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import fields, validate

from destinations.base import ConfigSchema
from destinations.config_fields import secret_field, url_field
from destinations.json_body import json_text
from destinations.otlp.encoding import Encoding
from destinations.otlp.exporter import OtlpDestination
from destinations.otlp.genai import genai_attributes
from destinations.otlp.openinference import llm_provider
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
    values: dict[str, Any] = genai_attributes(trace, span)
    ours: dict[str, str | dict[str, float] | None] = {
        "user_id": trace.end_user,
        "session_id": trace.session_id,
        "openrouter_trace_id": trace.metadata.trace_id,
    }
    if span.level is Level.GENERATION:
        ours["cost"] = _cost(trace)
    values.update(
        {
            "wandb.display_name": span.name,
            "wandb.thread_id": trace.session_id,
            "wandb.attributes": json_text(
                {**trace.metadata.extra, **{k: v for k, v in ours.items() if v is not None}}
            ),
            "llm.provider": llm_provider(trace.provider),
        }
    )
    if span.level is Level.GENERATION:
        values["gen_ai.usage.reasoning_tokens"] = trace.usage.reasoning_tokens
    return values


def _cost(trace: Trace) -> dict[str, float] | None:
    cost = trace.cost
    pairs = (("input", cost.input), ("output", cost.output), ("total", cost.total))
    known = {key: value for key, value in pairs if value is not None}
    return known or None


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
