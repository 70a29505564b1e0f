"""An event validation accepts is one every vendor can be sent: nothing that passed
`build_trace` may make a serializer raise later, where it would only become an
"internal error" dead letter. Validation names the field instead.

Property-based over events mutated with hostile values (huge and tiny numbers, far dates,
wrong types where objects and lists belong), plus a table of the cases issue 22 found.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broadcast_engine.events import InvalidEvent, build_trace
from broadcast_engine.trace_store import decode, encode
from destinations.base import DeliveryContext, HttpDestination, ItemRefused, PayloadTooLarge
from destinations.registry import destination_class, known_types
from destinations.s3 import object_body, object_key
from destinations.trace import Trace
from destinations.transport import HttpTransport
from destinations.url_guard import NetworkPolicy
from harness.samples import chat_event, destination_configs, tool_call_event

TRANSPORT = HttpTransport(NetworkPolicy(allow_private_networks=True))
CONFIGS = destination_configs("https://vendor.example")
CONTEXT = DeliveryContext("dst_fuzz", "user:u1", datetime(2026, 1, 1, tzinfo=UTC))


def deliver_nowhere(trace: Trace) -> None:
    """Everything the delivery path does with a trace short of sending it: store and load
    it (broadcast_engine/trace_store.py), then every vendor's serializer for a batch of one."""
    stored = Trace.from_wire(decode(encode(trace.to_wire())))
    for type_ in known_types():
        cls = destination_class(type_)
        config = cls.config_schema().load(CONFIGS[type_])
        destination = cls(config, TRANSPORT)
        if isinstance(destination, HttpDestination):
            try:
                item = destination.encode_item(stored, CONTEXT)
            except (ItemRefused, PayloadTooLarge):
                continue  # refused on its own, with a reason: a recorded outcome
            destination.batch_request([item.payload], CONTEXT)
        elif type_ == "s3":
            object_key(stored, config["path_template"], "p", config.get("object_name", "request"))
            object_body(stored, CONTEXT.destination_id)
        else:  # the other SDK destinations (Firehose): their pure share of a batch
            try:
                destination.encode_item(stored, CONTEXT)
            except (ItemRefused, PayloadTooLarge):
                continue


_extreme_numbers = st.sampled_from(
    [0, -1, 1e300, -1e300, 1e-300, 2**53, 2**63, 2**64, -(2**63) - 1, 10**30, 1.5, 3]
)
_far_times = st.sampled_from(
    ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "1969-12-31T23:59:59Z",
     "2262-04-12T00:00:00Z", "2026-01-01T00:00:00+14:00", "2026-01-01T00:00:00Z"]
)  # fmt: skip
_json = st.recursive(
    st.none() | st.booleans() | _extreme_numbers | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=10,
)  # fmt: skip
PATHS = [
    ("time_to_first_token_ms",), ("started_at",), ("finished_at",), ("usage", "prompt_tokens"),
    ("usage", "completion_tokens"), ("usage", "total_tokens"), ("usage", "cached_tokens"),
    ("cost", "total"), ("cost", "input"), ("request", "temperature"), ("request", "max_tokens"),
    ("request", "tools"), ("request", "tool_choice"), ("request", "messages", 0, "content"),
    ("request", "messages", 0, "tool_calls"), ("request", "messages", 0, "name"),
    ("response", "choices", 0, "message", "tool_calls"),
    ("response", "choices", 0, "finish_reason"), ("trace", "extra"), ("trace", "trace_id"),
    ("error",), ("streamed",), ("status",), ("user",), ("session_id",),
]  # fmt: skip


@st.composite
def hostile_events(draw: st.DrawFn) -> dict[str, Any]:
    event = copy.deepcopy(draw(st.sampled_from([chat_event(1), tool_call_event(2)])))
    event.setdefault("trace", {})
    for path in draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3)):
        parent: Any = event
        for part in path[:-1]:
            child = parent[part] if _has(parent, part) else None
            if child is None and isinstance(parent, dict):
                child = parent[part] = {}
            parent = child
        if not isinstance(parent, dict | list) or (isinstance(parent, list) and not parent):
            continue
        key = path[-1]
        value = draw(_far_times if "_at" in str(key) else _extreme_numbers | _json)
        if isinstance(parent, list):
            parent[min(int(key), len(parent) - 1)] = value
        else:
            parent[key] = value
    return event


def _has(container: Any, key: Any) -> bool:
    if isinstance(container, dict):
        return key in container
    return isinstance(container, list) and isinstance(key, int) and key < len(container)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(hostile_events())
def test_an_accepted_event_is_deliverable_to_every_vendor(event):
    try:
        trace = build_trace(json.loads(json.dumps(event)))
    except InvalidEvent as exc:
        assert ":" in exc.reason, exc.reason  # names a field
        return
    deliver_nowhere(trace)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"time_to_first_token_ms": 1e300}, "time_to_first_token_ms: "),
        ({"time_to_first_token_ms": -1}, "time_to_first_token_ms: "),
        ({"started_at": "9999-12-31T23:59:59Z", "finished_at": "9999-12-31T23:59:59Z"},
         "started_at: "),
        ({"started_at": "0001-01-01T00:00:00Z"}, "started_at: "),
        ({"started_at": "2015-01-01T00:00:00Z"}, "finished_at: a request cannot last"),
        ({"finished_at": "2025-01-01T00:00:00Z"}, "finished_at: Must not be before"),
        ({"usage": {"prompt_tokens": 2**64, "completion_tokens": 1}}, "usage.prompt_tokens: "),
        ({"usage": {"prompt_tokens": 1, "completion_tokens": 1.5}}, "usage.completion_tokens"),
        ({"cost": {"total": -0.1}}, "cost.total: "),
        ({"request": {"messages": [{"role": "assistant", "content": "x", "tool_calls": 5}]}},
         "request.messages.0.tool_calls: "),
        ({"request": {"messages": [{"role": "user", "content": "x"}], "temperature": 10**30}},
         "request.temperature: "),
        ({"trace": {"n": 2**64}}, "trace.n: "),
        ({"user_id": "u" * 129}, "user_id: "),
        ({"user_id": "bad\nowner"}, "user_id: "),
        ({"org_id": "acme corp"}, "org_id: "),
    ],
)  # fmt: skip
def test_what_delivery_would_choke_on_is_refused_naming_the_field(overrides, words):
    event = chat_event(1, **overrides)
    if "started_at" in overrides and "finished_at" not in overrides:
        event["finished_at"] = (
            "2026-01-01T00:00:00Z" if "2015" in overrides["started_at"] else (event["finished_at"])
        )
    with pytest.raises(InvalidEvent) as caught:
        build_trace(event)
    assert words in caught.value.reason, caught.value.reason


def test_the_largest_accepted_values_are_deliverable():
    event = chat_event(
        1,
        time_to_first_token_ms=850.0,
        usage={"prompt_tokens": 2**53 - 1, "completion_tokens": 0, "total_tokens": 2**53 - 1},
        cost={"total": 1e12, "input": 0.0, "output": 1e12},
        trace={"big": 2**63 - 1, "small": -(2**63), "f": 1e300},
    )
    deliver_nowhere(build_trace(event))
