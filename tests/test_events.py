"""Event validation and the Trace it builds."""

from __future__ import annotations

import json

import pytest

from broadcast_engine.events import InvalidEvent, build_trace
from destinations.trace import Trace
from harness.samples import chat_event, error_event, tool_call_event


def test_chat_event_becomes_trace():
    trace = build_trace(chat_event(4, org_id="acme"))
    assert trace.request_id == "gen-000004"
    assert trace.owner == "org:acme"
    assert [m.role for m in trace.input_messages] == ["system", "user"]
    assert trace.output_messages[0].content == "The answer is 8."
    assert trace.finish_reasons == ("stop",)
    assert trace.model_parameters == {"temperature": 0.2, "max_tokens": 64}
    assert trace.usage.total_tokens == 28
    assert trace.cost.total == pytest.approx(0.000123)
    assert trace.metadata.trace_name == "Demo"
    assert trace.metadata.extra == {"environment": "demo", "feature": "arithmetic"}
    assert trace.time_to_first_token_ms == 310.0
    assert trace.streamed is True
    assert not trace.tools_offered and not trace.tool_calls_made


def test_owner_is_the_user_without_an_organization():
    assert build_trace(chat_event(1)).owner == "user:user_demo"


def test_multimodal_parts_become_placeholders_and_tool_use_is_derived():
    trace = build_trace(tool_call_event(2))
    assert trace.input_messages[0].content.endswith("\n[image]")
    assert "base64" not in repr(trace)
    assert trace.tools_offered and trace.tool_calls_made
    call = trace.output_messages[0].tool_calls[0]
    assert (call.id, call.name, call.arguments) == ("call_1", "get_weather", '{"city":"Paris"}')
    assert trace.usage.cached_input_tokens == 1000
    assert trace.usage.reasoning_tokens == 120


def test_error_event():
    trace = build_trace(error_event(3))
    assert trace.is_error and trace.error.code == "502"
    assert trace.output_messages == ()


def test_wire_round_trip_is_exact():
    for event in (chat_event(1), tool_call_event(2), error_event(3)):
        trace = build_trace(event)
        assert Trace.from_wire(trace.to_wire()) == trace


def test_privacy_drops_content_and_keeps_the_rest():
    trace = build_trace(tool_call_event(2)).without_content()
    assert trace.input_messages == () and trace.output_messages == ()
    assert trace.content_redacted and trace.usage.total_tokens == 1500 and trace.tools_offered


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            chat_event(1, usage={"prompt_tokens": "x", "completion_tokens": 1}),
            "event gen-000001 rejected: usage.prompt_tokens: Not a valid integer.",
        ),
        (chat_event(2, model=None), "event gen-000002 rejected: model: Field may not be null."),
        ({**chat_event(3), "id": None}, "event (no id) rejected: id: Field may not be null."),
        (
            chat_event(4, trace={"parent_span_id": "x" * 257}),
            "event gen-000004 rejected: trace.parent_span_id: Length must be between 1 and 256.",
        ),
        (
            chat_event(5, started_at="yesterday"),
            "event gen-000005 rejected: started_at: Not a valid",
        ),
        (
            chat_event(6, finished_at="2026-11-23T09:00:00Z"),
            "event gen-000006 rejected: finished_at: Must not be before started_at.",
        ),
        (
            chat_event(7, request={"messages": [{"role": "robot", "content": "hi"}]}),
            "event gen-000007 rejected: request.messages.0.role: Must be one of",
        ),
        (chat_event(8, user="u" * 129), "event gen-000008 rejected: user: Longer than maximum"),
        (chat_event(9, status="maybe"), "event gen-000009 rejected: status: Must be one of"),
        ("not an object", "event (no id) rejected: the event must be a JSON object, not str"),
    ],
)
def test_invalid_events_name_the_field_and_the_id(event, expected):
    with pytest.raises(InvalidEvent) as caught:
        build_trace(event)
    assert str(caught.value).startswith(expected)


def test_unknown_top_level_fields_are_ignored():
    assert build_trace(chat_event(1, future_field={"x": 1})).request_id == "gen-000001"


@pytest.mark.parametrize(
    "parent",
    ["00f067aa0ba902b7", "00F067AA0BA902B7", "9b2d3c1e-8f6a-4f7e-9c1d-2a3b4c5d6e7f", "obs_42"],
)
def test_parent_span_id_is_accepted_in_any_form(parent):
    assert build_trace(chat_event(1, trace={"parent_span_id": parent})).metadata.parent_span_id == (
        parent
    )


def test_lone_surrogates_become_replacement_characters():
    # What `json.loads` makes of a body with an unpaired `\\ud83d` escape.
    event = json.loads(json.dumps(chat_event(1)).replace("What is", "What \\ud83d is"))
    event["trace"] = {"trace_name": "bad \ud800", "note\udfff": "x"}
    trace = build_trace(event)
    texts = [m.content for m in trace.input_messages]
    assert any("What \ufffd is" in (text or "") for text in texts)
    assert trace.metadata.trace_name == "bad \ufffd"
    assert trace.metadata.extra == {"note\ufffd": "x"}
    json.dumps(trace.to_wire(), ensure_ascii=False).encode("utf-8")  # encodable everywhere


def test_api_key_name_reaches_the_trace():
    assert build_trace(chat_event(1, api_key_name="prod key")).api_key_name == "prod key"
    assert build_trace(chat_event(2)).api_key_name is None
