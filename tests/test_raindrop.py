"""Raindrop: every event (privacy mode included) validated by the `raindrop-ai` SDK's own
pydantic models; the mapping; an emulated track API; and a real worker."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from broadcast_engine.events import build_trace
from broadcast_interfaces.service import SettingsError
from destinations.base import DeliveryContext
from destinations.json_body import compact_json
from destinations.outcomes import Outcome
from destinations.raindrop import (
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    RaindropConfig,
    RaindropDestination,
    track_event,
)
from destinations.registry import destination_class
from destinations.trace import Message, Trace
from destinations.transport import HttpTransport
from harness.receiver import Reply
from harness.samples import BASE_TIME, chat_event, error_event, tool_call_event
from harness.waiting import wait_for
from tasks import broadcast
from tests.emulators import recent_event
from tests.emulators.raindrop import WRITE_KEY, RaindropEmulator, event_problems

DESTINATION = "dst_raindrop"
CONTEXT = DeliveryContext(DESTINATION, "user:user_demo", BASE_TIME + timedelta(hours=1))
CASES: dict[str, Trace] = {
    "plain chat": build_trace(chat_event(1)),
    "tool call": build_trace(tool_call_event(2)),
    "failed": build_trace(error_event(3)),
    "privacy": build_trace(tool_call_event(4)).without_content(),
    "privacy, failed, no user": build_trace(error_event(5, user=None)).without_content(),
    "no user, no session": build_trace(chat_event(6, user=None, session_id=None)),
    "failed without any text": dataclasses.replace(
        build_trace(error_event(7)), input_messages=(Message(role="user", content=""),)
    ),
    "custom keys": build_trace(
        chat_event(8, trace={"trace_id": "t-1", "trace_name": "Time Check", "feature": "x"})
    ),
}


def event(trace: Trace) -> dict[str, Any]:
    return json.loads(compact_json(track_event(trace, DESTINATION)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_event_validates_with_raindrops_models(case: str) -> None:
    assert event_problems(event(CASES[case])) == []


def test_the_models_catch_what_raindrop_refuses() -> None:
    refused = event(CASES["plain chat"])
    refused["ai_data"]["input"] = refused["ai_data"]["output"] = ""
    assert event_problems(refused)
    extra = {**event(CASES["plain chat"]), "attachment": []}
    assert event_problems(extra)
    no_user = {**event(CASES["plain chat"]), "user_id": " "}
    assert event_problems(no_user)


def test_mapping() -> None:
    sent = event(CASES["custom keys"])
    assert sent["user_id"] == "end-user-7"
    assert sent["event"] == "openai/gpt-4o"
    assert sent["ai_data"] == {
        "model": "openai/gpt-4o",
        "input": "What is 8 + 8?",
        "output": "The answer is 16.",
        "convo_id": "session-2",
    }
    properties = sent["properties"]
    assert properties["trace_id"] == "t-1" and properties["trace_name"] == "Time Check"
    assert properties["feature"] == "x"
    for key, value in {
        "model": "openai/gpt-4o",
        "provider": "OpenAI",
        "total_cost": 0.000123,
        "prompt_tokens": 21,
        "completion_tokens": 7,
        "duration_ms": 850.0,
        "finish_reason": "stop",
    }.items():
        assert properties[key] == value, key
    assert sent["timestamp"] == "2026-11-23T10:00:08.850000Z"


def test_tool_calls_are_the_output_when_there_is_no_text() -> None:
    assert event(CASES["tool call"])["ai_data"]["output"] == 'get_weather({"city":"Paris"})'


def test_privacy_mode_replaces_input_and_output_and_keeps_the_rest() -> None:
    sent = event(CASES["privacy"])
    assert sent["ai_data"]["input"] == sent["ai_data"]["output"] == "[redacted]"
    body = compact_json(sent)
    for text in ("weather", "Paris", "get_weather"):
        assert text.encode() not in body
    assert sent["properties"]["total_tokens"] == 1500


def test_without_a_user_the_owner_is_the_user_id() -> None:
    assert event(CASES["no user, no session"])["user_id"] == "user:user_demo"
    assert event(CASES["no user, no session"])["ai_data"]["convo_id"] is None


def test_caller_keys_cannot_pose_as_system_properties() -> None:
    sent = event(build_trace(chat_event(9, trace={"model": "fake", "total_cost": 0})))
    assert sent["properties"]["model"] == "openai/gpt-4o"
    assert sent["properties"]["total_cost"] == 0.000123


def test_event_ids_are_stable_per_request_and_destination() -> None:
    trace = CASES["plain chat"]
    assert event(trace)["event_id"] == event(trace)["event_id"]
    assert track_event(trace, "dst_other")["event_id"] != event(trace)["event_id"]


# --- against the emulator -------------------------------------------------------------


@pytest.fixture(scope="module")
def raindrop_server() -> Iterator[RaindropEmulator]:
    with RaindropEmulator() as emulator:
        yield emulator


@pytest.fixture
def raindrop(raindrop_server: RaindropEmulator) -> RaindropEmulator:
    raindrop_server.reset()
    return raindrop_server


def destination(
    emulator: RaindropEmulator, transport: HttpTransport, key: str = WRITE_KEY
) -> RaindropDestination:
    config = RaindropConfig().load({"write_key": key, "base_url": emulator.url})
    return RaindropDestination(config, transport)


def test_batches_of_at_most_ten_and_retries_replace(
    raindrop: RaindropEmulator, transport: HttpTransport
) -> None:
    traces = list(CASES.values()) * 2  # each twice: the second is a retry of the first
    results = destination(raindrop, transport).deliver_batch(traces, CONTEXT)
    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    requests = raindrop.receiver.requests()
    assert [len(json.loads(r.body)) for r in requests] == [MAX_BATCH_EVENTS, len(traces) - 10]
    assert requests[0].headers["authorization"] == f"Bearer {WRITE_KEY}"
    assert len(raindrop.events) == len(CASES)


def test_a_large_event_is_truncated_to_a_megabyte(
    raindrop: RaindropEmulator, transport: HttpTransport
) -> None:
    trace = dataclasses.replace(
        CASES["plain chat"], input_messages=(Message(role="user", content="q" * 3_000_000),)
    )
    assert destination(raindrop, transport).deliver(trace, CONTEXT).outcome is Outcome.DELIVERED
    (request,) = raindrop.receiver.requests()
    assert len(request.body) <= MAX_EVENT_BYTES + 2
    assert "…[truncated " in json.loads(request.body)[0]["ai_data"]["input"]


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (Reply(429, b"slow", {"Retry-After": "5"}), Outcome.RETRYABLE),
        (Reply(500, b"oops"), Outcome.RETRYABLE),
        (Reply(400, b'{"error":"bad"}'), Outcome.PERMANENT),
    ],
)
def test_outcomes(
    raindrop: RaindropEmulator, transport: HttpTransport, reply: Reply, outcome: Outcome
) -> None:
    raindrop.scripted.append(reply)
    assert destination(raindrop, transport).deliver(CASES["plain chat"], CONTEXT).outcome is (
        outcome
    )


def test_wrong_key_and_connection_check(
    raindrop: RaindropEmulator, transport: HttpTransport
) -> None:
    wrong = destination(raindrop, transport, key="rd_wrong")
    assert wrong.deliver(CASES["plain chat"], CONTEXT).outcome is Outcome.AUTH_FAILED
    check = wrong.test_connection(CONTEXT)
    assert check.outcome is Outcome.AUTH_FAILED and "rd_wrong" not in check.message
    assert destination(raindrop, transport).test_connection(CONTEXT).ok
    probes = [r for r in raindrop.receiver.requests() if r.body == b"[]"]
    assert len(probes) == 2
    assert all(probe.headers["x-test-connection"] == "true" for probe in probes)
    assert raindrop.events == {}


def test_config() -> None:
    assert destination_class("raindrop") is RaindropDestination
    assert RaindropConfig().load({"write_key": "k"})["base_url"] == "https://api.raindrop.ai"
    assert RaindropDestination.secret_fields() == {"write_key", "headers"}


@pytest.mark.integration
def test_end_to_end_through_the_worker(
    worker: Any, service: Any, user_id: str, raindrop: RaindropEmulator
) -> None:
    owner = f"user:{user_id}"
    config = {"write_key": WRITE_KEY, "base_url": raindrop.url}
    with pytest.raises(SettingsError, match="rejected"):
        service.add_destination(owner, "raindrop", "Raindrop", {**config, "write_key": "bad"})
    view = service.add_destination(owner, "raindrop", "Raindrop", config, privacy=True)
    for index in range(3):
        broadcast.delay(recent_event(user_id, index, "raindrop"))
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 3)
    assert len(raindrop.events) == 3
    for sent in raindrop.events.values():
        assert sent["ai_data"]["input"] == "[redacted]"
        assert event_problems(sent) == []
