"""Datadog LLM Observability: golden span payloads, the shipped JSON Schema, an emulated intake."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import marshmallow
import pytest
from ddtrace.llmobs import _constants as ddtrace_constants

from broadcast_engine.events import build_trace
from broadcast_interfaces.service import SettingsError
from destinations.base import DeliveryContext, PayloadTooLarge
from destinations.datadog import (
    DEFAULT_URL,
    MAX_PAYLOAD_BYTES,
    DatadogConfig,
    DatadogDestination,
    spans_request,
)
from destinations.json_body import compact_json
from destinations.outcomes import Outcome
from destinations.registry import destination_class
from destinations.trace import Message, Trace
from destinations.transport import HttpTransport
from harness.receiver import Reply
from harness.samples import BASE_TIME, chat_event, error_event, tool_call_event
from harness.waiting import wait_for
from tasks import broadcast
from tests.emulators import recent_event
from tests.emulators.datadog import API_KEY, DatadogEmulator, spans_problems

DESTINATION = "dst_datadog"
ML_APP = "broadcast-demo"
NOW = BASE_TIME + timedelta(hours=1)
CONTEXT = DeliveryContext(DESTINATION, "user:user_demo", NOW)
PROMPT_TEXTS = ("terse assistant", "What is", "The answer is", "weather", "Paris")

CASES: dict[str, Trace] = {
    "plain chat": build_trace(chat_event(1)),
    "tool call": build_trace(tool_call_event(2)),
    "streamed": build_trace(chat_event(3, streamed=True, time_to_first_token_ms=120.5)),
    "cached and reasoning": build_trace(tool_call_event(4)),
    "failed": build_trace(error_event(5)),
    "privacy": build_trace(tool_call_event(6)).without_content(),
    "shared trace id": build_trace(chat_event(7, trace={"trace_id": "workflow-42"})),
    "span and parent": build_trace(
        chat_event(
            8,
            trace={
                "trace_id": "workflow-42",
                "span_name": "Summarize",
                "parent_span_id": "00f067aa0ba902b7",
                "nested": {"team": "search", "tiers": [1, 2]},
            },
        )
    ),
}


def spans(trace: Trace, destination: str = DESTINATION) -> list[dict[str, Any]]:
    return spans_request(trace, destination, ML_APP)["data"]["attributes"]["spans"]


def llm_span(trace: Trace) -> dict[str, Any]:
    (span,) = [s for s in spans(trace) if s["meta"]["kind"] == "llm"]
    return span


def test_plain_chat_golden() -> None:
    assert spans_request(CASES["plain chat"], DESTINATION, ML_APP) == {
        "data": {
            "type": "span",
            "attributes": {
                "ml_app": "broadcast-demo",
                "session_id": "session-0",
                "tags": ["service:broadcast-demo", "user_id:end-user-7"],
                "spans": [
                    {
                        "name": "Demo",
                        "trace_id": "fd467b5c45277ee9e9d07f5b824c1811",
                        "span_id": "9318798667264176504",
                        "parent_id": "undefined",
                        "start_ns": 1795428001000000000,
                        "duration": 850000000,
                        "status": "ok",
                        "meta": {
                            "kind": "workflow",
                            "input": {"value": "What is 1 + 1?"},
                            "output": {"value": "The answer is 2."},
                        },
                    },
                    {
                        "name": "openai/gpt-4o",
                        "trace_id": "fd467b5c45277ee9e9d07f5b824c1811",
                        "span_id": "312145297633953093",
                        "parent_id": "9318798667264176504",
                        "start_ns": 1795428001000000000,
                        "duration": 850000000,
                        "status": "ok",
                        "meta": {
                            "kind": "llm",
                            "model_name": "openai/gpt-4o",
                            "model_provider": "openai",
                            "metadata": {
                                "temperature": 0.2,
                                "max_tokens": 64,
                                "request_id": "gen-000001",
                                "streamed": True,
                                "tools_offered": False,
                                "tool_calls_made": False,
                                "finish_reason": "stop",
                                "feature": "arithmetic",
                                "environment": "demo",
                            },
                            "input": {
                                "messages": [
                                    {"role": "system", "content": "You are a terse assistant."},
                                    {"role": "user", "content": "What is 1 + 1?"},
                                ]
                            },
                            "output": {
                                "messages": [{"role": "assistant", "content": "The answer is 2."}]
                            },
                        },
                        "metrics": {
                            "input_tokens": 21,
                            "output_tokens": 7,
                            "total_tokens": 28,
                            "input_cost": 0.0000525,
                            "output_cost": 0.0000705,
                            "total_cost": 0.000123,
                            "time_to_first_token": 0.31,
                        },
                    },
                ],
            },
        }
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_case_matches_the_intake_schema(case: str) -> None:
    payload = json.loads(compact_json(spans_request(CASES[case], DESTINATION, ML_APP)))
    assert spans_problems(payload) == []


def test_the_schema_catches_what_the_intake_refuses() -> None:
    payload = spans_request(CASES["plain chat"], DESTINATION, ML_APP)
    span = payload["data"]["attributes"]["spans"][1]
    span["meta"]["kind"] = "generation"
    span["metrics"]["prompt_tokens"] = 3
    span["meta"]["metadata"]["nested"] = {"a": 1}
    problems = spans_problems(payload)
    assert len(problems) == 3, problems


def test_tool_call_maps_arguments_and_tool_definitions() -> None:
    span = llm_span(CASES["tool call"])
    assert span["meta"]["output"]["messages"] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "name": "get_weather",
                    "arguments": {"city": "Paris"},
                    "tool_id": "call_1",
                    "type": "function",
                }
            ],
        }
    ]
    assert span["meta"]["tool_definitions"][0]["name"] == "get_weather"
    assert span["meta"]["input"]["messages"][0]["content"].endswith("[image]")
    assert span["meta"]["metadata"]["tool_choice"] == "auto"


def test_tool_results_and_unparseable_arguments() -> None:
    trace = dataclasses.replace(
        CASES["plain chat"],
        input_messages=(
            Message(role="user", content="hi"),
            Message(role="tool", content='{"temp": 21}', tool_call_id="call_1", name="weather"),
        ),
        output_messages=(
            Message(
                role="assistant",
                tool_calls=(
                    dataclasses.replace(
                        build_trace(tool_call_event(0)).output_messages[0].tool_calls[0],
                        arguments="not json",
                    ),
                ),
            ),
        ),
    )
    span = llm_span(trace)
    assert span["meta"]["input"]["messages"][1]["tool_results"] == [
        {"name": "weather", "result": '{"temp": 21}', "tool_id": "call_1", "type": "function"}
    ]
    assert span["meta"]["output"]["messages"][0]["tool_calls"][0]["arguments"] == {
        "value": "not json"
    }
    assert spans_problems(spans_request(trace, DESTINATION, ML_APP)) == []


def test_streamed_request_reports_time_to_first_token_in_seconds() -> None:
    assert llm_span(CASES["streamed"])["metrics"]["time_to_first_token"] == 0.1205


def test_cached_and_reasoning_tokens() -> None:
    metrics = llm_span(CASES["cached and reasoning"])["metrics"]
    assert {k: metrics[k] for k in metrics if k.endswith("tokens")} == {
        "input_tokens": 1200,
        "output_tokens": 300,
        "total_tokens": 1500,
        "cache_read_input_tokens": 1000,
        "cache_write_input_tokens": 50,
        "non_cached_input_tokens": 150,
        "reasoning_output_tokens": 120,
    }


def test_failed_request_marks_every_span_as_error() -> None:
    for span in spans(CASES["failed"]):
        assert span["status"] == "error"
        assert span["meta"]["error"] == {
            "message": "Upstream provider returned 502",
            "type": "provider_error_502",
        }
    assert "output" not in llm_span(CASES["failed"])["meta"]


def test_privacy_mode_sends_no_content_but_keeps_the_rest() -> None:
    body = compact_json(spans_request(CASES["privacy"], DESTINATION, ML_APP))
    for text in PROMPT_TEXTS:
        assert text.encode() not in body
    for span in spans(CASES["privacy"]):
        assert "input" not in span["meta"] and "output" not in span["meta"]
    span = llm_span(CASES["privacy"])
    assert "tool_definitions" not in span["meta"]
    assert span["metrics"]["total_tokens"] == 1500
    assert span["metrics"]["total_cost"] == 0.000123
    assert span["metrics"]["time_to_first_token"] == 0.31
    assert span["meta"]["model_name"] == "openai/gpt-4o"
    assert span["meta"]["metadata"]["feature"] == "arithmetic"
    assert span["meta"]["metadata"]["privacy_mode"] is True
    assert span["duration"] == 850_000_000


def test_requests_sharing_a_trace_id_each_send_their_own_top_span() -> None:
    first = spans(build_trace(chat_event(7, trace={"trace_id": "workflow-42"})))
    second = spans(build_trace(chat_event(9, trace={"trace_id": "workflow-42"})))
    assert {s["trace_id"] for s in first + second} == {"workflow-42"}
    # Neither re-sends (and so overwrites) the other's top span: each has its own.
    assert first[0]["span_id"] != second[0]["span_id"]
    assert first[0]["start_ns"] != second[0]["start_ns"]
    assert first[1]["parent_id"] == first[0]["span_id"]
    assert first[0]["meta"]["input"] == {"value": "What is 7 + 7?"}


def test_a_parent_span_id_that_is_no_span_id_keeps_the_top_span_as_root() -> None:
    top, llm = spans(build_trace(chat_event(3, trace={"parent_span_id": "obs-7f3a"})))
    assert top["parent_id"] == "undefined"
    assert llm["meta"]["metadata"]["parent_span_id"] == "obs-7f3a"


def test_span_name_and_parent_span_id_build_the_hierarchy() -> None:
    top, workflow, llm = spans(CASES["span and parent"])  # our top span stays, named
    assert top["name"] == "openai/gpt-4o" and top["meta"]["kind"] == "workflow"
    assert top["parent_id"] == str(int("00f067aa0ba902b7", 16))  # under the caller's span
    assert workflow["name"] == "Summarize" and workflow["meta"]["kind"] == "workflow"
    assert workflow["parent_id"] == top["span_id"]
    assert llm["parent_id"] == workflow["span_id"]
    assert llm["meta"]["metadata"]["nested"] == '{"team":"search","tiers":[1,2]}'


def test_ids_are_deterministic_per_request_and_destination() -> None:
    trace = CASES["plain chat"]
    assert compact_json(spans_request(trace, DESTINATION, ML_APP)) == compact_json(
        spans_request(trace, DESTINATION, ML_APP)
    )
    mine = {(s["trace_id"], s["span_id"]) for s in spans(trace)}
    theirs = {(s["trace_id"], s["span_id"]) for s in spans(trace, "dst_other")}
    assert not {t for t, _ in mine} & {t for t, _ in theirs}
    assert not {s for _, s in mine} & {s for _, s in theirs}


@pytest.mark.parametrize("ml_app", ["broadcast", "team-a/chat.bot:v2", "a_b", "é-app", "x" * 193])
def test_valid_ml_app_names(ml_app: str) -> None:
    assert DatadogConfig().load({"api_key": "k", "ml_app": ml_app})["ml_app"] == ml_app


@pytest.mark.parametrize(
    "ml_app", ["", "Broadcast", "my app", "a__b", "trailing_", "x" * 194, "semi;colon"]
)
def test_invalid_ml_app_names_are_refused_on_save(ml_app: str) -> None:
    with pytest.raises(marshmallow.ValidationError) as raised:
        DatadogConfig().load({"api_key": "k", "ml_app": ml_app})
    assert "ml_app" in raised.value.messages


def test_config_schema() -> None:
    assert destination_class("datadog") is DatadogDestination
    config = DatadogConfig().load({"api_key": "k", "ml_app": "app"})
    assert config["url"] == DEFAULT_URL
    assert DatadogDestination.secret_fields() == {"api_key", "headers"}  # headers: every type's
    assert DatadogDestination.url_fields() == {"url"}
    with pytest.raises(marshmallow.ValidationError):
        DatadogConfig().load({"api_key": "k", "ml_app": "app", "site": "eu"})


# --- against the emulator -----------------------------------------------------------------


@pytest.fixture(scope="module")
def datadog_server() -> Iterator[DatadogEmulator]:
    with DatadogEmulator() as emulator:
        yield emulator


@pytest.fixture
def datadog(datadog_server: DatadogEmulator) -> DatadogEmulator:
    datadog_server.reset()
    datadog_server.now_ns = int(NOW.timestamp()) * 10**9
    return datadog_server


def destination(
    emulator: DatadogEmulator, transport: HttpTransport, api_key: str = API_KEY
) -> DatadogDestination:
    config = DatadogConfig().load({"api_key": api_key, "ml_app": ML_APP, "url": emulator.url})
    return DatadogDestination(config, transport)


def test_delivery_is_accepted_with_202(datadog: DatadogEmulator, transport: HttpTransport) -> None:
    result = destination(datadog, transport).deliver(CASES["span and parent"], CONTEXT)
    assert result.outcome is Outcome.DELIVERED
    assert result.status_code == 202
    request = datadog.intake_requests()[0]
    assert request.headers["dd-api-key"] == API_KEY
    assert [s["name"] for s in datadog.spans()] == ["openai/gpt-4o", "Summarize", "openai/gpt-4o"]


def test_wrong_key_is_auth_failed(datadog: DatadogEmulator, transport: HttpTransport) -> None:
    result = destination(datadog, transport, api_key="wrong").deliver(CASES["plain chat"], CONTEXT)
    assert result.outcome is Outcome.AUTH_FAILED
    assert datadog.spans() == []


def test_spans_older_than_a_day_are_permanent_and_not_sent(
    datadog: DatadogEmulator, transport: HttpTransport
) -> None:
    late = DeliveryContext(DESTINATION, "user:user_demo", BASE_TIME + timedelta(hours=25))
    result = destination(datadog, transport).deliver(CASES["plain chat"], late)
    assert result.outcome is Outcome.PERMANENT
    assert "older than 24 h" in (result.error or "")
    assert datadog.intake_requests() == []


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"X-RateLimit-Reset": "12", "X-RateLimit-Limit": "100"}, 12.0),
        ({"Retry-After": "3", "X-RateLimit-Reset": "12"}, 3.0),
    ],
)
def test_rate_limit_is_retryable_after_the_given_delay(
    datadog: DatadogEmulator,
    transport: HttpTransport,
    headers: dict[str, str],
    expected: float,
) -> None:
    datadog.scripted.append(Reply(429, b'{"errors":["Too many requests"]}', headers))
    result = destination(datadog, transport).deliver(CASES["plain chat"], CONTEXT)
    assert result.outcome is Outcome.RETRYABLE
    assert result.retry_after == expected


def test_connection_check(datadog: DatadogEmulator, transport: HttpTransport) -> None:
    assert destination(datadog, transport).test_connection(CONTEXT).ok
    rejected = destination(datadog, transport, api_key="wrong-key").test_connection(CONTEXT)
    assert rejected.outcome is Outcome.AUTH_FAILED
    assert rejected.status_code == 403
    assert "key rejected" in rejected.message
    assert "wrong-key" not in rejected.message
    assert datadog.receiver.requests("/api/v1/validate")[0].method == "GET"


def test_large_content_is_truncated_with_a_marker_before_sending(
    datadog: DatadogEmulator, transport: HttpTransport
) -> None:
    trace = dataclasses.replace(
        CASES["plain chat"], input_messages=(Message(role="user", content="x" * 6_000_000),)
    )
    result = destination(datadog, transport).deliver(trace, CONTEXT)
    assert result.outcome is Outcome.DELIVERED
    body = datadog.intake_requests()[0].body
    assert len(body) <= MAX_PAYLOAD_BYTES
    assert "…[truncated " in body.decode()


def test_a_payload_that_cannot_fit_is_permanent_and_not_sent(
    datadog: DatadogEmulator, transport: HttpTransport
) -> None:
    many = tuple(Message(role="user", content="y" * 300) for _ in range(20_000))
    trace = dataclasses.replace(CASES["plain chat"], input_messages=many)
    target = destination(datadog, transport)
    with pytest.raises(PayloadTooLarge):
        target.build_request(trace, CONTEXT)
    assert target.deliver(trace, CONTEXT).outcome is Outcome.PERMANENT
    assert datadog.intake_requests() == []


# --- end to end: broadcast.delay, a real worker, the emulator -----------------------------


@pytest.mark.integration
def test_end_to_end_through_the_worker(
    worker: Any, service: Any, user_id: str, datadog: DatadogEmulator
) -> None:
    datadog.now_ns = None  # the real clock: the worker stamps deliveries with it
    owner = f"user:{user_id}"
    config = {"api_key": "wrong-key", "ml_app": ML_APP, "url": datadog.url}
    with pytest.raises(SettingsError, match="key rejected"):
        service.add_destination(owner, "datadog", "Datadog", config)
    assert service.list_destinations(owner) == []

    view = service.add_destination(owner, "datadog", "Datadog", {**config, "api_key": API_KEY})
    datadog.scripted.append(
        Reply(429, b'{"errors":["Too many requests"]}', {"X-RateLimit-Reset": "1"})
    )
    broadcast.delay(
        recent_event(user_id, 1, "datadog", trace={"trace_name": "Checkout", "span_name": "Plan"})
    )
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 1, what="delivered")
    first, second = datadog.intake_requests()
    # X-RateLimit-Reset was honoured; a run may start up to 50 ms before its wake time
    # (broadcast_engine/backlog.py, `_BEGIN`), so 1 s less those 50 ms.
    assert second.received_at - first.received_at >= 0.95
    assert [entry["status_code"] for entry in service.deliveries(view["id"])] == [202, 429]
    names = [span["name"] for span in datadog.spans()]
    assert names == ["Checkout", "Plan", "openai/gpt-4o"]


# Metric names as ddtrace itself writes them on LLM spans, read from ddtrace's own
# constants (`ddtrace.llmobs._constants`, every `*_METRIC_KEY`: tokens, cost, timing);
# `non_cached_input_tokens` is from Datadog's cost page (see tests/schemas/README.md).
DDTRACE_METRIC_KEYS = {
    getattr(ddtrace_constants, name)
    for name in dir(ddtrace_constants)
    if name.endswith("_METRIC_KEY")
}
DATADOG_COST_KEYS = {"non_cached_input_tokens"}


def test_metric_names_are_the_ones_ddtrace_writes() -> None:
    llm = spans(build_trace(tool_call_event(3)))[-1]
    assert {"input_cost", "output_cost", "total_cost"} <= DDTRACE_METRIC_KEYS  # ddtrace's own
    assert set(llm["metrics"]) <= DDTRACE_METRIC_KEYS | DATADOG_COST_KEYS
    assert {"cache_read_input_tokens", "reasoning_output_tokens", "total_cost"} <= set(
        llm["metrics"]
    )
