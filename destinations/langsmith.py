"""LangSmith via its OTLP endpoint: GenAI semantic conventions plus LangSmith's own keys.

| trace | LangSmith run (OTLP attribute) |
| --- | --- |
| `trace_id` | trace (OTLP trace id; original in `broadcast.trace.id`) |
| `trace_name` / `span_name` / `generation_name` | run name (span name, `langsmith.trace.name`) |
| level | run type `langsmith.span.kind`: generation → `llm`, trace / span → `chain` |
| `parent_span_id` (16 hex) | parent run of our root run (else `broadcast.parent_span_id`) |
| `project` config | header `Langsmith-Project`, `langsmith.trace.session_name` |
| `user` / `session_id` | `langsmith.metadata.user_id` / `langsmith.metadata.session_id` (thread) |
| other `trace` keys | `langsmith.metadata.<key>`; a `tags` list → `langsmith.span.tags` |
| provider | `gen_ai.system` (what LangSmith reads for the provider) |
| input / output messages | `gen_ai.prompt` / `gen_ai.completion` (JSON), and `gen_ai.*` |
| cache / reasoning tokens | `gen_ai.usage.input_token_details` / `output_token_details` (JSON) |
| usage and the gateway's cost (USD) | `langsmith.usage_metadata` (JSON: tokens, `input_cost`, |
| | `output_cost`, `total_cost`: LangSmith shows these instead of pricing the run itself) |
| model, usage | `gen_ai.*` as in `otlp/genai.py` |
| root / `span_name` span | previews: `gen_ai.prompt` / `gen_ai.completion`, `gen_ai.*.messages` |

Auth: `x-api-key`, and `X-Tenant-Id` for an org-scoped key (`workspace_id`). Test
Connection reads `GET /sessions?name=<project>&limit=1`, which proves the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from marshmallow import fields, validate

from destinations.base import (
    ConfigSchema,
    ConnectionCheck,
    DeliveryContext,
    check_from_transport,
)
from destinations.config_fields import secret_field, url_field
from destinations.json_body import json_text
from destinations.otlp.encoding import Encoding
from destinations.otlp.exporter import OtlpDestination
from destinations.otlp.genai import genai_attributes, provider_name
from destinations.otlp.spans import Level, PlannedSpan
from destinations.previews import input_preview, output_preview
from destinations.registry import register
from destinations.trace import Message, Trace
from destinations.transport import HttpRequest, join_url

DEFAULT_ENDPOINT = "https://api.smith.langchain.com"
DEFAULT_PROJECT = "default"
METADATA_PREFIX = "langsmith.metadata."


class LangSmithConfig(ConfigSchema):
    api_key = secret_field()
    project = fields.String(load_default=DEFAULT_PROJECT, validate=validate.Length(min=1, max=256))
    endpoint = url_field(load_default=DEFAULT_ENDPOINT)
    workspace_id = fields.String(load_default=None, allow_none=True)


def langsmith_attributes(trace: Trace, span: PlannedSpan, project: str) -> dict[str, Any]:
    """Pure: the GenAI dialect plus LangSmith's run keys (see the module table)."""
    values = genai_attributes(trace, span)
    values.update(
        {
            "langsmith.span.kind": "llm" if span.level is Level.GENERATION else "chain",
            "langsmith.trace.name": span.name,
            "langsmith.trace.session_name": project,
            METADATA_PREFIX + "user_id": trace.end_user,
            METADATA_PREFIX + "session_id": trace.session_id,
        }
    )
    for key, value in trace.metadata.extra.items():
        values[METADATA_PREFIX + key] = value
    tags = trace.metadata.extra.get("tags")
    if isinstance(tags, list) and tags and all(isinstance(tag, str) for tag in tags):
        values["langsmith.span.tags"] = ",".join(tags)
    if span.level is Level.GENERATION:
        values["gen_ai.system"] = provider_name(trace.provider)
        values.update(_usage_details(trace))
        values["langsmith.usage_metadata"] = json_text(usage_metadata(trace))
        values.update(_prompt_and_completion(trace))
    else:
        values.update(_preview_prompt_and_completion(trace))
    return values


def _preview_prompt_and_completion(trace: Trace) -> dict[str, str]:
    """The chain runs' inputs/outputs: bounded previews (`previews.py`) in the same shape."""
    values: dict[str, str] = {}
    question, answer = input_preview(trace), output_preview(trace)
    if question is not None:
        values["gen_ai.prompt"] = json_text({"messages": [{"role": "user", "content": question}]})
    if answer is not None:
        values["gen_ai.completion"] = json_text(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
        )
    return values


def usage_metadata(trace: Trace) -> dict[str, Any]:
    """LangSmith's `usage_metadata` for the LLM run, with the billed cost when known."""
    usage, cost = trace.usage, trace.cost
    metadata: dict[str, Any] = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }
    for key, value in (
        ("input_cost", cost.input),
        ("output_cost", cost.output),
        ("total_cost", cost.total),
    ):
        if value is not None:
            metadata[key] = value
    return metadata


def _usage_details(trace: Trace) -> dict[str, str]:
    usage = trace.usage
    values: dict[str, str] = {}
    input_details = {
        key: value
        for key, value in (
            ("cache_read", usage.cached_input_tokens),
            ("cache_creation", usage.cache_write_input_tokens),
        )
        if value is not None
    }
    if input_details:
        values["gen_ai.usage.input_token_details"] = json_text(input_details)
    if usage.reasoning_tokens is not None:
        values["gen_ai.usage.output_token_details"] = json_text(
            {"reasoning": usage.reasoning_tokens}
        )
    return values


def _prompt_and_completion(trace: Trace) -> dict[str, str]:
    """LangSmith's run inputs/outputs, in the OpenAI chat shape it renders as a chat."""
    values: dict[str, str] = {}
    if trace.input_messages:
        values["gen_ai.prompt"] = json_text(
            {"messages": [_openai_message(m) for m in trace.input_messages]}
        )
    if trace.output_messages:
        choices = [
            {
                "index": index,
                "message": _openai_message(message),
                "finish_reason": trace.finish_reasons[index]
                if index < len(trace.finish_reasons)
                else None,
            }
            for index, message in enumerate(trace.output_messages)
        ]
        values["gen_ai.completion"] = json_text({"choices": choices})
    return values


def _openai_message(message: Message) -> dict[str, Any]:
    shaped: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        shaped["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id:
        shaped["tool_call_id"] = message.tool_call_id
    return shaped


@register
class LangSmithDestination(OtlpDestination):
    slug = "langsmith"
    display_name = "LangSmith"
    config_schema = LangSmithConfig
    encoding = Encoding.PROTOBUF

    @property
    def project(self) -> str:
        """The LangSmith project (tracing session) runs are sent to."""
        return self.config.get("project") or DEFAULT_PROJECT

    def _base(self) -> str:
        return self.config.get("endpoint") or DEFAULT_ENDPOINT

    def traces_url(self) -> str:
        return join_url(self._base(), "/otel/v1/traces")

    def auth_headers(self) -> dict[str, str]:
        headers = {"x-api-key": self.config["api_key"], "Langsmith-Project": self.project}
        if self.config.get("workspace_id"):
            headers["X-Tenant-Id"] = self.config["workspace_id"]
        return headers

    def span_attributes(self, trace: Trace, span: PlannedSpan) -> Mapping[str, Any]:
        return langsmith_attributes(trace, span, self.project)

    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        """Look the project up by name: proves the key (and workspace) without writing."""
        query = urlencode({"name": self.project, "limit": 1})
        headers = {
            key: value for key, value in self.auth_headers().items() if key != "Langsmith-Project"
        }
        result = self.transport.send(
            HttpRequest("GET", join_url(self._base(), f"/sessions?{query}"), headers)
        )
        return check_from_transport(result, rejected_message=self.rejected_message())
