"""Comet Opik: every trace and span validated by the `opik` package's generated models,
UUIDv7 ids stable across retries, the mapping, an emulated Opik and a real worker."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from broadcast_engine.events import build_trace
from broadcast_interfaces.service import SettingsError
from destinations.base import DeliveryContext
from destinations.json_body import compact_json
from destinations.opik import OpikConfig, OpikDestination, opik_items
from destinations.outcomes import Outcome
from destinations.registry import destination_class
from destinations.trace import Trace
from destinations.transport import HttpTransport
from harness.receiver import Reply
from harness.samples import BASE_TIME, chat_event, error_event, tool_call_event
from harness.waiting import wait_for
from tasks import broadcast
from tests.emulators import recent_event
from tests.emulators.opik import API_KEY, WORKSPACE, OpikEmulator, item_problems

DESTINATION = "dst_opik"
PROJECT = "openrouter-prod"
CONTEXT = DeliveryContext(DESTINATION, "user:user_demo", BASE_TIME + timedelta(hours=1))
CASES: dict[str, Trace] = {
    "plain chat": build_trace(chat_event(1)),
    "tool call": build_trace(tool_call_event(2)),
    "failed": build_trace(error_event(3)),
    "privacy": build_trace(tool_call_event(4)).without_content(),
    "shared trace id and tags": build_trace(
        chat_event(5, trace={"trace_id": "workflow-42", "tags": ["beta"], "eval": "q2"})
    ),
    "span and parent": build_trace(
        chat_event(6, trace={"span_name": "Step", "parent_span_id": "caller-span-1"})
    ),
    "no user, no session": build_trace(chat_event(7, user=None, session_id=None)),
}


def items(trace: Trace, destination: str = DESTINATION) -> dict[str, Any]:
    return json.loads(compact_json(opik_items(trace, destination, PROJECT)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_trace_and_span_validates_with_opiks_models(case: str) -> None:
    shaped = items(CASES[case])
    assert item_problems("traces", {"traces": shaped["traces"]}) == []
    assert item_problems("spans", {"spans": shaped["spans"]}) == []


def test_the_validation_catches_what_opik_refuses() -> None:
    shaped = items(CASES["plain chat"])
    shaped["spans"][0]["type"] = "generation"  # allowed by the model's Any fallback...
    shaped["spans"][0]["usage"] = {"prompt_tokens": "many"}
    shaped["spans"][0]["inputs"] = {}
    shaped["traces"][0]["id"] = str(uuid.uuid4())
    del shaped["traces"][0]["start_time"]
    assert len(item_problems("spans", {"spans": shaped["spans"]})) >= 2
    assert len(item_problems("traces", {"traces": shaped["traces"]})) >= 2


def test_ids_are_uuid7_from_the_start_time_and_stable() -> None:
    trace = CASES["span and parent"]
    first, again, other = items(trace), items(trace), items(trace, "dst_other")
    ids = [first["traces"][0]["id"], *(span["id"] for span in first["spans"])]
    assert ids == [again["traces"][0]["id"], *(span["id"] for span in again["spans"])]
    assert not set(ids) & {other["traces"][0]["id"], *(s["id"] for s in other["spans"])}
    start_ms = int(trace.started_at.timestamp() * 1000)
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 7
        assert int.from_bytes(parsed.bytes[:6], "big") == start_ms
    assert len(set(ids)) == 3


def test_one_opik_trace_per_request_even_when_they_share_a_trace_id() -> None:
    first = items(build_trace(chat_event(8, trace={"trace_id": "wf-7"})))
    second = items(build_trace(chat_event(9, trace={"trace_id": "wf-7"})))
    assert first["traces"][0]["id"] != second["traces"][0]["id"]
    for shaped in (first, second):
        assert shaped["traces"][0]["metadata"]["openrouter_trace_id"] == "wf-7"
        assert {span["metadata"]["openrouter_trace_id"] for span in shaped["spans"]} == {"wf-7"}


def test_mapping() -> None:
    shaped = items(CASES["tool call"])
    (top,) = shaped["traces"]
    (llm,) = shaped["spans"]
    assert top["project_name"] == llm["project_name"] == PROJECT
    assert top["name"] == "Demo" and llm["name"] == "openai/gpt-4o"
    assert top["thread_id"] == "session-0"
    assert top["metadata"]["user_id"] == "end-user-7"
    assert top["metadata"]["feature"] == llm["metadata"]["feature"] == "arithmetic"
    assert llm["trace_id"] == top["id"] and llm["type"] == "llm"
    assert (llm["model"], llm["provider"]) == ("openai/gpt-4o", "openai")
    assert llm["usage"] == {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "original_usage.prompt_tokens": 1200,
        "original_usage.completion_tokens": 300,
        "original_usage.total_tokens": 1500,
        "original_usage.prompt_tokens_details.cached_tokens": 1000,
        "original_usage.prompt_tokens_details.cache_write_tokens": 50,
        "original_usage.completion_tokens_details.reasoning_tokens": 120,
    }
    assert llm["total_estimated_cost"] == 0.000123
    assert llm["metadata"]["cost"] == {"input": 0.0000525, "output": 0.0000705, "total": 0.000123}
    assert llm["metadata"]["openrouter_observation_id"] == CASES["tool call"].request_id
    assert llm["metadata"]["finish_reasons"] == ["tool_calls"]
    assert llm["input"]["tools"][0]["function"]["name"] == "get_weather"
    assert llm["output"]["choices"][0]["message"]["tool_calls"][0]["id"] == "call_1"
    assert top["input"] == {"input": "What's the weather where this photo was taken?\n[image]"}
    assert llm["ttft"] == top["ttft"] == 310.0


def test_span_name_parent_and_tags() -> None:
    shaped = items(CASES["span and parent"])
    span, llm = shaped["spans"]
    assert (span["name"], span["type"]) == ("Step", "general")
    assert llm["parent_span_id"] == span["id"]
    assert "parent_span_id" not in span
    assert shaped["traces"][0]["metadata"]["openrouter_parent_span_id"] == "caller-span-1"
    tagged = items(CASES["shared trace id and tags"])["traces"][0]
    assert tagged["tags"] == ["beta"] and "tags" not in tagged["metadata"]


def test_failed_request_carries_error_info() -> None:
    shaped = items(CASES["failed"])
    expected = {"exception_type": "502", "message": "Upstream provider returned 502"}
    for item in (shaped["traces"][0], shaped["spans"][0]):
        assert {k: item["error_info"][k] for k in expected} == expected


def test_privacy_mode_sends_no_content() -> None:
    body = compact_json(opik_items(CASES["privacy"], DESTINATION, PROJECT))
    for text in ("weather", "Paris", "get_weather"):
        assert text.encode() not in body
    (llm,) = items(CASES["privacy"])["spans"]
    assert "input" not in llm and "output" not in llm
    assert llm["usage"]["total_tokens"] == 1500 and llm["metadata"]["privacy_mode"] is True


# --- against the emulator -------------------------------------------------------------


@pytest.fixture(scope="module")
def opik_server() -> Iterator[OpikEmulator]:
    with OpikEmulator() as emulator:
        yield emulator


@pytest.fixture
def opik(opik_server: OpikEmulator) -> OpikEmulator:
    opik_server.reset()
    return opik_server


def config(emulator: OpikEmulator, **overrides: str) -> dict[str, str]:
    return {
        "api_key": API_KEY,
        "workspace": WORKSPACE,
        "project_name": PROJECT,
        "base_url": emulator.url,
        **overrides,
    }


def destination(emulator: OpikEmulator, transport: HttpTransport, **overrides: str) -> Any:
    return OpikDestination(OpikConfig().load(config(emulator, **overrides)), transport)


def test_delivery_sends_traces_then_spans_and_retries_replace(
    opik: OpikEmulator, transport: HttpTransport
) -> None:
    traces = [CASES["span and parent"], CASES["tool call"]]
    target = destination(opik, transport)
    for _ in range(2):
        results = target.deliver_batch(traces, CONTEXT)
        assert [r.outcome for r in results] == [Outcome.DELIVERED] * 2
    requests = opik.receiver.requests()
    assert [r.path for r in requests] == [
        "/v1/private/traces/batch",
        "/v1/private/spans/batch",
    ] * 2
    assert requests[0].headers["authorization"] == API_KEY  # no Bearer
    assert requests[0].headers["comet-workspace"] == WORKSPACE
    assert len(opik.traces) == 2 and len(opik.spans) == 3


def test_wrong_key_and_workspace(opik: OpikEmulator, transport: HttpTransport) -> None:
    trace = CASES["plain chat"]
    assert destination(opik, transport, api_key="bad").deliver(trace, CONTEXT).outcome is (
        Outcome.AUTH_FAILED
    )
    assert destination(opik, transport, workspace="other").deliver(trace, CONTEXT).outcome is (
        Outcome.AUTH_FAILED
    )
    assert opik.traces == {} and opik.spans == {}


def test_spans_failing_after_the_traces_is_the_batchs_outcome(
    opik: OpikEmulator, transport: HttpTransport
) -> None:
    opik.scripted += [Reply(204), Reply(503, b"unavailable")]
    result = destination(opik, transport).deliver(CASES["plain chat"], CONTEXT)
    assert result.outcome is Outcome.RETRYABLE and result.status_code == 503
    opik.scripted.append(Reply(429, b"slow down", {"Retry-After": "3"}))
    result = destination(opik, transport).deliver(CASES["plain chat"], CONTEXT)
    assert (result.outcome, result.retry_after) == (Outcome.RETRYABLE, 3.0)
    assert [r.path for r in opik.receiver.requests()][-1] == "/v1/private/traces/batch"


def test_connection_check(opik: OpikEmulator, transport: HttpTransport) -> None:
    assert destination(opik, transport).test_connection(CONTEXT).ok
    rejected = destination(opik, transport, api_key="opik_wrong").test_connection(CONTEXT)
    assert rejected.outcome is Outcome.AUTH_FAILED and "opik_wrong" not in rejected.message
    probes = opik.receiver.requests("/v1/private/auth")
    assert len(probes) == 2
    assert all(probe.headers["x-test-connection"] == "true" for probe in probes)


def test_config() -> None:
    assert destination_class("opik") is OpikDestination
    loaded = OpikConfig().load({"api_key": "k", "workspace": "w", "project_name": "p"})
    assert loaded["base_url"] == "https://www.comet.com/opik/api"
    assert OpikDestination.secret_fields() == {"api_key", "headers"}


@pytest.mark.integration
def test_end_to_end_through_the_worker(
    worker: Any, service: Any, user_id: str, opik: OpikEmulator
) -> None:
    owner = f"user:{user_id}"
    with pytest.raises(SettingsError, match="rejected"):
        service.add_destination(owner, "opik", "Opik", config(opik, api_key="nope"))
    view = service.add_destination(owner, "opik", "Opik", config(opik))
    for index in range(3):
        broadcast.delay(recent_event(user_id, index, "opik", trace={"span_name": "S"}))
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 3)
    assert len(opik.traces) == 3 and len(opik.spans) == 6
