"""Langfuse v4 (`ingestion: otel`): spans checked against the SDK's attribute constants and
read back through an emulator built from Langfuse's server-side OTel ingestion."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from langfuse._client.attributes import LangfuseOtelSpanAttributes

from broadcast_engine.events import build_trace
from destinations import langfuse_otel
from destinations.base import DeliveryContext
from destinations.langfuse import LangfuseConfig, LangfuseDestination
from destinations.outcomes import Outcome
from destinations.previews import PREVIEW_BYTES
from destinations.trace import Message, Trace
from destinations.transport import HttpTransport
from harness.samples import BASE_TIME, chat_event, error_event, tool_call_event
from harness.waiting import wait_for
from tasks import broadcast
from tests.emulators import recent_event
from tests.emulators.langfuse import LangfuseEmulator
from tests.emulators.langfuse_otel import PUBLIC_KEY, SECRET_KEY, LangfuseOtelEmulator

DESTINATION = "dst_langfuse_v4"
CONTEXT = DeliveryContext(DESTINATION, "user:user_demo", BASE_TIME + timedelta(hours=1))


@pytest.fixture(scope="module")
def server() -> Iterator[LangfuseOtelEmulator]:
    with LangfuseOtelEmulator() as emulator:
        yield emulator


@pytest.fixture
def langfuse(server: LangfuseOtelEmulator) -> LangfuseOtelEmulator:
    server.reset()
    return server


def destination(
    url: str, transport: HttpTransport, secret_key: str = SECRET_KEY, **extra: str
) -> LangfuseDestination:
    config = LangfuseConfig().load(
        {"public_key": PUBLIC_KEY, "secret_key": secret_key, "base_url": url, **extra}
    )
    return LangfuseDestination(config, transport)


def deliver(langfuse: LangfuseOtelEmulator, transport: HttpTransport, trace: Trace) -> Any:
    return destination(langfuse.url, transport).deliver(trace, CONTEXT)


def by_type(observations: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for item in observations:
        grouped.setdefault(item["type"], []).append(item)
    return grouped


def test_every_attribute_name_is_one_the_sdk_defines() -> None:
    sdk = {
        name: value
        for name, value in vars(LangfuseOtelSpanAttributes).items()
        if name.isupper() and isinstance(value, str)
    }
    ours = {
        name: value
        for name, value in vars(langfuse_otel).items()
        if name.isupper() and isinstance(value, str) and name != "TAGS_KEY"
    }
    assert ours and all(sdk.get(name) == value for name, value in ours.items()), {
        name: (value, sdk.get(name)) for name, value in ours.items() if sdk.get(name) != value
    }


def test_default_is_otel_and_legacy_is_a_choice() -> None:
    assert LangfuseConfig().load({"public_key": "pk", "secret_key": "sk"})["ingestion"] == "otel"
    with pytest.raises(Exception, match="Must be one of"):
        LangfuseConfig().load({"public_key": "pk", "secret_key": "sk", "ingestion": "v5"})


def test_a_chat_becomes_a_root_span_and_a_generation(
    langfuse: LangfuseOtelEmulator, transport: HttpTransport
) -> None:
    trace = build_trace(chat_event(1))
    result = deliver(langfuse, transport, trace)
    assert result.outcome is Outcome.DELIVERED and result.status_code == 200
    (request,) = langfuse.export_requests()
    assert request.headers["x-langfuse-ingestion-version"] == "4"
    assert request.headers["content-type"] == "application/x-protobuf"
    observations = langfuse.stored()
    assert langfuse.invalid_spans == 0
    assert all(item["unknown_names"] == [] for item in observations)
    types = by_type(observations)
    (root,), (generation,) = types["SPAN"], types["GENERATION"]
    assert root["parentObservationId"] is None
    assert generation["parentObservationId"] == root["id"]
    # Trace attributes on every observation (v4 queries observations).
    for item in observations:
        assert item["traceName"] == "Demo"
        assert item["userId"] == "end-user-7" and item["sessionId"] == "session-0"
        assert item["environment"] == "demo"
        assert item["metadata"]["feature"] == "arithmetic"
    # The overall input and output on the root; the full messages once, on the generation.
    assert (root["input"], root["output"]) == ("What is 1 + 1?", "The answer is 2.")
    assert generation["input"][1] == {"role": "user", "content": "What is 1 + 1?"}
    assert generation["output"] == {"role": "assistant", "content": "The answer is 2."}
    assert generation["model"] == "openai/gpt-4o"
    assert generation["costDetails"] == {"input": 0.0000525, "output": 0.0000705, "total": 0.000123}
    assert generation["usageDetails"]["total"] == trace.usage.total_tokens
    assert generation["metadata"]["provider"] == "OpenAI"
    assert root["startTimeUnixNano"] < root["endTimeUnixNano"]


def test_span_name_tags_and_error(langfuse: LangfuseOtelEmulator, transport: HttpTransport) -> None:
    event = error_event(2, trace={"span_name": "Step", "tags": ["a", "b"], "tier": {"x": 1}})
    deliver(langfuse, transport, build_trace(event))
    observations = {item["name"]: item for item in langfuse.stored()}
    step = observations["Step"]
    assert step["type"] == "SPAN"
    generation = next(item for item in observations.values() if item["type"] == "GENERATION")
    assert generation["parentObservationId"] == step["id"]
    assert all(item["tags"] == ["a", "b"] for item in observations.values())
    assert all(item["metadata"]["tier"] == '{"x":1}' for item in observations.values())
    assert all(item["level"] == "ERROR" for item in observations.values())
    assert generation["statusMessage"]


def test_requests_sharing_a_trace_id_each_send_their_own_spans(
    langfuse: LangfuseOtelEmulator, transport: HttpTransport
) -> None:
    for index in (3, 4):
        deliver(langfuse, transport, build_trace(chat_event(index, trace={"trace_id": "wf-1"})))
    observations = langfuse.stored()
    assert len({item["traceId"] for item in observations}) == 1
    assert len({item["id"] for item in observations}) == len(observations) == 4
    roots = [item for item in observations if item["parentObservationId"] is None]
    assert len(roots) == 2 and roots[0]["startTimeUnixNano"] != roots[1]["startTimeUnixNano"]
    assert all(item["metadata"]["trace_id"] == "wf-1" for item in observations)


def test_parent_span_id_keeps_the_root_under_the_callers_span(
    langfuse: LangfuseOtelEmulator, transport: HttpTransport
) -> None:
    caller = "00F067AA0BA902B7"
    deliver(langfuse, transport, build_trace(chat_event(5, trace={"parent_span_id": caller})))
    root = next(item for item in langfuse.stored() if item["type"] == "SPAN")
    assert root["parentObservationId"] == caller.lower()
    assert root["traceName"] == "openai/gpt-4o"  # the trace name stays (default: the model)


def test_privacy_mode_sends_usage_and_cost_but_no_content(
    langfuse: LangfuseOtelEmulator, transport: HttpTransport
) -> None:
    deliver(langfuse, transport, build_trace(tool_call_event(6)).without_content())
    for item in langfuse.stored():
        assert item["input"] is None and item["output"] is None
    generation = by_type(langfuse.stored())["GENERATION"][0]
    assert generation["usageDetails"] and generation["metadata"]["privacy_mode"] == "true"


def test_root_preview_is_bounded_while_the_generation_has_it_all(
    langfuse: LangfuseOtelEmulator, transport: HttpTransport
) -> None:
    long = "é" * 5000
    trace = dataclasses.replace(
        build_trace(chat_event(7)), input_messages=(Message(role="user", content=long),)
    )
    deliver(langfuse, transport, trace)
    types = by_type(langfuse.stored())
    assert len(types["SPAN"][0]["input"].encode()) <= PREVIEW_BYTES
    assert types["GENERATION"][0]["input"][0]["content"] == long


def test_wrong_keys_are_auth_failed_and_connection_check(
    langfuse: LangfuseOtelEmulator, transport: HttpTransport
) -> None:
    wrong = destination(langfuse.url, transport, secret_key="sk-wrong")
    assert wrong.deliver(build_trace(chat_event(8)), CONTEXT).outcome is Outcome.AUTH_FAILED
    assert not wrong.test_connection(CONTEXT).ok
    assert destination(langfuse.url, transport).test_connection(CONTEXT).ok


def test_legacy_mode_against_a_v4_server_is_a_clear_permanent_failure(
    transport: HttpTransport,
) -> None:
    # A v4 server in its default write mode: 207 with a 400 per trace/span/generation event.
    with LangfuseEmulator() as v4_legacy_endpoint:
        v4_legacy_endpoint.reject_types = {"trace-create", "span-create", "generation-create"}
        legacy = destination(v4_legacy_endpoint.url, transport, ingestion="legacy")
        result = legacy.deliver(build_trace(chat_event(9)), CONTEXT)
    assert result.outcome is Outcome.PERMANENT and result.status_code == 207
    assert "HTTP 400" in (result.error or "")


@pytest.mark.integration
def test_end_to_end_through_the_worker(
    worker: Any, service: Any, user_id: str, langfuse: LangfuseOtelEmulator
) -> None:
    owner = f"user:{user_id}"
    config = {"public_key": PUBLIC_KEY, "secret_key": SECRET_KEY, "base_url": langfuse.url}
    view = service.add_destination(owner, "langfuse", "Langfuse v4", config)
    broadcast.delay(recent_event(user_id, 1, "langfuse-v4", trace={"span_name": "Step"}))
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 1, what="delivered")
    assert {item["type"] for item in langfuse.stored()} == {"SPAN", "GENERATION"}
    assert len(langfuse.stored()) == 3
