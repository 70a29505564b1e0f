"""Eligibility: key filters and deterministic sampling."""

from __future__ import annotations

import pytest

from broadcast_engine.eligibility import Decision, decide, passes_key_filter, sampled_in
from broadcast_engine.events import build_trace
from harness.samples import chat_event
from settings.models import Circuit, Health, Route


def route(**overrides) -> Route:
    values = dict(
        id="dst_1",
        type="webhook",
        enabled=True,
        health=Health.HEALTHY,
        circuit=Circuit.CLOSED,
        api_keys=frozenset(),
        exclude_api_keys=frozenset(),
        sampling_rate=1.0,
    )
    values.update(overrides)
    return Route(**values)


@pytest.mark.parametrize(
    ("include", "exclude", "key", "expected"),
    [
        ((), (), "k1", True),  # empty include: every key
        ((), (), None, True),  # ... and keyless requests
        (("k1",), (), "k1", True),
        (("k1",), (), "k2", False),
        (("k1",), (), None, False),  # an include list admits only its keys
        ((), ("k3",), "k3", False),
        ((), ("k3",), None, True),
        (("k3",), ("k3",), "k3", False),  # exclude wins
    ],
)
def test_key_filter(include, exclude, key, expected):
    r = route(api_keys=frozenset(include), exclude_api_keys=frozenset(exclude))
    assert passes_key_filter(r, key) is expected


def test_decisions_in_order():
    trace = build_trace(chat_event(1))
    assert decide(route(), trace) is Decision.ELIGIBLE
    assert decide(route(enabled=False, health=Health.AUTH_FAILED), trace) is Decision.DISABLED
    assert decide(route(health=Health.AUTH_FAILED), trace) is Decision.WAIT
    assert decide(route(circuit=Circuit.OPEN), trace) is Decision.WAIT
    assert decide(route(health=Health.AUTH_FAILED, api_keys=frozenset({"other"})), trace) is (
        Decision.FILTERED_BY_KEY
    )
    assert decide(route(health=Health.UNREACHABLE), trace) is Decision.ELIGIBLE
    assert decide(route(exclude_api_keys=frozenset({"key_live_1"})), trace) is (
        Decision.FILTERED_BY_KEY
    )


def test_sampling_is_deterministic_per_session():
    decisions = {sampled_in("dst_a", "session-42", 0.5) for _ in range(20)}
    assert len(decisions) == 1


def test_sampling_rate_quarter_over_4000_sessions():
    kept = sum(sampled_in("dst_a", f"session-{i}", 0.25) for i in range(4000))
    assert abs(kept / 4000 - 0.25) <= 0.03


def test_destinations_keep_different_sessions():
    a = {i for i in range(4000) if sampled_in("dst_a", f"session-{i}", 0.25)}
    b = {i for i in range(4000) if sampled_in("dst_b", f"session-{i}", 0.25)}
    assert a != b
    # Independent choices overlap about rate squared (6.25 %), not fully.
    assert abs(len(a & b) / 4000 - 0.0625) < 0.03


def test_sampling_key_is_session_then_request():
    r = route(sampling_rate=0.5)
    same_session = [build_trace(chat_event(i, session_id="s-fixed")) for i in range(30)]
    assert len({decide(r, t) for t in same_session}) == 1
    no_session = [build_trace(chat_event(i, session_id=None)) for i in range(200)]
    assert {decide(r, t) for t in no_session} == {Decision.ELIGIBLE, Decision.SAMPLED_OUT}
