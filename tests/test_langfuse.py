"""Langfuse: golden batches, Langfuse's own pydantic models, and an emulated ingestion API."""

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
from destinations.budget import truncation_marker
from destinations.json_body import compact_json
from destinations.langfuse import (
    DEFAULT_BASE_URL,
    MAX_BATCH_BYTES,
    LangfuseConfig,
    LangfuseDestination,
    ingestion_batch,
)
from destinations.outcomes import Outcome
from destinations.registry import destination_class
from destinations.trace import Message, Trace
from destinations.transport import HttpTransport
from harness.receiver import Reply
from harness.samples import BASE_TIME, chat_event, error_event, tool_call_event
from harness.waiting import wait_for
from tasks import broadcast
from tests.emulators import recent_event
from tests.emulators.langfuse import PUBLIC_KEY, SECRET_KEY, LangfuseEmulator, batch_problems

DESTINATION = "dst_langfuse"
CONTEXT = DeliveryContext(DESTINATION, "user:user_demo", BASE_TIME + timedelta(hours=1))
PROMPT_TEXTS = ("terse assistant", "What is", "The answer is", "weather", "Paris")


def trace_of(event: dict[str, Any]) -> Trace:
    return build_trace(event)


CASES: dict[str, Trace] = {
    "plain chat": trace_of(chat_event(1)),
    "tool call": trace_of(tool_call_event(2)),
    "streamed": trace_of(chat_event(3, streamed=True, time_to_first_token_ms=120.5)),
    "cached and reasoning": trace_of(tool_call_event(4)),
    "failed": trace_of(error_event(5)),
    "privacy": trace_of(tool_call_event(6)).without_content(),
    "shared trace id": trace_of(chat_event(7, trace={"trace_id": "workflow-42"})),
    "span and parent": trace_of(
        chat_event(
            8,
            trace={
                "trace_id": "workflow-42",
                "span_name": "Summarize",
                "parent_span_id": "00f067aa0ba902b7",
            },
        )
    ),
}


def events_by_type(batch: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {event["type"]: event for event in batch["batch"]}


def test_plain_chat_golden() -> None:
    assert ingestion_batch(CASES["plain chat"], DESTINATION) == {
        "batch": [
            {
                "id": "4ed32adb-8fec-496d-aca0-9277a53ea963",
                "type": "trace-create",
                "timestamp": "2026-11-23T10:00:01.850Z",
                "body": {
                    "id": "9e76de74a9dc54bcc363c3bbc9fa2020",
                    "timestamp": "2026-11-23T10:00:01.000Z",
                    "name": "Demo",
                    "metadata": {"feature": "arithmetic"},
                    "userId": "end-user-7",
                    "sessionId": "session-0",
                    "environment": "demo",
                    # Previews: the full messages travel once, on the generation.
                    "input": "What is 1 + 1?",
                    "output": "The answer is 2.",
                },
            },
            {
                "id": "ebd16fb8-58d8-4904-b676-309ffd827502",
                "type": "generation-create",
                "timestamp": "2026-11-23T10:00:01.850Z",
                "body": {
                    "id": "aaee777a649fc26a",
                    "traceId": "9e76de74a9dc54bcc363c3bbc9fa2020",
                    "name": "openai/gpt-4o",
                    "startTime": "2026-11-23T10:00:01.000Z",
                    "endTime": "2026-11-23T10:00:01.850Z",
                    "completionStartTime": "2026-11-23T10:00:01.310Z",
                    "model": "openai/gpt-4o",
                    "modelParameters": {"max_tokens": 64, "temperature": 0.2},
                    "usageDetails": {"input": 21, "output": 7, "total": 28},
                    "costDetails": {"input": 0.0000525, "output": 0.0000705, "total": 0.000123},
                    "metadata": {
                        "provider": "OpenAI",
                        "request_id": "gen-000001",
                        "streamed": True,
                        "tools_offered": False,
                        "tool_calls_made": False,
                        "finish_reasons": ["stop"],
                    },
                    "environment": "demo",
                    "input": [
                        {"role": "system", "content": "You are a terse assistant."},
                        {"role": "user", "content": "What is 1 + 1?"},
                    ],
                    "output": {"role": "assistant", "content": "The answer is 2."},
                },
            },
        ]
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_case_is_a_valid_langfuse_batch(case: str) -> None:
    batch = json.loads(compact_json(ingestion_batch(CASES[case], DESTINATION)))
    assert batch_problems(batch) == []


def test_the_validator_catches_what_langfuse_refuses() -> None:
    batch = ingestion_batch(CASES["plain chat"], DESTINATION)
    generation = dict(batch["batch"][1], body={**batch["batch"][1]["body"], "level": "LOUD"})
    unknown = dict(batch["batch"][0], body={**batch["batch"][0]["body"], "userid": "x"})
    problems = batch_problems({"batch": [generation, unknown]})
    assert any(p.startswith("batch.0:") and "level" in p for p in problems)
    assert any(p.startswith("batch.1:") and "'userid'" in p for p in problems)


def test_tool_call_keeps_arguments_placeholders_and_tool_definitions() -> None:
    generation = events_by_type(ingestion_batch(CASES["tool call"], DESTINATION))[
        "generation-create"
    ]["body"]
    assert generation["input"] == [
        {"role": "user", "content": "What's the weather where this photo was taken?\n[image]"}
    ]
    assert generation["output"]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    assert generation["metadata"]["tools"][0]["function"]["name"] == "get_weather"
    assert generation["metadata"]["tool_calls_made"] is True
    assert generation["modelParameters"] == {"tool_choice": "auto"}


def test_streamed_request_sets_completion_start_from_time_to_first_token() -> None:
    generation = events_by_type(ingestion_batch(CASES["streamed"], DESTINATION))[
        "generation-create"
    ]["body"]
    assert generation["startTime"] == "2026-11-23T10:00:03.000Z"
    assert generation["completionStartTime"] == "2026-11-23T10:00:03.120Z"
    assert generation["metadata"]["streamed"] is True


def test_cached_and_reasoning_tokens_are_separate_usage_buckets() -> None:
    generation = events_by_type(ingestion_batch(CASES["cached and reasoning"], DESTINATION))[
        "generation-create"
    ]["body"]
    # 1200 prompt = 150 fresh + 1000 cached + 50 written; 300 completion = 180 + 120 reasoning.
    assert generation["usageDetails"] == {
        "input": 150,
        "input_cached_tokens": 1000,
        "input_cache_creation": 50,
        "output": 180,
        "output_reasoning_tokens": 120,
        "total": 1500,
    }


def test_failed_request_is_an_error_level_generation() -> None:
    generation = events_by_type(ingestion_batch(CASES["failed"], DESTINATION))["generation-create"][
        "body"
    ]
    assert generation["level"] == "ERROR"
    assert generation["statusMessage"] == "Upstream provider returned 502"
    assert generation["metadata"]["error_code"] == "502"
    assert "output" not in generation
    assert generation["usageDetails"]["output"] == 0


def test_privacy_mode_sends_no_content_but_keeps_the_rest() -> None:
    body = compact_json(ingestion_batch(CASES["privacy"], DESTINATION))
    for text in PROMPT_TEXTS:
        assert text.encode() not in body
    events = events_by_type(json.loads(body))
    generation, trace_body = events["generation-create"]["body"], events["trace-create"]["body"]
    for observed in (generation, trace_body):
        assert "input" not in observed and "output" not in observed
    assert "tools" not in generation["metadata"]
    assert generation["metadata"]["privacy_mode"] is True
    assert generation["usageDetails"]["total"] == 1500
    assert generation["costDetails"]["total"] == 0.000123
    assert generation["model"] == "openai/gpt-4o"
    assert generation["completionStartTime"] == "2026-11-23T10:00:06.310Z"
    assert trace_body["metadata"] == {"feature": "arithmetic"}
    assert trace_body["userId"] == "end-user-7"


def test_requests_sharing_a_trace_id_land_in_one_trace() -> None:
    first = trace_of(chat_event(7, trace={"trace_id": "workflow-42"}))
    second = trace_of(chat_event(9, trace={"trace_id": "workflow-42"}))
    a = events_by_type(ingestion_batch(first, DESTINATION))
    b = events_by_type(ingestion_batch(second, DESTINATION))
    assert a["trace-create"]["body"]["id"] == b["trace-create"]["body"]["id"] == "workflow-42"
    assert a["generation-create"]["body"]["traceId"] == "workflow-42"
    assert a["generation-create"]["body"]["id"] != b["generation-create"]["body"]["id"]
    assert a["trace-create"]["id"] != b["trace-create"]["id"]
    # A shared trace's input/output would be overwritten by each request: not set.
    assert "input" not in a["trace-create"]["body"]
    assert a["trace-create"]["body"]["name"] == "openai/gpt-4o"


def test_span_name_and_parent_span_id_build_the_hierarchy() -> None:
    events = events_by_type(ingestion_batch(CASES["span and parent"], DESTINATION))
    span, generation = events["span-create"]["body"], events["generation-create"]["body"]
    assert span["name"] == "Summarize"
    assert span["parentObservationId"] == "00f067aa0ba902b7"
    assert span["traceId"] == generation["traceId"] == "workflow-42"
    assert generation["parentObservationId"] == span["id"]
    assert (span["startTime"], span["endTime"]) == (generation["startTime"], generation["endTime"])


def test_parent_span_id_without_span_name_parents_the_generation() -> None:
    trace = trace_of(chat_event(10, trace={"parent_span_id": "00f067aa0ba902b7"}))
    events = events_by_type(ingestion_batch(trace, DESTINATION))
    assert "span-create" not in events
    assert events["generation-create"]["body"]["parentObservationId"] == "00f067aa0ba902b7"


def test_ids_are_deterministic_per_request_and_destination() -> None:
    trace = CASES["span and parent"]
    assert compact_json(ingestion_batch(trace, DESTINATION)) == compact_json(
        ingestion_batch(trace, DESTINATION)
    )

    def ids(batch: dict[str, Any]) -> set[str]:
        return {event["id"] for event in batch["batch"]} | {
            event["body"]["id"] for event in batch["batch"] if event["type"] != "trace-create"
        }

    mine, theirs = ids(ingestion_batch(trace, DESTINATION)), ids(ingestion_batch(trace, "dst_2"))
    assert len(mine) == 5  # three envelopes, a span and a generation
    assert not mine & theirs
    plain = CASES["plain chat"]
    assert (
        ingestion_batch(plain, DESTINATION)["batch"][0]["body"]["id"]
        != ingestion_batch(plain, "dst_2")["batch"][0]["body"]["id"]
    )


def test_environment_langfuse_refuses_stays_in_metadata() -> None:
    trace = trace_of(chat_event(11, trace={"environment": "Prod EU", "release": "2.1.0"}))
    body = ingestion_batch(trace, DESTINATION)["batch"][0]["body"]
    assert "environment" not in body
    assert body["metadata"] == {"environment": "Prod EU"}
    assert body["release"] == "2.1.0"
    assert batch_problems(ingestion_batch(trace, DESTINATION)) == []


def test_config_schema() -> None:
    assert destination_class("langfuse") is LangfuseDestination
    config = LangfuseConfig().load({"public_key": "pk", "secret_key": "sk"})
    assert config["base_url"] == DEFAULT_BASE_URL
    assert LangfuseDestination.secret_fields() == {"secret_key", "headers"}  # headers: every type's
    assert LangfuseDestination.url_fields() == {"base_url"}
    with pytest.raises(marshmallow.ValidationError):
        LangfuseConfig().load({"public_key": "pk"})
    with pytest.raises(marshmallow.ValidationError):
        LangfuseConfig().load({"public_key": "pk", "secret_key": "sk", "host": "x"})


# --- against the emulator -----------------------------------------------------------------


@pytest.fixture(scope="module")
def langfuse_server() -> Iterator[LangfuseEmulator]:
    with LangfuseEmulator() as emulator:
        yield emulator


@pytest.fixture
def langfuse(langfuse_server: LangfuseEmulator) -> LangfuseEmulator:
    langfuse_server.reset()
    return langfuse_server


def destination(
    emulator: LangfuseEmulator, transport: HttpTransport, secret_key: str = SECRET_KEY
) -> LangfuseDestination:
    config = LangfuseConfig().load(
        {
            "public_key": PUBLIC_KEY,
            "secret_key": secret_key,
            "base_url": emulator.url + "/",
            "ingestion": "legacy",
        }
    )
    return LangfuseDestination(config, transport)


def test_delivery_is_accepted_and_retries_are_deduplicated(
    langfuse: LangfuseEmulator, transport: HttpTransport
) -> None:
    target = destination(langfuse, transport)
    trace = CASES["span and parent"]
    first = target.deliver(trace, CONTEXT)
    again = target.deliver(trace, CONTEXT)
    assert first.outcome is again.outcome is Outcome.DELIVERED
    assert first.status_code == 207 and first.rejected == ()
    assert len(langfuse.ingestion_requests()) == 2
    assert len(langfuse.events) == 3  # the retry replaced its own events
    request = langfuse.ingestion_requests()[0]
    assert request.headers["content-type"] == "application/json"
    assert langfuse.stored("generation-create")[0]["body"]["parentObservationId"]


def test_wrong_keys_are_auth_failed(langfuse: LangfuseEmulator, transport: HttpTransport) -> None:
    result = destination(langfuse, transport, secret_key="sk-wrong").deliver(
        CASES["plain chat"], CONTEXT
    )
    assert result.outcome is Outcome.AUTH_FAILED
    assert result.status_code == 401
    assert langfuse.events == {}


def test_multi_status_with_one_rejected_event_is_delivered_and_recorded(
    langfuse: LangfuseEmulator, transport: HttpTransport
) -> None:
    langfuse.reject_types = {"span-create"}
    trace = CASES["span and parent"]
    result = destination(langfuse, transport).deliver(trace, CONTEXT)
    assert result.outcome is Outcome.DELIVERED  # 4xx items are not retried
    span_event_id = events_by_type(ingestion_batch(trace, DESTINATION))["span-create"]["id"]
    assert len(result.rejected) == 1
    assert result.rejected[0].startswith(f"{span_event_id}: HTTP 400 Invalid request data")
    assert {event["type"] for event in langfuse.events.values()} == {
        "trace-create",
        "generation-create",
    }


def test_multi_status_with_every_event_rejected_is_permanent(
    langfuse: LangfuseEmulator, transport: HttpTransport
) -> None:
    langfuse.reject_types = {"trace-create", "generation-create"}
    result = destination(langfuse, transport).deliver(CASES["plain chat"], CONTEXT)
    assert result.outcome is Outcome.PERMANENT
    assert len(result.rejected) == 2
    assert "Invalid request data" in (result.error or "")


def test_multi_status_with_a_server_error_item_is_retried(
    langfuse: LangfuseEmulator, transport: HttpTransport
) -> None:
    langfuse.scripted.append(
        Reply(
            207,
            json.dumps(
                {
                    "successes": [{"id": "a", "status": 201}],
                    "errors": [{"id": "b", "status": 500, "message": "queue unavailable"}],
                }
            ).encode(),
        )
    )
    result = destination(langfuse, transport).deliver(CASES["plain chat"], CONTEXT)
    assert result.outcome is Outcome.RETRYABLE
    assert result.rejected == ("b: HTTP 500 queue unavailable",)


def test_an_unreadable_multi_status_is_retried_not_assumed_delivered(
    langfuse: LangfuseEmulator, transport: HttpTransport
) -> None:
    langfuse.scripted.append(Reply(207, b'{"successes": [{"id": "a"'))
    result = destination(langfuse, transport).deliver(CASES["plain chat"], CONTEXT)
    assert result.outcome is Outcome.RETRYABLE
    assert (result.error or "").startswith("unreadable 207 body")


def test_rate_limit_is_retryable_after_the_given_delay(
    langfuse: LangfuseEmulator, transport: HttpTransport
) -> None:
    langfuse.scripted.append(Reply(429, b'{"message":"rate limited"}', {"Retry-After": "7"}))
    result = destination(langfuse, transport).deliver(CASES["plain chat"], CONTEXT)
    assert result.outcome is Outcome.RETRYABLE
    assert result.status_code == 429
    assert result.retry_after == 7.0


def test_connection_check(langfuse: LangfuseEmulator, transport: HttpTransport) -> None:
    assert destination(langfuse, transport).test_connection(CONTEXT).ok
    rejected = destination(langfuse, transport, secret_key="sk-wrong").test_connection(CONTEXT)
    assert rejected.outcome is Outcome.AUTH_FAILED
    assert "keys rejected" in rejected.message
    assert "sk-wrong" not in rejected.message
    langfuse.projects = []
    empty = destination(langfuse, transport).test_connection(CONTEXT)
    assert not empty.ok and "no Langfuse project" in empty.message
    request = langfuse.receiver.requests("/api/public/projects")[0]
    assert request.method == "GET"


def test_large_content_is_truncated_with_a_marker_before_sending(
    langfuse: LangfuseEmulator, transport: HttpTransport
) -> None:
    big = "x" * 4_000_000
    trace = dataclasses.replace(
        CASES["plain chat"], input_messages=(Message(role="user", content=big),)
    )
    result = destination(langfuse, transport).deliver(trace, CONTEXT)
    assert result.outcome is Outcome.DELIVERED
    body = langfuse.ingestion_requests()[0].body
    assert len(body) <= MAX_BATCH_BYTES
    assert "…[truncated " in body.decode()
    assert truncation_marker(0)[:11] in body.decode()


def test_a_payload_that_cannot_fit_is_permanent_and_not_sent(
    langfuse: LangfuseEmulator, transport: HttpTransport
) -> None:
    many = tuple(Message(role="user", content="y" * 300) for _ in range(16_000))
    trace = dataclasses.replace(CASES["plain chat"], input_messages=many)
    target = destination(langfuse, transport)
    with pytest.raises(PayloadTooLarge):
        target.build_request(trace, CONTEXT)
    result = target.deliver(trace, CONTEXT)
    assert result.outcome is Outcome.PERMANENT
    assert (result.error or "").startswith("payload too large")
    assert langfuse.ingestion_requests() == []


# --- end to end: broadcast.delay, a real worker, the emulator -----------------------------


@pytest.mark.integration
def test_end_to_end_through_the_worker(
    worker: Any, service: Any, user_id: str, langfuse: LangfuseEmulator
) -> None:
    owner = f"user:{user_id}"
    config = {
        "public_key": PUBLIC_KEY,
        "secret_key": "sk-wrong",
        "base_url": langfuse.url,
        "ingestion": "legacy",
    }
    with pytest.raises(SettingsError, match="keys rejected"):
        service.add_destination(owner, "langfuse", "Langfuse", config)
    assert service.list_destinations(owner) == []

    view = service.add_destination(
        owner, "langfuse", "Langfuse", {**config, "secret_key": SECRET_KEY}
    )
    langfuse.reject_types = {"span-create"}
    broadcast.delay(
        recent_event(user_id, 1, "langfuse", trace={"trace_id": "wf-e2e", "span_name": "Step"})
    )
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 1, what="delivered")
    (entry,) = service.deliveries(view["id"])
    assert entry["outcome"] == "delivered" and entry["status_code"] == 207
    assert len(entry["rejected"]) == 1 and "HTTP 400" in entry["rejected"][0]
    (generation,) = langfuse.stored("generation-create")
    assert generation["body"]["traceId"] == "wf-e2e"
    assert generation["body"]["metadata"]["request_id"] == f"{user_id}-langfuse-1"
    assert len(langfuse.ingestion_requests()) == 1  # a 4xx item is not retried
