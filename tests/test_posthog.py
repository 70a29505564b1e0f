"""PostHog: our `$ai_generation` against the `posthog` SDK's own, captured by the same
loopback endpoint; the mapping; the SDK's size limits; outcomes; Test Connection; and end
to end through a real worker."""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import posthog.consumer
import pytest
from posthog import Posthog
from posthog.ai.utils import capture_streaming_event

from broadcast_engine.events import build_trace
from broadcast_interfaces.service import SettingsError
from destinations.base import DeliveryContext, PayloadTooLarge
from destinations.chat_format import chat_messages
from destinations.json_body import compact_json
from destinations.outcomes import Outcome
from destinations.posthog import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    PosthogConfig,
    PosthogDestination,
    events,
    metadata_value,
)
from destinations.registry import destination_class
from destinations.trace import Message, Trace
from destinations.transport import HttpTransport
from harness.receiver import Reply
from harness.samples import BASE_TIME, chat_event, error_event, tool_call_event
from harness.waiting import wait_for
from tasks import broadcast
from tests.emulators import recent_event
from tests.emulators.posthog import API_KEY, PosthogEmulator, envelope_problems

DESTINATION = "dst_posthog"
CONTEXT = DeliveryContext(DESTINATION, "user:user_demo", BASE_TIME + timedelta(hours=1))
# What the SDK's own `$ai_generation` has that ours leaves out, each on purpose (the
# module docstring says why): the upstream base URL and the SDK's self-identification.
SDK_ONLY = {"$ai_base_url", "$ai_lib", "$ai_lib_version", "$ai_tokens_source"}
PROMPT_TEXTS = ("weather", "Paris", "get_weather", "terse", "What is")


@pytest.fixture(scope="module")
def posthog_server() -> Iterator[PosthogEmulator]:
    with PosthogEmulator() as emulator:
        yield emulator


@pytest.fixture
def emulator(posthog_server: PosthogEmulator) -> PosthogEmulator:
    posthog_server.reset()
    return posthog_server


def destination(
    emulator: PosthogEmulator, transport: HttpTransport, api_key: str = API_KEY
) -> PosthogDestination:
    config = PosthogConfig().load({"api_key": api_key, "endpoint": emulator.url})
    return PosthogDestination(config, transport)


def generation(trace: Trace) -> dict[str, Any]:
    return events(trace, DESTINATION)[-1]


def sdk_generation(trace: Trace, emulator: PosthogEmulator) -> dict[str, Any]:
    """The same generation captured by the posthog SDK itself (its streaming path, which
    takes already formatted data), as it arrived at the emulator."""
    client = Posthog(API_KEY, host=emulator.url, sync_mode=True)
    usage = trace.usage
    kwargs: dict[str, Any] = {
        "model": trace.model,
        "messages": chat_messages(trace.input_messages),
        **trace.model_parameters,
    }
    if trace.tools:
        kwargs["tools"] = list(trace.tools)
    capture_streaming_event(
        client,
        {
            "provider": "openai",
            "model": trace.model,
            "base_url": "https://gateway.example/api/v1",
            "kwargs": kwargs,
            "formatted_input": [dict(m) for m in chat_messages(trace.input_messages)],
            "formatted_output": [dict(m) for m in chat_messages(trace.output_messages)],
            "usage_stats": {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_read_input_tokens": usage.cached_input_tokens or 0,
                "cache_creation_input_tokens": usage.cache_write_input_tokens or 0,
                "reasoning_tokens": usage.reasoning_tokens or 0,
            },
            "latency": trace.duration_ms / 1000.0,
            "distinct_id": trace.end_user,
            "trace_id": trace.grouping_id,
            "properties": {"$ai_session_id": trace.session_id},
            "privacy_mode": False,
            "groups": None,
            "stop_reason": trace.finish_reasons[0],
        },
    )
    client.shutdown()
    (envelope,) = emulator.envelopes
    emulator.reset()
    return envelope


def test_our_batch_agrees_with_the_sdks_on_envelope_event_and_ai_properties(
    emulator: PosthogEmulator, transport: HttpTransport
) -> None:
    trace = build_trace(tool_call_event(2, trace={"trace_id": "wf-1", "generation_name": "G"}))
    sdk_envelope = sdk_generation(trace, emulator)
    assert destination(emulator, transport).deliver(trace, CONTEXT).outcome is Outcome.DELIVERED
    (ours,) = emulator.envelopes
    assert set(ours) == set(sdk_envelope)  # api_key, batch, historical_migration, sent_at
    (theirs,) = sdk_envelope["batch"]
    (mine,) = ours["batch"]
    assert set(mine) == set(theirs)  # event, distinct_id, properties, timestamp, uuid
    assert mine["event"] == theirs["event"] == "$ai_generation"
    assert mine["distinct_id"] == theirs["distinct_id"] == "end-user-7"
    sdk_ai = {k for k in theirs["properties"] if k.startswith("$ai_")}
    assert sdk_ai - set(mine["properties"]) == SDK_ONLY
    for name in sdk_ai - SDK_ONLY:
        ours_value, sdk_value = mine["properties"][name], theirs["properties"][name]
        assert type(ours_value) is type(sdk_value), name
    for name in (
        "$ai_trace_id",
        "$ai_model",
        "$ai_provider",
        "$ai_input_tokens",
        "$ai_output_tokens",
        "$ai_cache_read_input_tokens",
        "$ai_cache_creation_input_tokens",
        "$ai_reasoning_tokens",
        "$ai_latency",
        "$ai_session_id",
        "$ai_input",
        "$ai_output_choices",
        "$ai_tools",
        "$ai_stop_reason",
        "$ai_http_status",
    ):
        assert mine["properties"][name] == theirs["properties"][name], name
    assert mine["properties"]["$geoip_disable"] is theirs["properties"]["$geoip_disable"]
    # The required names, with their types.
    required = {
        "$ai_trace_id": str,
        "$ai_model": str,
        "$ai_provider": str,
        "$ai_input_tokens": int,
        "$ai_output_tokens": int,
        "$ai_latency": float,
        "$ai_session_id": str,
        "$ai_input": list,
        "$ai_output_choices": list,
        "$ai_total_cost_usd": float,
    }
    for name, kind in required.items():
        assert type(mine["properties"][name]) is kind, name


def test_mapping_of_the_trace_keys() -> None:
    trace = build_trace(
        chat_event(
            3,
            trace={
                "trace_id": "workflow_12345",
                "trace_name": "Document Processing",
                "generation_name": "Generate Summary",
                "feature": "support",
                "deep": {"a": {"b": {"c": {"d": 1}}, "keep": [1, [2, [3]]]}},
            },
        )
    )
    properties = generation(trace)["properties"]
    assert properties["$ai_trace_id"] == "workflow_12345"
    assert properties["$ai_span_name"] == "Generate Summary"
    assert properties["trace_name"] == "Document Processing"
    assert "$ai_trace_name" not in properties
    assert properties["metadata_feature"] == "support"
    # The value is level 1, `a` level 2, `b` and `keep` level 3: containers below them go.
    assert properties["metadata_deep"] == {
        "a": {"b": {"c": "[truncated]"}, "keep": [1, "[truncated]"]}
    }
    assert properties["$ai_session_id"] == "session-1"
    assert properties["$ai_input_tokens"] == 21 and properties["$ai_output_tokens"] == 7
    assert properties["$ai_cache_reporting_exclusive"] is False
    assert properties["$ai_total_cost_usd"] == 0.000123
    assert properties["$ai_input_cost_usd"] == 0.0000525
    assert properties["$ai_time_to_first_token"] == 0.31
    assert properties["$ai_provider"] == "openai"
    assert "$process_person_profile" not in properties


def test_metadata_depth_cap() -> None:
    assert metadata_value("x") == "x"
    assert metadata_value({"a": {"b": {"c": 1}}}) == {"a": {"b": {"c": 1}}}  # 3 levels
    assert metadata_value({"a": {"b": {"c": {"d": 1}}}}) == {"a": {"b": {"c": "[truncated]"}}}
    assert metadata_value([[["x"]]]) == [[["x"]]]
    assert metadata_value([[[["x"]]]]) == [[["[truncated]"]]]


def test_without_an_end_user_the_owner_is_the_person_less_distinct_id() -> None:
    trace = build_trace(chat_event(4, user=None))
    event = generation(trace)
    assert event["distinct_id"] == "user:user_demo"
    assert event["properties"]["$process_person_profile"] is False


def test_span_name_adds_a_span_event_above_the_generation() -> None:
    trace = build_trace(
        chat_event(5, trace={"span_name": "Summarization Step", "parent_span_id": "caller-9"})
    )
    span, gen = events(trace, DESTINATION)
    assert span["event"] == "$ai_span"
    assert span["properties"]["$ai_span_name"] == "Summarization Step"
    assert span["properties"]["$ai_parent_id"] == "caller-9"
    assert gen["properties"]["$ai_parent_id"] == span["properties"]["$ai_span_id"]
    assert span["uuid"] != gen["uuid"]
    assert span["properties"]["$ai_trace_id"] == gen["properties"]["$ai_trace_id"]


def test_failed_request() -> None:
    properties = generation(build_trace(error_event(6)))["properties"]
    assert properties["$ai_is_error"] is True
    assert properties["$ai_error"] == "Upstream provider returned 502"
    assert properties["$ai_http_status"] == 502
    assert "$ai_output_choices" not in properties


def test_privacy_mode_leaves_out_input_output_and_tools() -> None:
    trace = build_trace(tool_call_event(7)).without_content()
    body = compact_json(events(trace, DESTINATION))
    for text in PROMPT_TEXTS:
        assert text.encode() not in body, text
    properties = generation(trace)["properties"]
    for name in ("$ai_input", "$ai_output_choices", "$ai_tools"):
        assert name not in properties
    assert properties["$ai_input_tokens"] == 1200
    assert properties["$ai_total_cost_usd"] == 0.000123
    assert properties["$ai_model"] == "openai/gpt-4o"


def test_uuids_are_stable_per_request_and_destination() -> None:
    trace = build_trace(chat_event(8, trace={"span_name": "S"}))
    first = [event["uuid"] for event in events(trace, DESTINATION)]
    assert first == [event["uuid"] for event in events(trace, DESTINATION)]
    other = [event["uuid"] for event in events(trace, "dst_other")]
    assert not set(first) & set(other)


def test_limits_are_the_sdks() -> None:
    assert MAX_EVENT_BYTES == posthog.consumer.MAX_MSG_SIZE
    assert MAX_BATCH_BYTES == posthog.consumer.BATCH_SIZE_LIMIT
    flush_at = inspect.signature(Posthog.__init__).parameters["flush_at"].default
    assert MAX_BATCH_EVENTS == flush_at


def test_a_large_event_is_truncated_to_the_event_limit(transport: HttpTransport) -> None:
    trace = dataclasses.replace(
        build_trace(chat_event(9)),
        input_messages=(Message(role="user", content="x" * 3_000_000),),
    )
    target = PosthogDestination(PosthogConfig().load({"api_key": API_KEY}), transport)
    request = target.build_request(trace, CONTEXT)
    (event,) = json.loads(request.body)["batch"]
    assert len(compact_json(event)) <= MAX_EVENT_BYTES
    assert "…[truncated " in event["properties"]["$ai_input"][0]["content"]


def test_an_event_that_cannot_fit_is_refused(transport: HttpTransport) -> None:
    many = tuple(Message(role="user", content="y" * 300) for _ in range(4000))
    trace = dataclasses.replace(build_trace(chat_event(10)), input_messages=many)
    target = PosthogDestination(PosthogConfig().load({"api_key": API_KEY}), transport)
    with pytest.raises(PayloadTooLarge):
        target.build_request(trace, CONTEXT)


def test_a_big_batch_is_split_within_the_request_limits(
    emulator: PosthogEmulator, transport: HttpTransport
) -> None:
    big = "z" * 600_000
    traces = [
        dataclasses.replace(
            build_trace(chat_event(100 + i, trace={"span_name": "S"})),
            input_messages=(Message(role="user", content=big),),
        )
        for i in range(20)
    ] + [build_trace(chat_event(200 + i, trace={"span_name": "S"})) for i in range(120)]
    results = destination(emulator, transport).deliver_batch(traces, CONTEXT)
    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    requests = emulator.capture_requests()
    assert len(requests) >= 5
    for request in requests:
        assert len(request.body) <= MAX_BATCH_BYTES
        assert len(json.loads(request.body)["batch"]) <= MAX_BATCH_EVENTS
        assert request.path == "/batch/"
    assert len(emulator.events) == 2 * len(traces)


def test_retries_do_not_duplicate(emulator: PosthogEmulator, transport: HttpTransport) -> None:
    trace = build_trace(chat_event(11))
    target = destination(emulator, transport)
    assert target.deliver(trace, CONTEXT).outcome is Outcome.DELIVERED
    assert target.deliver(trace, CONTEXT).outcome is Outcome.DELIVERED
    assert len(emulator.capture_requests()) == 2 and len(emulator.events) == 1
    for envelope in emulator.envelopes:
        assert envelope_problems(envelope) == []


@pytest.mark.parametrize(
    ("reply", "outcome", "retry_after"),
    [
        (Reply(429, b'{"detail":"rate limited"}', {"Retry-After": "7"}), Outcome.RETRYABLE, 7.0),
        (Reply(503, b"unavailable"), Outcome.RETRYABLE, None),
        (Reply(400, b'{"detail":"bad"}'), Outcome.PERMANENT, None),
        (Reply(413, b'{"detail":"too large"}'), Outcome.PERMANENT, None),
        (Reply(401, b'{"detail":"invalid key"}'), Outcome.AUTH_FAILED, None),
    ],
)
def test_outcomes(
    emulator: PosthogEmulator,
    transport: HttpTransport,
    reply: Reply,
    outcome: Outcome,
    retry_after: float | None,
) -> None:
    emulator.scripted.append(reply)
    result = destination(emulator, transport).deliver(build_trace(chat_event(12)), CONTEXT)
    assert result.outcome is outcome
    assert result.retry_after == retry_after


def test_connection_check_asks_the_flags_endpoint(
    emulator: PosthogEmulator, transport: HttpTransport
) -> None:
    assert destination(emulator, transport).test_connection(CONTEXT).ok
    rejected = destination(emulator, transport, api_key="phc_wrong").test_connection(CONTEXT)
    assert rejected.outcome is Outcome.AUTH_FAILED
    assert "rejected" in rejected.message and "phc_wrong" not in rejected.message
    probes = emulator.receiver.requests("/flags/")
    assert len(probes) == 2
    assert all(probe.headers["x-test-connection"] == "true" for probe in probes)
    assert emulator.events == {}  # the probe captured nothing


def test_config() -> None:
    assert destination_class("posthog") is PosthogDestination
    config = PosthogConfig().load({"api_key": "phc_x"})
    assert config["endpoint"] == "https://us.i.posthog.com"
    assert PosthogDestination.secret_fields() == {"api_key", "headers"}
    assert PosthogDestination.url_fields() == {"endpoint"}


@pytest.mark.integration
def test_end_to_end_through_the_worker(
    worker: Any, service: Any, user_id: str, emulator: PosthogEmulator
) -> None:
    owner = f"user:{user_id}"
    with pytest.raises(SettingsError, match="rejected"):
        service.add_destination(
            owner, "posthog", "PostHog", {"api_key": "phc_bad", "endpoint": emulator.url}
        )
    view = service.add_destination(
        owner, "posthog", "PostHog", {"api_key": API_KEY, "endpoint": emulator.url}, privacy=True
    )
    for index in range(3):
        broadcast.delay(recent_event(user_id, index, "posthog", trace={"trace_id": "wf-9"}))
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 3)
    captured = list(emulator.events.values())
    assert len(captured) == 3
    for event in captured:
        assert event["properties"]["$ai_trace_id"] == "wf-9"
        assert "$ai_input" not in event["properties"]  # privacy mode
