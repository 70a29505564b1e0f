"""Every OTLP destination's payload, parsed back with opentelemetry-proto and checked
attribute by attribute against the trace it came from.

Bodies are taken from each destination's own `build_request` (so the encoding, gzip and
headers are the ones really sent), decoded by content type, JSON via the OTLP id/enum
conversion.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from broadcast_engine.events import build_trace
from destinations.base import DeliveryContext, Destination
from destinations.otlp import otlp_json_body
from destinations.otlp.encoding import Encoding, parse, parse_json
from destinations.otlp.spans import ORIGINAL_TRACE_ID, parent_span_note, unix_nanos
from destinations.registry import destination_class
from destinations.trace import Trace
from destinations.transport import HttpTransport
from destinations.url_guard import NetworkPolicy
from harness.samples import chat_event, error_event, tool_call_event
from tests.emulators.otlp_receiver import all_spans, attribute_dict, resource_attributes

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CONTEXT = DeliveryContext(destination_id="dst_otlp", owner="user:user_demo", now=NOW)

# One config per OTLP destination type: (slug, config, expected encoding, dialect).
DESTINATIONS: dict[str, tuple[dict[str, Any], Encoding, str]] = {
    "otel-collector": (
        {"endpoint": "https://collector.example.com/v1/traces", "headers": {"x-k": "v"}},
        Encoding.JSON,
        "genai",
    ),
    "phoenix": (
        {"endpoint": "https://phoenix.example.com", "project_name": "p1"},
        Encoding.PROTOBUF,
        "openinference",
    ),
    "arize": (
        {"api_key": "ak", "space_key": "sk", "model_id": "proj"},
        Encoding.PROTOBUF,
        "openinference",
    ),
    "langsmith": ({"api_key": "lsv2_pt_x", "project": "proj"}, Encoding.PROTOBUF, "genai"),
    "weave": ({"api_key": "wk", "entity": "team", "project": "proj"}, Encoding.PROTOBUF, "genai"),
    "grafana": (
        {
            "base_url": "https://otlp-gateway-prod-us-west-0.grafana.net",
            "instance_id": "123",
            "api_key": "glc_x",
        },
        Encoding.JSON,
        "genai",
    ),
    "newrelic": ({"license_key": "nr"}, Encoding.PROTOBUF, "genai"),
    "dynatrace": (
        {"environment_url": "https://abc.live.dynatrace.com", "api_token": "dt"},
        Encoding.PROTOBUF,
        "genai",
    ),
    "sentry": (
        {
            "otlp_endpoint": "https://o1.ingest.us.sentry.io/api/456/integration/otlp/v1/traces",
            "dsn": "https://pubkey1@o1.ingest.us.sentry.io/456",
        },
        Encoding.PROTOBUF,
        "genai",
    ),
    "ramp": ({"api_key": "rmp_k"}, Encoding.JSON, "genai"),
}
SLUGS = sorted(DESTINATIONS)
OPENINFERENCE = [slug for slug in SLUGS if DESTINATIONS[slug][2] == "openinference"]
GENAI = [slug for slug in SLUGS if DESTINATIONS[slug][2] == "genai"]
# Where each GenAI destination puts the caller's extra `trace` keys: OpenRouter documents
# `trace.metadata.<key>` for Sentry and Ramp.
TRACE_METADATA = {"sentry", "ramp"}


def metadata_key(slug: str, key: str) -> str:
    return ("trace.metadata." if slug in TRACE_METADATA else "broadcast.metadata.") + key


# Attributes that carry prompt or completion content, per dialect.
GENAI_CONTENT = {
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.prompt",
    "gen_ai.completion",
}
OI_CONTENT_PREFIXES = (
    "input.value",
    "output.value",
    "input.mime_type",
    "output.mime_type",
    "llm.input_messages.",
    "llm.output_messages.",
)

WEATHER_PROMPT = "What's the weather where this photo was taken?\n[image]"


def destination(slug: str) -> Destination:
    cls = destination_class(slug)
    config = cls.config_schema().load(DESTINATIONS[slug][0])
    return cls(config, HttpTransport(NetworkPolicy(allow_private_networks=True)))


def exported(
    slug: str, trace: Trace, context: DeliveryContext = CONTEXT
) -> ExportTraceServiceRequest:
    request = destination(slug).build_request(trace, context)
    body = request.body
    if request.headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    assert request.headers["Content-Type"] == DESTINATIONS[slug][1].content_type
    return parse(body, request.headers["Content-Type"])


def spans_by_name(export: ExportTraceServiceRequest) -> dict[str, Span]:
    return {span.name: span for span in all_spans(export)}


def attrs(span: Span) -> dict[str, Any]:
    return attribute_dict(span.attributes)


def trace_of(event: dict[str, Any]) -> Trace:
    return build_trace(event)


HIERARCHY_META = {
    "trace_name": "Support flow",
    "span_name": "Answer step",
    "generation_name": "Draft reply",
    "feature": "support",
}


# -- hierarchy ------------------------------------------------------------------------------


@pytest.mark.parametrize("slug", SLUGS)
def test_trace_span_generation_hierarchy(slug: str) -> None:
    trace = trace_of(chat_event(1, trace=HIERARCHY_META))
    spans = spans_by_name(exported(slug, trace))
    assert set(spans) == {"Support flow", "Answer step", "Draft reply"}
    root, middle, generation = spans["Support flow"], spans["Answer step"], spans["Draft reply"]
    assert root.parent_span_id == b""
    assert middle.parent_span_id == root.span_id
    assert generation.parent_span_id == middle.span_id
    assert len({root.span_id, middle.span_id, generation.span_id}) == 3
    assert root.trace_id == middle.trace_id == generation.trace_id
    assert len(root.trace_id) == 16 and len(root.span_id) == 8
    assert root.kind == middle.kind == Span.SpanKind.SPAN_KIND_INTERNAL
    assert generation.kind == Span.SpanKind.SPAN_KIND_CLIENT
    for span in spans.values():
        assert span.start_time_unix_nano == unix_nanos(trace.started_at)
        assert span.end_time_unix_nano == unix_nanos(trace.finished_at)
        assert span.status.code == Status.StatusCode.STATUS_CODE_OK


@pytest.mark.parametrize("slug", SLUGS)
def test_without_span_name_the_generation_hangs_under_the_root(slug: str) -> None:
    trace = trace_of(chat_event(2))  # trace_name "Demo", no span_name, no generation_name
    spans = spans_by_name(exported(slug, trace))
    assert set(spans) == {"Demo", "chat openai/gpt-4o"}
    assert spans["chat openai/gpt-4o"].parent_span_id == spans["Demo"].span_id


@pytest.mark.parametrize("slug", SLUGS)
def test_trace_name_defaults_to_the_model(slug: str) -> None:
    spans = spans_by_name(exported(slug, trace_of(chat_event(3, trace=None))))
    assert set(spans) == {"openai/gpt-4o", "chat openai/gpt-4o"}


@pytest.mark.parametrize("slug", SLUGS)
def test_parent_span_id_from_the_caller(slug: str) -> None:
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    trace = trace_of(
        chat_event(
            4, trace={"trace_id": caller_trace, "span_name": "Step", "parent_span_id": caller_span}
        )
    )
    spans = spans_by_name(exported(slug, trace))
    # Our root (named by trace_name, default the model) hangs under the caller's span, in
    # the caller's own trace: the trace name does not vanish.
    assert set(spans) == {"openai/gpt-4o", "Step", "chat openai/gpt-4o"}
    assert spans["openai/gpt-4o"].parent_span_id == bytes.fromhex(caller_span)
    assert spans["Step"].parent_span_id == spans["openai/gpt-4o"].span_id
    assert spans["chat openai/gpt-4o"].parent_span_id == spans["Step"].span_id
    assert {span.trace_id for span in spans.values()} == {bytes.fromhex(caller_trace)}
    assert parent_span_note(trace) is None

    upper = trace_of(
        chat_event(5, trace={"trace_id": caller_trace, "parent_span_id": caller_span.upper()})
    )
    root, generation = all_spans(exported(slug, upper))
    assert root.parent_span_id == bytes.fromhex(caller_span)
    assert generation.parent_span_id == root.span_id


@pytest.mark.parametrize("slug", SLUGS)
def test_a_parent_span_id_that_is_no_span_id_is_kept_and_noted(slug: str) -> None:
    parent = "9b2d3c1e-8f6a-4f7e-9c1d-2a3b4c5d6e7f"
    trace = trace_of(chat_event(5, trace={"parent_span_id": parent, "trace_name": "Flow"}))
    root, generation = all_spans(exported(slug, trace))
    assert (root.name, root.parent_span_id) == ("Flow", b"")
    assert attribute_dict(root.attributes)["broadcast.parent_span_id"] == parent
    assert generation.parent_span_id == root.span_id
    assert parent_span_note(trace) is not None


@pytest.mark.parametrize("slug", SLUGS)
def test_requests_sharing_a_trace_id_share_one_otlp_trace(slug: str) -> None:
    first = trace_of(chat_event(6, trace={"trace_id": "workflow_12345", "trace_name": "W"}))
    second = trace_of(chat_event(7, trace={"trace_id": "workflow_12345", "trace_name": "W"}))
    other = trace_of(chat_event(8, trace={"trace_id": "workflow_99", "trace_name": "W"}))
    spans_1, spans_2 = all_spans(exported(slug, first)), all_spans(exported(slug, second))
    trace_ids = {span.trace_id for span in spans_1 + spans_2}
    assert len(trace_ids) == 1
    assert not {s.span_id for s in spans_1} & {s.span_id for s in spans_2}
    assert {span.trace_id for span in all_spans(exported(slug, other))}.isdisjoint(trace_ids)
    for span in spans_1:
        assert attrs(span)[ORIGINAL_TRACE_ID] == "workflow_12345"


@pytest.mark.parametrize("slug", SLUGS)
def test_ids_are_deterministic_per_destination(slug: str) -> None:
    trace = trace_of(chat_event(9, trace=HIERARCHY_META))
    again = exported(slug, trace)
    assert exported(slug, trace) == again
    elsewhere = DeliveryContext(destination_id="dst_other", owner=CONTEXT.owner, now=NOW)
    ids = {s.span_id for s in all_spans(again)}
    assert ids.isdisjoint(s.span_id for s in all_spans(exported(slug, trace, elsewhere)))
    assert (
        destination(slug).build_request(trace, CONTEXT).body
        == destination(slug).build_request(trace, CONTEXT).body
    )


# -- error and privacy ----------------------------------------------------------------------


@pytest.mark.parametrize("slug", SLUGS)
def test_error_status_with_message(slug: str) -> None:
    trace = trace_of(error_event(10, trace={"trace_name": "T", "span_name": "S"}))
    spans = spans_by_name(exported(slug, trace))
    for span in spans.values():
        assert span.status.code == Status.StatusCode.STATUS_CODE_ERROR
        assert span.status.message == "Upstream provider returned 502"
    (event,) = spans["chat openai/gpt-4o"].events
    assert event.name == "exception"
    assert attribute_dict(event.attributes) == {
        "exception.type": "502",
        "exception.message": "Upstream provider returned 502",
    }


@pytest.mark.parametrize("slug", SLUGS)
def test_privacy_mode_removes_every_content_attribute(slug: str) -> None:
    trace = trace_of(tool_call_event(11, trace={"trace_name": "T", "feature": "x"}))
    full = [attrs(span) for span in all_spans(exported(slug, trace))]
    private = [attrs(span) for span in all_spans(exported(slug, trace.without_content()))]
    content = {key for values in full for key in values if _is_content(slug, key)}
    assert content, "the full trace must carry content, or this test proves nothing"
    for values in private:
        assert not [key for key in values if _is_content(slug, key)]
    # Everything that is not content is kept, value for value.
    for before, after in zip(full, private, strict=True):
        assert after == {k: v for k, v in before.items() if not _is_content(slug, k)}
    assert "What's the weather" not in repr(private)
    assert "Paris" not in repr(private)


def _is_content(slug: str, key: str) -> bool:
    if DESTINATIONS[slug][2] == "openinference":
        return key.startswith(OI_CONTENT_PREFIXES)
    return key in GENAI_CONTENT


# -- the GenAI dialect, attribute by attribute ----------------------------------------------


@pytest.mark.parametrize("slug", GENAI)
def test_genai_generation_attributes(slug: str) -> None:
    event = tool_call_event(12, trace={"trace_name": "T", "feature": "weather", "tier": 2})
    event["request"]["messages"].insert(0, {"role": "system", "content": "Be brief."})
    event["request"].update({"temperature": 0.3, "max_tokens": 50, "top_p": 0.9, "stop": "END"})
    trace = trace_of(event)
    generation = spans_by_name(exported(slug, trace))["chat openai/gpt-4o"]
    values = attrs(generation)
    expected = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "openai/gpt-4o",
        "gen_ai.response.model": "openai/gpt-4o",
        "gen_ai.response.id": trace.request_id,
        "gen_ai.response.finish_reasons": ["tool_calls"],
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300,
        "broadcast.usage.total_tokens": 1500,
        "gen_ai.usage.cache_read.input_tokens": 1000,
        "gen_ai.usage.cache_creation.input_tokens": 50,
        "gen_ai.usage.reasoning.output_tokens": 120,
        "broadcast.cost.total": 0.000123,
        "broadcast.cost.input": 0.0000525,
        "broadcast.cost.output": 0.0000705,
        "gen_ai.request.temperature": 0.3,
        "gen_ai.request.max_tokens": 50,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.request.stop_sequences": ["END"],
        "gen_ai.request.stream": True,
        "gen_ai.response.time_to_first_chunk": 0.31,
        "gen_ai.conversation.id": trace.session_id,
        "session.id": trace.session_id,
        "user.id": "end-user-7",
        metadata_key(slug, "feature"): "weather",
        metadata_key(slug, "tier"): 2,
    }
    for key, value in expected.items():
        assert values[key] == value, key
    # System messages stay in the chat history, where receivers' chat views show them.
    assert "gen_ai.system_instructions" not in values
    assert json.loads(values["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {
            "role": "user",
            "parts": [
                {
                    "type": "text",
                    "content": "What's the weather where this photo was taken?\n[image]",
                }
            ],
        },
    ]
    assert json.loads(values["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [
                {
                    "type": "tool_call",
                    "id": "call_1",
                    "name": "get_weather",
                    "arguments": {"city": "Paris"},
                }
            ],
            "finish_reason": "tool_calls",
        }
    ]
    assert json.loads(values["gen_ai.tool.definitions"]) == list(trace.tools)
    # A deprecated name, sent only where the receiver still reads it.
    assert "gen_ai.system" not in values or slug in ("langsmith", "sentry")
    assert "gen_ai.usage.prompt_tokens" not in values


@pytest.mark.parametrize("slug", GENAI)
def test_genai_root_span_carries_who_and_metadata_but_no_model(slug: str) -> None:
    trace = trace_of(chat_event(13, trace={"trace_name": "T", "feature": "x"}))
    root = attrs(spans_by_name(exported(slug, trace))["T"])
    assert root["user.id"] == "end-user-7"
    assert root["session.id"] == trace.session_id
    assert root[metadata_key(slug, "feature")] == "x"
    assert "gen_ai.request.model" not in root and "gen_ai.usage.input_tokens" not in root


@pytest.mark.parametrize("slug", GENAI)
def test_genai_error_type(slug: str) -> None:
    generation = spans_by_name(exported(slug, trace_of(error_event(14))))["chat openai/gpt-4o"]
    assert attrs(generation)["error.type"] == "502"


def test_langsmith_keys() -> None:
    trace = trace_of(
        tool_call_event(
            15, trace={"trace_name": "T", "span_name": "S", "tags": ["a", "b"], "feature": "f"}
        )
    )
    spans = spans_by_name(exported("langsmith", trace))
    generation = attrs(spans["chat openai/gpt-4o"])
    assert generation["langsmith.span.kind"] == "llm"
    assert attrs(spans["T"])["langsmith.span.kind"] == "chain"
    assert attrs(spans["S"])["langsmith.span.kind"] == "chain"
    assert attrs(spans["S"])["langsmith.trace.name"] == "S"
    assert generation["langsmith.trace.session_name"] == "proj"
    assert generation["langsmith.metadata.user_id"] == "end-user-7"
    assert generation["langsmith.metadata.session_id"] == trace.session_id
    assert generation["langsmith.metadata.feature"] == "f"
    assert generation["langsmith.span.tags"] == "a,b"
    assert generation["gen_ai.system"] == "openai"
    assert json.loads(generation["gen_ai.usage.input_token_details"]) == {
        "cache_read": 1000,
        "cache_creation": 50,
    }
    assert json.loads(generation["gen_ai.usage.output_token_details"]) == {"reasoning": 120}
    prompt = json.loads(generation["gen_ai.prompt"])
    assert prompt["messages"][0]["role"] == "user"
    completion = json.loads(generation["gen_ai.completion"])
    assert completion["choices"][0]["message"]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
    }
    assert completion["choices"][0]["finish_reason"] == "tool_calls"
    # The billed cost where LangSmith reads it, instead of pricing the run itself.
    assert json.loads(generation["langsmith.usage_metadata"]) == {
        "input_tokens": 1200,
        "output_tokens": 300,
        "total_tokens": 1500,
        "input_cost": 0.0000525,
        "output_cost": 0.0000705,
        "total_cost": 0.000123,
    }
    # Chain runs show a preview of the turn.
    root_prompt = json.loads(attrs(spans["T"])["gen_ai.prompt"])
    assert root_prompt["messages"][0]["content"].startswith("What's the weather")
    assert "gen_ai.prompt" in attrs(spans["S"]) and "langsmith.usage_metadata" not in attrs(
        spans["S"]
    )


def test_weave_keys_and_routing() -> None:
    trace = trace_of(chat_event(16, trace={"trace_id": "wf-9", "trace_name": "T", "feature": "f"}))
    export = exported("weave", trace)
    assert resource_attributes(export) == {
        "service.name": "broadcast",
        "wandb.entity": "team",
        "wandb.project": "proj",
    }
    spans = spans_by_name(export)
    generation = attrs(spans["chat openai/gpt-4o"])
    assert generation["wandb.display_name"] == "chat openai/gpt-4o"
    assert attrs(spans["T"])["wandb.display_name"] == "T"
    assert generation["wandb.thread_id"] == trace.session_id
    assert generation["llm.provider"] == "openai"
    weave_attributes = json.loads(generation["wandb.attributes"])
    assert weave_attributes["session_id"] == trace.session_id
    assert weave_attributes["user_id"] == "end-user-7"
    assert weave_attributes["openrouter_trace_id"] == "wf-9"
    assert weave_attributes["feature"] == "f"
    assert weave_attributes["cost"] == {"input": 0.0000525, "output": 0.0000705, "total": 0.000123}
    assert "feature" not in generation and "user_id" not in generation


def test_weave_caller_keys_cannot_pose_as_attributes() -> None:
    trace = trace_of(chat_event(17, trace={"gen_ai.request.model": "fake", "user_id": "x"}))
    generation = attrs(spans_by_name(exported("weave", trace))["chat openai/gpt-4o"])
    assert generation["gen_ai.request.model"] == "openai/gpt-4o"
    # Ours win over a caller's key of the same name inside `wandb.attributes` too.
    assert json.loads(generation["wandb.attributes"])["user_id"] == "end-user-7"


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [
        ("Amazon Bedrock", "anthropic/claude-sonnet-4.5", ("aws", "anthropic")),
        ("Google Vertex", "google/gemini-2.5-pro", ("google", "vertexai")),
        ("Mistral", "mistralai/mistral-large", ("mistralai", "mistralai")),
        ("xAI", "x-ai/grok-4", ("xai", "x-ai")),
    ],
)
def test_openinference_provider_and_system_use_the_allowed_values(
    provider: str, model: str, expected: tuple[str, str]
) -> None:
    from openinference.semconv.trace import OpenInferenceLLMProviderValues

    allowed_providers = {value.value for value in OpenInferenceLLMProviderValues}
    trace = dataclasses.replace(trace_of(chat_event(18)), provider=provider, model=model)
    spans = all_spans(exported("phoenix", trace))
    generation = next(attrs(span) for span in spans if span.name.startswith("chat"))
    assert (generation["llm.provider"], generation["llm.system"]) == expected
    assert generation["llm.provider"] in allowed_providers


# -- the OpenInference dialect, attribute by attribute --------------------------------------


@pytest.mark.parametrize("slug", OPENINFERENCE)
def test_openinference_llm_span(slug: str) -> None:
    from openinference.semconv.trace import (
        MessageAttributes,
        OpenInferenceSpanKindValues,
        SpanAttributes,
        ToolAttributes,
        ToolCallAttributes,
    )

    event = tool_call_event(17, trace={"trace_name": "T", "tags": ["t1"], "feature": "f"})
    event["request"]["temperature"] = 0.1
    trace = trace_of(event)
    values = attrs(spans_by_name(exported(slug, trace))["chat openai/gpt-4o"])
    in0 = f"{SpanAttributes.LLM_INPUT_MESSAGES}.0."
    out0 = f"{SpanAttributes.LLM_OUTPUT_MESSAGES}.0."
    call0 = f"{out0}{MessageAttributes.MESSAGE_TOOL_CALLS}.0."
    expected = {
        SpanAttributes.OPENINFERENCE_SPAN_KIND: OpenInferenceSpanKindValues.LLM.value,
        SpanAttributes.LLM_MODEL_NAME: "openai/gpt-4o",
        SpanAttributes.LLM_PROVIDER: "openai",
        SpanAttributes.LLM_SYSTEM: "openai",
        SpanAttributes.LLM_FINISH_REASON: "tool_calls",
        SpanAttributes.LLM_TOKEN_COUNT_PROMPT: 1200,
        SpanAttributes.LLM_TOKEN_COUNT_COMPLETION: 300,
        SpanAttributes.LLM_TOKEN_COUNT_TOTAL: 1500,
        SpanAttributes.LLM_TOKEN_COUNT_PROMPT_DETAILS_CACHE_READ: 1000,
        SpanAttributes.LLM_TOKEN_COUNT_PROMPT_DETAILS_CACHE_WRITE: 50,
        SpanAttributes.LLM_TOKEN_COUNT_COMPLETION_DETAILS_REASONING: 120,
        SpanAttributes.LLM_COST_PROMPT: 0.0000525,
        SpanAttributes.LLM_COST_COMPLETION: 0.0000705,
        SpanAttributes.LLM_COST_TOTAL: 0.000123,
        SpanAttributes.SESSION_ID: trace.session_id,
        SpanAttributes.USER_ID: "end-user-7",
        SpanAttributes.TAG_TAGS: ["t1"],
        in0 + MessageAttributes.MESSAGE_ROLE: "user",
        in0 + MessageAttributes.MESSAGE_CONTENT: WEATHER_PROMPT,
        out0 + MessageAttributes.MESSAGE_ROLE: "assistant",
        call0 + ToolCallAttributes.TOOL_CALL_ID: "call_1",
        call0 + ToolCallAttributes.TOOL_CALL_FUNCTION_NAME: "get_weather",
        call0 + ToolCallAttributes.TOOL_CALL_FUNCTION_ARGUMENTS_JSON: '{"city":"Paris"}',
        SpanAttributes.INPUT_MIME_TYPE: "application/json",
        SpanAttributes.OUTPUT_MIME_TYPE: "application/json",
    }
    for key, value in expected.items():
        assert values[key] == value, key
    assert json.loads(values[SpanAttributes.METADATA]) == {"tags": ["t1"], "feature": "f"}
    assert json.loads(values[SpanAttributes.LLM_INVOCATION_PARAMETERS]) == {
        "temperature": 0.1,
        "tool_choice": "auto",
    }
    schema_key = f"{SpanAttributes.LLM_TOOLS}.0.{ToolAttributes.TOOL_JSON_SCHEMA}"
    assert json.loads(values[schema_key]) == trace.tools[0]
    assert json.loads(values[SpanAttributes.INPUT_VALUE])["messages"][0]["role"] == "user"
    assert json.loads(values[SpanAttributes.OUTPUT_VALUE])["tool_calls"][0]["id"] == "call_1"


@pytest.mark.parametrize("slug", OPENINFERENCE)
def test_openinference_chain_spans_and_project(slug: str) -> None:
    from openinference.semconv.resource import ResourceAttributes
    from openinference.semconv.trace import OpenInferenceSpanKindValues, SpanAttributes

    trace = trace_of(chat_event(18, trace={"trace_name": "T", "span_name": "S"}))
    export = exported(slug, trace)
    project = {"phoenix": "p1", "arize": "proj"}[slug]
    assert resource_attributes(export)[ResourceAttributes.PROJECT_NAME] == project
    spans = spans_by_name(export)
    for name in ("T", "S"):
        values = attrs(spans[name])
        assert values[SpanAttributes.OPENINFERENCE_SPAN_KIND] == (
            OpenInferenceSpanKindValues.CHAIN.value
        )
        assert values[SpanAttributes.INPUT_VALUE] == "What is 18 + 18?"
        assert values[SpanAttributes.OUTPUT_VALUE] == "The answer is 36."
        assert values[SpanAttributes.SESSION_ID] == trace.session_id
        assert values[SpanAttributes.USER_ID] == "end-user-7"
        assert not any(key.startswith("llm.") for key in values)


@pytest.mark.parametrize("slug", OPENINFERENCE)
def test_openinference_attribute_names_are_the_packages_constants(slug: str) -> None:
    from openinference.semconv.trace import (
        MessageAttributes,
        SpanAttributes,
        ToolAttributes,
        ToolCallAttributes,
    )

    def constants(cls: type) -> set[str]:
        return {v for k, v in vars(cls).items() if k.isupper() and isinstance(v, str)}

    span_keys = constants(SpanAttributes)
    message_keys = constants(MessageAttributes)
    call_keys = constants(ToolCallAttributes)
    tool_keys = constants(ToolAttributes)

    def known(key: str) -> bool:
        if key in span_keys or key == ORIGINAL_TRACE_ID:
            return True
        for base in (SpanAttributes.LLM_INPUT_MESSAGES, SpanAttributes.LLM_OUTPUT_MESSAGES):
            if key.startswith(base + "."):
                _index, rest = key[len(base) + 1 :].split(".", 1)
                if rest in message_keys:
                    return True
                prefix = MessageAttributes.MESSAGE_TOOL_CALLS + "."
                if rest.startswith(prefix):
                    _j, leaf = rest[len(prefix) :].split(".", 1)
                    return leaf in call_keys
        if key.startswith(SpanAttributes.LLM_TOOLS + "."):
            return key.split(".", 3)[3] in tool_keys
        return False

    event = tool_call_event(
        19,
        trace={"trace_name": "T", "span_name": "S", "trace_id": "g", "tags": ["x"], "feature": "f"},
    )
    event["request"]["messages"].append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c0", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        }
    )
    event["request"]["messages"].append(
        {"role": "tool", "content": "42", "tool_call_id": "c0", "name": "f"}
    )
    keys = {key for span in all_spans(exported(slug, trace_of(event))) for key in attrs(span)}
    keys |= {
        key for span in all_spans(exported(slug, trace_of(error_event(19)))) for key in attrs(span)
    }
    unknown = sorted(key for key in keys if not known(key))
    assert not unknown


@pytest.mark.parametrize(
    ("slug", "resource"),
    [
        ("arize", {"openinference.project.name": "proj", "model_id": "proj"}),
        ("phoenix", {"openinference.project.name": "p1"}),
        ("otel-collector", {}),
        ("langsmith", {}),
        ("grafana", {}),
        ("newrelic", {}),
        ("dynatrace", {}),
    ],
)
def test_resource_attributes(slug: str, resource: dict[str, str]) -> None:
    export = exported(slug, trace_of(chat_event(20)))
    assert resource_attributes(export) == {"service.name": "broadcast", **resource}
    (resource_spans,) = export.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == "broadcast"


def test_webhook_otlp_body_is_the_collector_json() -> None:
    trace = trace_of(chat_event(21, trace=HIERARCHY_META))
    body = otlp_json_body(trace, CONTEXT.destination_id)
    collector = destination("otel-collector").build_request(trace, CONTEXT).body
    assert body == collector
    assert {span.name for span in all_spans(parse_json(body))} == {
        "Support flow",
        "Answer step",
        "Draft reply",
    }


def test_webhook_format_otlp_sends_the_otlp_json_signed() -> None:
    from standardwebhooks.webhooks import Webhook

    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    cls = destination_class("webhook")
    config = cls.config_schema().load(
        {"url": "https://hooks.example.com/in", "format": "otlp", "signing_secret": secret}
    )
    webhook = cls(config, HttpTransport(NetworkPolicy(allow_private_networks=True)))
    trace = trace_of(chat_event(22, trace=HIERARCHY_META))
    # The verifier checks the signature's timestamp against the real clock.
    now = DeliveryContext(CONTEXT.destination_id, CONTEXT.owner, datetime.now(UTC))
    request = webhook.build_request(trace, now)
    assert request.body == otlp_json_body(trace, CONTEXT.destination_id)
    assert request.headers["Content-Type"] == "application/json"
    Webhook(secret).verify(request.body, dict(request.headers))  # raises when it does not
    assert len(all_spans(parse_json(request.body))) == 3
    json_config = cls.config_schema().load({"url": "https://hooks.example.com/in"})
    assert json_config["format"] == "json"
    assert (
        json.loads(cls(json_config, webhook.transport).build_request(trace, CONTEXT).body)["type"]
        == "trace.completed"
    )


# -- the generic collector keeps to the conventions -----------------------------------------


def test_otel_collector_sends_only_convention_names_or_broadcast_ones() -> None:
    from opentelemetry.semconv._incubating.attributes import (
        error_attributes,
        gen_ai_attributes,
        session_attributes,
        user_attributes,
    )

    defined = {
        value
        for module in (gen_ai_attributes, error_attributes, session_attributes, user_attributes)
        for name, value in vars(module).items()
        if name.isupper() and isinstance(value, str)
    }
    event = tool_call_event(19, trace={"trace_id": "wf", "span_name": "S", "feature": "f"})
    for span in all_spans(exported("otel-collector", trace_of(event))):
        for key in attrs(span):
            assert key in defined or key.startswith("broadcast."), (span.name, key)
    generation = attrs(
        spans_by_name(exported("otel-collector", trace_of(event)))["chat openai/gpt-4o"]
    )
    for invented in ("gen_ai.usage.cost", "gen_ai.usage.total_tokens", "gen_ai.usage.input_cost"):
        assert invented not in generation
    assert generation["broadcast.cost.total"] == 0.000123


def test_root_and_span_carry_bounded_previews_and_the_generation_everything() -> None:
    long = "word " * 2000
    event = chat_event(20, trace={"span_name": "S"})
    event["request"]["messages"][-1]["content"] = long
    spans = spans_by_name(exported("otel-collector", trace_of(event)))
    for name in ("openai/gpt-4o", "S"):
        (preview,) = json.loads(attrs(spans[name])["gen_ai.input.messages"])
        assert len(preview["parts"][0]["content"].encode()) <= 2048
        (answer,) = json.loads(attrs(spans[name])["gen_ai.output.messages"])
        assert answer["parts"][0]["content"] == "The answer is 40."
    full = json.loads(attrs(spans["chat openai/gpt-4o"])["gen_ai.input.messages"])
    assert full[-1]["parts"][0]["content"] == long
    private = spans_by_name(exported("otel-collector", trace_of(event).without_content()))
    assert "gen_ai.input.messages" not in attrs(private["S"])


def test_an_assistant_message_without_text_or_tool_calls_keeps_a_text_part() -> None:
    event = chat_event(21)
    event["response"]["choices"][0]["message"]["content"] = None
    generation = attrs(
        spans_by_name(exported("otel-collector", trace_of(event)))["chat openai/gpt-4o"]
    )
    (answer,) = json.loads(generation["gen_ai.output.messages"])
    assert answer["parts"] == [{"type": "text", "content": ""}]
