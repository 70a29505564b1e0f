"""Braintrust: golden log rows, Braintrust's OpenAPI schema, an emulated project-logs API."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import marshmallow
import pytest

from broadcast_engine.events import build_trace
from broadcast_interfaces.service import SettingsError
from destinations.base import DeliveryContext, PayloadTooLarge
from destinations.braintrust import (
    DEFAULT_BASE_URL,
    MAX_PAYLOAD_BYTES,
    BraintrustConfig,
    BraintrustDestination,
    insert_request,
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
from tests.emulators.braintrust import API_KEY, PROJECT_ID, BraintrustEmulator, insert_problems

DESTINATION = "dst_braintrust"
CONTEXT = DeliveryContext(DESTINATION, "user:user_demo", BASE_TIME + timedelta(hours=1))
PROMPT_TEXTS = ("terse assistant", "What is", "The answer is", "weather", "Paris")

CASES: dict[str, Trace] = {
    "plain chat": build_trace(chat_event(1)),
    "tool call": build_trace(tool_call_event(2)),
    "streamed": build_trace(chat_event(3, streamed=True, time_to_first_token_ms=120.5)),
    "cached and reasoning": build_trace(tool_call_event(4)),
    "failed": build_trace(error_event(5)),
    "privacy": build_trace(tool_call_event(6)).without_content(),
    "shared trace id": build_trace(
        chat_event(7, trace={"trace_id": "workflow-42", "tags": ["beta", "eu"]})
    ),
    "span and parent": build_trace(
        chat_event(
            8,
            trace={
                "trace_id": "workflow-42",
                "span_name": "Summarize",
                "parent_span_id": "00f067aa0ba902b7",
                "tags": ["beta"],
            },
        )
    ),
}


def rows(trace: Trace, destination: str = DESTINATION) -> list[dict[str, Any]]:
    return insert_request(trace, destination)["events"]


def by_type(trace: Trace) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for row in rows(trace):
        kind = row["span_attributes"]["type"]
        if kind == "task":
            # The top row (this request's own) is named by trace_name; a span_name row is not.
            kind = "root" if row["id"] == rows(trace)[0]["id"] else "span"
        found[kind] = row
    return found


def test_plain_chat_golden() -> None:
    messages = [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 1 + 1?"},
    ]
    answer = [{"role": "assistant", "content": "The answer is 2."}]
    shared = {
        "feature": "arithmetic",
        "environment": "demo",
        "user_id": "end-user-7",
        "session_id": "session-0",
    }
    assert insert_request(CASES["plain chat"], DESTINATION) == {
        "events": [
            {
                "id": "a5ccc20a-3740-4fac-8dc5-b0de5e4d1acf",
                "span_id": "8a21e108b9688165230bd665405681ec",
                "root_span_id": "8a21e108b9688165230bd665405681ec",
                "span_attributes": {"name": "Demo", "type": "task"},
                "metadata": shared,
                "metrics": {"start": 1795428001.0, "end": 1795428001.85},
                "created": "2026-11-23T10:00:01.850000Z",
                # Previews: the full messages travel once, on the LLM row.
                "input": "What is 1 + 1?",
                "output": "The answer is 2.",
            },
            {
                "id": "a0314d4c-ae92-4bb8-aee1-e9a3d818be25",
                "span_id": "a0314d4cae92bbb8",
                "root_span_id": "8a21e108b9688165230bd665405681ec",
                "span_parents": ["8a21e108b9688165230bd665405681ec"],
                "span_attributes": {"name": "openai/gpt-4o", "type": "llm"},
                "metadata": {
                    **shared,
                    "temperature": 0.2,
                    "max_tokens": 64,
                    "model": "openai/gpt-4o",
                    "provider": "OpenAI",
                    "request_id": "gen-000001",
                    "streamed": True,
                    "tools_offered": False,
                    "tool_calls_made": False,
                    "finish_reasons": ["stop"],
                    "cost": {"input": 0.0000525, "output": 0.0000705},
                },
                "created": "2026-11-23T10:00:01.850000Z",
                "metrics": {
                    "start": 1795428001.0,
                    "end": 1795428001.85,
                    "prompt_tokens": 21,
                    "completion_tokens": 7,
                    "tokens": 28,
                    "estimated_cost": 0.000123,
                    "time_to_first_token": 0.31,
                },
                "input": messages,
                "output": answer,
            },
        ]
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_case_matches_braintrusts_openapi_schema(case: str) -> None:
    payload = json.loads(compact_json(insert_request(CASES[case], DESTINATION)))
    assert insert_problems(payload) == []


def test_the_schema_catches_what_braintrust_refuses() -> None:
    payload = insert_request(CASES["plain chat"], DESTINATION)
    payload["events"][0]["metrics"]["start"] = "yesterday"
    payload["events"][1]["span_attributes"]["type"] = "generation"
    payload["events"][1]["inputs"] = []
    assert len(insert_problems(payload)) == 3


def test_tool_call_keeps_arguments_and_tool_definitions() -> None:
    llm = by_type(CASES["tool call"])["llm"]
    assert llm["output"][0]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    assert llm["metadata"]["tools"][0]["function"]["name"] == "get_weather"
    assert llm["metadata"]["tool_choice"] == "auto"
    assert llm["input"][0]["content"].endswith("[image]")


def test_streamed_request_reports_time_to_first_token_in_seconds() -> None:
    metrics = by_type(CASES["streamed"])["llm"]["metrics"]
    assert metrics["time_to_first_token"] == 0.1205
    assert (metrics["start"], metrics["end"]) == (1795428003.0, 1795428003.85)


def test_cached_and_reasoning_tokens() -> None:
    metrics = by_type(CASES["cached and reasoning"])["llm"]["metrics"]
    assert {k: v for k, v in metrics.items() if "token" in k and k != "time_to_first_token"} == {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "tokens": 1500,
        "prompt_cached_tokens": 1000,
        "prompt_cache_creation_tokens": 50,
        "completion_reasoning_tokens": 120,
    }


def test_failed_request_carries_the_error() -> None:
    found = by_type(CASES["failed"])
    assert found["llm"]["error"] == found["root"]["error"] == "Upstream provider returned 502"
    assert found["llm"]["metadata"]["error_code"] == "502"
    assert "output" not in found["llm"]


def test_privacy_mode_sends_no_content_but_keeps_the_rest() -> None:
    body = compact_json(insert_request(CASES["privacy"], DESTINATION))
    for text in PROMPT_TEXTS:
        assert text.encode() not in body
    for row in rows(CASES["privacy"]):
        assert "input" not in row and "output" not in row
    llm = by_type(CASES["privacy"])["llm"]
    assert "tools" not in llm["metadata"]
    assert llm["metadata"]["model"] == "openai/gpt-4o"
    assert llm["metadata"]["feature"] == "arithmetic"
    assert llm["metadata"]["privacy_mode"] is True
    assert llm["metrics"]["tokens"] == 1500
    assert llm["metrics"]["estimated_cost"] == 0.000123
    assert llm["metrics"]["time_to_first_token"] == 0.31


def test_requests_sharing_a_trace_id_each_send_their_own_top_row() -> None:
    first = by_type(build_trace(chat_event(7, trace={"trace_id": "workflow-42"})))
    second = by_type(build_trace(chat_event(9, trace={"trace_id": "workflow-42"})))
    # Neither re-sends (and so overwrites) the other's row: each has its own, its own times.
    assert first["root"]["id"] != second["root"]["id"]
    assert first["root"]["span_id"] != second["root"]["span_id"]
    assert first["root"]["metrics"] != second["root"]["metrics"]
    assert {row["root_span_id"] for row in (*first.values(), *second.values())} == {"workflow-42"}
    assert first["llm"]["span_parents"] == [first["root"]["span_id"]]
    assert first["root"]["input"] == "What is 7 + 7?"


def test_tags_go_on_the_root_row_only() -> None:
    shared_case = CASES["shared trace id"]
    metadata = dataclasses.replace(shared_case.metadata, trace_id=None)
    alone = by_type(dataclasses.replace(shared_case, metadata=metadata))
    assert alone["root"]["tags"] == ["beta", "eu"]
    assert "tags" not in alone["llm"] and "tags" not in alone["llm"]["metadata"]
    shared = by_type(CASES["shared trace id"])  # a top row that is not the trace's root
    assert "tags" not in shared["root"] and shared["llm"]["metadata"]["tags"] == ["beta", "eu"]


def test_span_name_and_parent_span_id_build_the_hierarchy() -> None:
    found = by_type(CASES["span and parent"])
    assert set(found) == {"root", "span", "llm"}  # our top row stays, named by trace_name
    root, span, llm = found["root"], found["span"], found["llm"]
    assert root["span_parents"] == ["00f067aa0ba902b7"]  # under the caller's span
    assert span["span_attributes"] == {"name": "Summarize", "type": "task"}
    assert span["span_parents"] == [root["span_id"]]
    assert llm["span_parents"] == [span["span_id"]]
    assert root["root_span_id"] == span["root_span_id"] == llm["root_span_id"] == "workflow-42"
    assert llm["metadata"]["tags"] == ["beta"]  # tags only live on roots


def test_ids_are_deterministic_per_request_and_destination() -> None:
    trace = CASES["plain chat"]
    assert compact_json(insert_request(trace, DESTINATION)) == compact_json(
        insert_request(trace, DESTINATION)
    )
    mine = {row[key] for row in rows(trace) for key in ("id", "span_id", "root_span_id")}
    theirs = {row[key] for row in rows(trace, "dst_2") for key in ("id", "span_id", "root_span_id")}
    assert len(mine) == 4
    assert not mine & theirs


def test_config_schema() -> None:
    assert destination_class("braintrust") is BraintrustDestination
    config = BraintrustConfig().load({"api_key": "k", "project_id": PROJECT_ID})
    assert config["base_url"] == DEFAULT_BASE_URL
    assert BraintrustDestination.secret_fields() == {"api_key", "headers"}  # headers: every type's
    assert BraintrustDestination.url_fields() == {"base_url"}
    for bad in ("../admin", "", "a b"):
        with pytest.raises(marshmallow.ValidationError):
            BraintrustConfig().load({"api_key": "k", "project_id": bad})


# --- against the emulator -----------------------------------------------------------------


@pytest.fixture(scope="module")
def braintrust_server() -> Iterator[BraintrustEmulator]:
    with BraintrustEmulator() as emulator:
        yield emulator


@pytest.fixture
def braintrust(braintrust_server: BraintrustEmulator) -> BraintrustEmulator:
    braintrust_server.reset()
    return braintrust_server


def destination(
    emulator: BraintrustEmulator,
    transport: HttpTransport,
    api_key: str = API_KEY,
    project_id: str = PROJECT_ID,
) -> BraintrustDestination:
    config = BraintrustConfig().load(
        {"api_key": api_key, "project_id": project_id, "base_url": emulator.url}
    )
    return BraintrustDestination(config, transport)


def test_delivery_inserts_rows_and_retries_replace_them(
    braintrust: BraintrustEmulator, transport: HttpTransport
) -> None:
    trace = CASES["span and parent"]
    target = destination(braintrust, transport)
    assert target.deliver(trace, CONTEXT).outcome is Outcome.DELIVERED
    assert target.deliver(trace, CONTEXT).outcome is Outcome.DELIVERED
    requests = braintrust.insert_requests()
    assert len(requests) == 2
    assert requests[0].path == f"/v1/project_logs/{PROJECT_ID}/insert"
    assert requests[0].headers["authorization"] == f"Bearer {API_KEY}"
    assert sorted(braintrust.rows) == sorted(row["id"] for row in rows(trace))


def test_row_ids_answered_are_the_ids_sent(
    braintrust: BraintrustEmulator, transport: HttpTransport
) -> None:
    trace = CASES["plain chat"]
    request = destination(braintrust, transport).build_request(trace, CONTEXT)
    result = transport.send(request)
    assert result.status_code == 200
    assert json.loads(result.body)["row_ids"] == [row["id"] for row in rows(trace)]


def test_wrong_key_is_auth_failed(braintrust: BraintrustEmulator, transport: HttpTransport) -> None:
    result = destination(braintrust, transport, api_key="wrong").deliver(
        CASES["plain chat"], CONTEXT
    )
    assert result.outcome is Outcome.AUTH_FAILED
    assert braintrust.rows == {}


def test_rate_limit_is_retryable_after_the_given_delay(
    braintrust: BraintrustEmulator, transport: HttpTransport
) -> None:
    braintrust.scripted.append(Reply(429, b"Too many requests", {"Retry-After": "11"}))
    result = destination(braintrust, transport).deliver(CASES["plain chat"], CONTEXT)
    assert result.outcome is Outcome.RETRYABLE
    assert result.retry_after == 11.0


def test_connection_check(braintrust: BraintrustEmulator, transport: HttpTransport) -> None:
    assert destination(braintrust, transport).test_connection(CONTEXT).ok
    rejected = destination(braintrust, transport, api_key="wrong-key").test_connection(CONTEXT)
    assert rejected.outcome is Outcome.AUTH_FAILED
    assert "key rejected" in rejected.message and "wrong-key" not in rejected.message
    other = "0d0b6a4f-0000-4000-8000-000000000000"
    unknown = destination(braintrust, transport, project_id=other).test_connection(CONTEXT)
    assert unknown.outcome is Outcome.PERMANENT
    assert unknown.message.startswith("unknown project") and other in unknown.message
    assert braintrust.receiver.requests("/v1/project/")[0].path == f"/v1/project/{PROJECT_ID}"


def test_connection_check_without_access_to_the_project(
    braintrust: BraintrustEmulator, transport: HttpTransport
) -> None:
    braintrust.scripted.append(Reply(403, b'{"error":"Missing read access"}'))
    check = destination(braintrust, transport).test_connection(CONTEXT)
    assert check.outcome is Outcome.AUTH_FAILED and "no access" in check.message


def test_large_content_is_truncated_with_a_marker_before_sending(
    braintrust: BraintrustEmulator, transport: HttpTransport
) -> None:
    trace = dataclasses.replace(
        CASES["plain chat"], input_messages=(Message(role="user", content="x" * 7_000_000),)
    )
    result = destination(braintrust, transport).deliver(trace, CONTEXT)
    assert result.outcome is Outcome.DELIVERED
    body = braintrust.insert_requests()[0].body
    assert len(body) <= MAX_PAYLOAD_BYTES
    assert "…[truncated " in body.decode()


def test_a_payload_that_cannot_fit_is_permanent_and_not_sent(
    braintrust: BraintrustEmulator, transport: HttpTransport
) -> None:
    many = tuple(Message(role="user", content="y" * 300) for _ in range(24_000))
    trace = dataclasses.replace(CASES["plain chat"], input_messages=many)
    target = destination(braintrust, transport)
    with pytest.raises(PayloadTooLarge):
        target.build_request(trace, CONTEXT)
    assert target.deliver(trace, CONTEXT).outcome is Outcome.PERMANENT
    assert braintrust.insert_requests() == []


# --- end to end: broadcast.delay, a real worker, the emulator -----------------------------


@pytest.mark.integration
def test_end_to_end_through_the_worker(
    worker: Any, service: Any, user_id: str, braintrust: BraintrustEmulator
) -> None:
    owner = f"user:{user_id}"
    config = {"api_key": "wrong-key", "project_id": PROJECT_ID, "base_url": braintrust.url}
    with pytest.raises(SettingsError, match="key rejected"):
        service.add_destination(owner, "braintrust", "Braintrust", config)
    unknown = {**config, "api_key": API_KEY, "project_id": "0d0b6a4f-0000-4000-8000-000000000000"}
    with pytest.raises(SettingsError, match="unknown project"):
        service.add_destination(owner, "braintrust", "Braintrust", unknown)
    assert service.list_destinations(owner) == []

    view = service.add_destination(
        owner, "braintrust", "Braintrust", {**config, "api_key": API_KEY}, privacy=True
    )
    broadcast.delay(
        recent_event(user_id, 1, "braintrust", trace={"trace_id": "wf-bt", "tags": ["e2e"]})
    )
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 1, what="delivered")
    (request,) = braintrust.insert_requests()
    assert b"What is" not in request.body and b"The answer" not in request.body
    stored = list(braintrust.rows.values())
    assert {row["root_span_id"] for row in stored} == {"wf-bt"}
    llm = next(row for row in stored if row["span_attributes"]["type"] == "llm")
    assert llm["metrics"]["tokens"] == 28 and llm["metadata"]["privacy_mode"] is True
    assert service.deliveries(view["id"])[0]["status_code"] == 200
