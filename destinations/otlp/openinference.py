"""The OpenInference dialect (Arize AX, Phoenix), names as in `openinference.semconv`.

On every span:

| trace | attribute |
| --- | --- |
| level | `openinference.span.kind`: CHAIN (trace, span), LLM (generation) |
| `session_id` / `user` | `session.id` / `user.id` |
| other `trace` keys | `metadata` (one JSON object) |
| `trace.tags` (list of strings) | `tag.tags` |

On the CHAIN spans: `input.value` = the last user message, `output.value` = the answer
(content). On the LLM span:

| trace | attribute |
| --- | --- |
| input messages / first output | `input.value` (JSON) / `output.value` (content) |
| `model` / `provider` | `llm.model_name` / `llm.provider` (OpenInference's values, see below) |
| model vendor prefix (`openai/...`) | `llm.system` (OpenInference's values where one fits) |
| sampling parameters, `tool_choice` | `llm.invocation_parameters` (JSON) |
| input messages | `llm.input_messages.{i}.message.*` (content) |
| output messages | `llm.output_messages.{i}.message.*` (content) |
| tool calls | `...message.tool_calls.{j}.tool_call.id` / `.function.*` (content) |
| `tools` | `llm.tools.{i}.tool.json_schema` |
| first finish reason | `llm.finish_reason` |
| input / output / total tokens | `llm.token_count.prompt` / `completion` / `total` |
| cached / cache-write tokens | `llm.token_count.prompt_details.cache_read` / `cache_write` |
| reasoning tokens | `llm.token_count.completion_details.reasoning` |
| cost input / output / total | `llm.cost.prompt` / `completion` / `total` (USD) |

The project is the resource attribute `openinference.project.name`. Content attributes
are absent when the trace has no messages (privacy mode). `llm.provider` and `llm.system`
use `OpenInferenceLLMProviderValues` / `OpenInferenceLLMSystemValues` (`aws`, `google`,
`mistralai`, `vertexai`, ...) where the gateway's name maps to one, else the name
lower-cased with `_` for spaces. The CHAIN spans' `input.value` / `output.value` are
previews bounded like `previews.py`'s.
"""

from __future__ import annotations

from typing import Any

from destinations.json_body import json_text
from destinations.otlp.spans import Level, PlannedSpan
from destinations.previews import input_preview, output_preview
from destinations.trace import Message, Trace

SPAN_KIND = "openinference.span.kind"
PROJECT_NAME = "openinference.project.name"
CHAIN, LLM = "CHAIN", "LLM"
TEXT_MIME, JSON_MIME = "text/plain", "application/json"
TAGS_KEY = "tags"

# Prefixes of the attributes privacy mode must remove (tests check none is left).
CONTENT_PREFIXES = ("input.value", "output.value", "llm.input_messages.", "llm.output_messages.")


# Gateway provider names → `OpenInferenceLLMProviderValues`.
PROVIDERS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "cohere": "cohere",
    "mistral": "mistralai",
    "google": "google",
    "google vertex": "google",
    "google ai studio": "google",
    "azure": "azure",
    "amazon bedrock": "aws",
    "xai": "xai",
    "deepseek": "deepseek",
    "groq": "groq",
    "fireworks": "fireworks",
    "moonshot ai": "moonshot",
    "cerebras": "cerebras",
    "perplexity": "perplexity",
    "together": "together",
}
# Model vendor prefixes → `OpenInferenceLLMSystemValues`.
SYSTEMS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "cohere": "cohere",
    "mistralai": "mistralai",
    "google": "vertexai",
}


def llm_provider(provider: str) -> str:
    """`llm.provider` for a gateway provider name (see `PROVIDERS`)."""
    key = provider.strip().lower()
    return PROVIDERS.get(key, key.replace(" ", "_"))


def llm_system(model: str) -> str | None:
    """`llm.system` from the model's vendor prefix (`openai/gpt-4o`); None without one."""
    if "/" not in model:
        return None
    prefix = model.split("/", 1)[0].strip().lower()
    return SYSTEMS.get(prefix, prefix)


def openinference_attributes(trace: Trace, span: PlannedSpan) -> dict[str, Any]:
    """The OpenInference dialect (see the module table). Pure."""
    values: dict[str, Any] = {
        SPAN_KIND: LLM if span.level is Level.GENERATION else CHAIN,
        "session.id": trace.session_id,
        "user.id": trace.end_user,
    }
    extra = trace.metadata.extra
    if extra:
        values["metadata"] = json_text(extra)
    tags = extra.get(TAGS_KEY)
    if isinstance(tags, list) and tags and all(isinstance(tag, str) for tag in tags):
        values["tag.tags"] = tags
    if span.level is Level.GENERATION:
        values.update(_llm_attributes(trace))
    else:
        values.update(_chain_io(trace))
    return values


def resource_attributes(project_name: str) -> dict[str, str]:
    """The resource attribute Arize and Phoenix route spans to a project by."""
    return {PROJECT_NAME: project_name}


def _chain_io(trace: Trace) -> dict[str, Any]:
    """The turn as a person reads it: the last user message in, the answer out."""
    values: dict[str, Any] = {}
    question, answer = input_preview(trace), output_preview(trace)
    if question is not None:
        values.update({"input.value": question, "input.mime_type": TEXT_MIME})
    if answer is not None:
        values.update({"output.value": answer, "output.mime_type": TEXT_MIME})
    return values


def _output_value(trace: Trace) -> dict[str, Any]:
    if not trace.output_messages:
        return {}
    first = trace.output_messages[0]
    if first.content and not first.tool_calls:
        return {"output.value": first.content, "output.mime_type": TEXT_MIME}
    return {"output.value": json_text(_plain_message(first)), "output.mime_type": JSON_MIME}


def _llm_attributes(trace: Trace) -> dict[str, Any]:
    usage, cost = trace.usage, trace.cost
    values: dict[str, Any] = {
        "llm.model_name": trace.model,
        "llm.provider": llm_provider(trace.provider),
        "llm.system": llm_system(trace.model),
        "llm.finish_reason": trace.finish_reasons[0] if trace.finish_reasons else None,
        "llm.token_count.prompt": usage.input_tokens,
        "llm.token_count.completion": usage.output_tokens,
        "llm.token_count.total": usage.total_tokens,
        "llm.token_count.prompt_details.cache_read": usage.cached_input_tokens,
        "llm.token_count.prompt_details.cache_write": usage.cache_write_input_tokens,
        "llm.token_count.completion_details.reasoning": usage.reasoning_tokens,
        "llm.cost.prompt": cost.input,
        "llm.cost.completion": cost.output,
        "llm.cost.total": cost.total,
    }
    parameters = dict(trace.model_parameters)
    if trace.tool_choice is not None:
        parameters["tool_choice"] = trace.tool_choice
    if parameters:
        values["llm.invocation_parameters"] = json_text(parameters)
    for index, tool in enumerate(trace.tools):
        values[f"llm.tools.{index}.tool.json_schema"] = json_text(tool)
    for index, message in enumerate(trace.input_messages):
        values.update(_message_attributes(f"llm.input_messages.{index}", message))
    for index, message in enumerate(trace.output_messages):
        values.update(_message_attributes(f"llm.output_messages.{index}", message))
    if trace.input_messages:
        values["input.value"] = json_text(
            {"messages": [_plain_message(m) for m in trace.input_messages]}
        )
        values["input.mime_type"] = JSON_MIME
    values.update(_output_value(trace))
    return values


def _message_attributes(prefix: str, message: Message) -> dict[str, Any]:
    values: dict[str, Any] = {
        f"{prefix}.message.role": message.role,
        f"{prefix}.message.content": message.content,
        f"{prefix}.message.name": message.name,
        f"{prefix}.message.tool_call_id": message.tool_call_id,
    }
    for index, call in enumerate(message.tool_calls):
        call_prefix = f"{prefix}.message.tool_calls.{index}.tool_call"
        values[f"{call_prefix}.id"] = call.id or None
        values[f"{call_prefix}.function.name"] = call.name
        values[f"{call_prefix}.function.arguments"] = call.arguments
    return values


def _plain_message(message: Message) -> dict[str, Any]:
    """A message in the OpenAI chat shape, for `input.value` / `output.value`."""
    shaped: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        shaped["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id:
        shaped["tool_call_id"] = message.tool_call_id
    if message.name:
        shaped["name"] = message.name
    return shaped
