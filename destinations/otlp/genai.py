"""The OpenTelemetry GenAI semantic-conventions dialect (current names, not the deprecated ones).

Only names the conventions define (checked against `opentelemetry-semantic-conventions`'
`_incubating.attributes.gen_ai_attributes`); what no convention covers (the total token
count, the gateway's billed cost) goes under `broadcast.`. A receiver that reads another
name for cost gets it in its own dialect (LangSmith: `langsmith.usage_metadata`).

On every span:

| trace | attribute |
| --- | --- |
| `session_id` | `session.id`, `gen_ai.conversation.id` |
| `user` | `user.id` |
| other `trace` keys | `broadcast.metadata.<key>` |

On the root and a `span_name` span: `gen_ai.input.messages` / `gen_ai.output.messages`
with one text message each, a bounded preview (`previews.py`; content). On the generation
span (prefix `gen_ai.` left out):

| trace | attribute |
| --- | --- |
| (constant `chat`) | `operation.name` |
| `provider` (well-known names mapped) | `provider.name` |
| `model` | `request.model`, `response.model` |
| request id | `response.id` |
| `finish_reasons` | `response.finish_reasons` |
| input / output tokens | `usage.input_tokens` / `usage.output_tokens` |
| total tokens | `broadcast.usage.total_tokens` (no convention) |
| cached input tokens | `usage.cache_read.input_tokens` |
| cache-write input tokens | `usage.cache_creation.input_tokens` |
| reasoning tokens | `usage.reasoning.output_tokens` |
| cost total / input / output (USD) | `broadcast.cost.total` / `.input` / `.output` (*) |
| sampling parameters | `request.temperature`, `.max_tokens`, `.top_p`, `.top_k`, ... |
| `stop` / `n` | `request.stop_sequences` / `request.choice.count` |
| `streamed` / time to first token | `request.stream` / `response.time_to_first_chunk` (s) |
| `tools` | `tool.definitions` (JSON) |
| input messages, system and developer too | `input.messages` (JSON; content) |
| output messages | `output.messages` (JSON with `finish_reason`; content) |
| error code | `error.type` (no prefix) |

(*) The gateway's billed cost; the conventions define no cost attribute.
System and developer messages stay in `input.messages` (the conventions say SHOULD for
chat history; `system_instructions` is for instructions given apart from it), so
receivers' chat views keep them. A message with no text and no tool call keeps one empty
text part rather than `"parts": []`.
Time to first chunk is sent for streamed requests only.
Content attributes are simply absent when the trace has no messages (privacy mode).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from destinations.json_body import json_text
from destinations.otlp.spans import Level, PlannedSpan, error_type
from destinations.previews import input_preview, output_preview
from destinations.trace import Message, ToolCall, Trace

INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
METADATA_PREFIX = "broadcast.metadata."

# Gateway provider names → the semconv's well-known `gen_ai.provider.name` values;
# anything else is lower-cased with spaces as underscores (custom values are allowed).
WELL_KNOWN_PROVIDERS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "amazon bedrock": "aws.bedrock",
    "azure": "azure.ai.openai",
    "google": "gcp.vertex_ai",
    "google vertex": "gcp.vertex_ai",
    "google ai studio": "gcp.gemini",
    "cohere": "cohere",
    "deepseek": "deepseek",
    "groq": "groq",
    "mistral": "mistral_ai",
    "perplexity": "perplexity",
    "xai": "x_ai",
}

# Request parameter → `gen_ai.request.*` name; `stop` and `n` need shaping (see below).
_PARAMETERS = {
    "temperature": "gen_ai.request.temperature",
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
}


# Chat roles → the conventions' roles (`developer` is OpenAI's newer name for `system`).
_ROLES = {"function": "tool", "developer": "system"}


def provider_name(provider: str) -> str:
    """`gen_ai.provider.name` for a gateway provider name (see `WELL_KNOWN_PROVIDERS`)."""
    key = provider.strip().lower()
    return WELL_KNOWN_PROVIDERS.get(key, key.replace(" ", "_"))


def genai_attributes(trace: Trace, span: PlannedSpan) -> dict[str, Any]:
    """The GenAI dialect (see the module table). Pure."""
    values = common_attributes(trace)
    if span.level is Level.GENERATION:
        values.update(generation_attributes(trace))
    else:
        values.update(preview_attributes(trace))
    return values


def preview_attributes(trace: Trace) -> dict[str, str]:
    """The request's input and output as one bounded text message each (root, span)."""
    values: dict[str, str] = {}
    question, answer = input_preview(trace), output_preview(trace)
    if question is not None:
        values[INPUT_MESSAGES] = json_text(
            [{"role": "user", "parts": [{"type": "text", "content": question}]}]
        )
    if answer is not None:
        values[OUTPUT_MESSAGES] = json_text(
            [
                {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": answer}],
                    "finish_reason": _finish_reason(trace, 0),
                }
            ]
        )
    return values


def common_attributes(trace: Trace) -> dict[str, Any]:
    """What every span carries: who, which session, and the caller's metadata."""
    values: dict[str, Any] = {
        "user.id": trace.end_user,
        "session.id": trace.session_id,
        "gen_ai.conversation.id": trace.session_id,
    }
    for key, value in trace.metadata.extra.items():
        values[METADATA_PREFIX + key] = value
    return values


def generation_attributes(trace: Trace) -> dict[str, Any]:
    """What only the generation span carries: model, usage, cost, parameters, content."""
    usage, cost = trace.usage, trace.cost
    values: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider_name(trace.provider),
        "gen_ai.request.model": trace.model,
        "gen_ai.response.model": trace.model,
        "gen_ai.response.id": trace.request_id,
        "gen_ai.response.finish_reasons": list(trace.finish_reasons) or None,
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "broadcast.usage.total_tokens": usage.total_tokens,
        "gen_ai.usage.cache_read.input_tokens": usage.cached_input_tokens,
        "gen_ai.usage.cache_creation.input_tokens": usage.cache_write_input_tokens,
        "gen_ai.usage.reasoning.output_tokens": usage.reasoning_tokens,
        "broadcast.cost.total": cost.total,
        "broadcast.cost.input": cost.input,
        "broadcast.cost.output": cost.output,
        "gen_ai.request.stream": trace.streamed,
        "gen_ai.tool.definitions": json_text(list(trace.tools)) if trace.tools else None,
    }
    if trace.streamed and trace.time_to_first_token_ms is not None:
        values["gen_ai.response.time_to_first_chunk"] = trace.time_to_first_token_ms / 1000.0
    values.update(request_parameters(trace.model_parameters))
    if trace.is_error:
        values["error.type"] = error_type(trace)
    values.update(content_attributes(trace))
    return values


def request_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """`gen_ai.request.*` for the sampling parameters the conventions name; others are left
    out (a non-numeric value for a numeric parameter too)."""
    values: dict[str, Any] = {}
    for key, value in parameters.items():
        if key in _PARAMETERS and isinstance(value, int | float) and not isinstance(value, bool):
            values[_PARAMETERS[key]] = value
    stop = parameters.get("stop")
    if isinstance(stop, str):
        values["gen_ai.request.stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        values["gen_ai.request.stop_sequences"] = [str(item) for item in stop]
    choices = parameters.get("n")
    if isinstance(choices, int) and not isinstance(choices, bool) and choices != 1:
        values["gen_ai.request.choice.count"] = choices
    return values


def content_attributes(trace: Trace) -> dict[str, str]:
    """The two content attributes, each only when there is something to put in it."""
    values: dict[str, str] = {}
    inputs = [genai_message(message) for message in trace.input_messages]
    if inputs:
        values[INPUT_MESSAGES] = json_text(inputs)
    outputs = [
        {**genai_message(message), "finish_reason": _finish_reason(trace, index)}
        for index, message in enumerate(trace.output_messages)
    ]
    if outputs:
        values[OUTPUT_MESSAGES] = json_text(outputs)
    return values


def genai_message(message: Message) -> dict[str, Any]:
    """A chat message in the semconv's `{role, parts[], name?}` shape."""
    role = _ROLES.get(message.role, message.role)
    parts: list[dict[str, Any]] = []
    if role == "tool":
        parts.append(
            {"type": "tool_call_response", "id": message.tool_call_id, "response": message.content}
        )
    elif message.content:
        parts.append({"type": "text", "content": message.content})
    parts.extend(_tool_call_part(call) for call in message.tool_calls)
    if not parts:  # e.g. an answer cut off before any text: still one (empty) text part
        parts.append({"type": "text", "content": message.content or ""})
    shaped: dict[str, Any] = {"role": role, "parts": parts}
    if message.name:
        shaped["name"] = message.name
    return shaped


def _tool_call_part(call: ToolCall) -> dict[str, Any]:
    return {
        "type": "tool_call",
        "id": call.id,
        "name": call.name,
        "arguments": _json(call.arguments),
    }


def _json(text: str) -> Any:
    """Tool arguments as structured JSON when the model produced valid JSON, else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _finish_reason(trace: Trace, index: int) -> str:
    reasons = trace.finish_reasons
    if index < len(reasons):
        return reasons[index]
    return reasons[0] if reasons else "stop"
