"""The policy table (`broadcast_engine.delivery_policy`), without Redis or a worker."""

from __future__ import annotations

import random

import pytest

from broadcast_engine.delivery_policy import (
    TRACE_MISSING,
    DeliveryPolicy,
    DestinationAction,
    ItemAction,
    decide_destination,
    decide_item,
)
from destinations.base import DeliveryResult, not_attempted
from destinations.outcomes import Outcome

POLICY = DeliveryPolicy(
    retry_base_seconds=2.0,
    retry_cap_seconds=120.0,
    circuit_failures=5,
    probe_schedule_seconds=(30.0, 300.0, 1800.0),
    retry_horizon_seconds=86400.0,
    auth_recheck_seconds=900.0,
    trace_grace_seconds=30.0,
)
NOW = 1_000_000.0


def result(outcome: Outcome, status: int | None = None, **extra) -> DeliveryResult:
    return DeliveryResult(outcome, status, 1.0, error=extra.pop("error", None), **extra)


DELIVERED = result(Outcome.DELIVERED, 200)
RETRYABLE = result(Outcome.RETRYABLE, 503, error="HTTP 503")
AUTH = result(Outcome.AUTH_FAILED, 401, error="HTTP 401")
PERMANENT = result(Outcome.PERMANENT, 400, error="HTTP 400: bad field")


@pytest.mark.parametrize(
    ("item", "age", "attempts", "action", "reason_part"),
    [
        (DELIVERED, 5.0, 0, ItemAction.DELIVERED, ""),
        (DELIVERED, 90000.0, 9, ItemAction.DELIVERED, ""),  # late but delivered is delivered
        (PERMANENT, 5.0, 0, ItemAction.DEAD_LETTER, "HTTP 400: bad field"),
        (RETRYABLE, 5.0, 3, ItemAction.WAIT, "HTTP 503"),
        (AUTH, 5.0, 0, ItemAction.WAIT, "HTTP 401"),
        (RETRYABLE, 86400.0, 41, ItemAction.DEAD_LETTER, "gave up after 24.0 h and 42 attempt"),
        (AUTH, 90000.0, 2, ItemAction.DEAD_LETTER, "gave up after 25.0 h and 3 attempt"),
        (not_attempted(RETRYABLE), 90000.0, 2, ItemAction.DEAD_LETTER, "and 2 attempt"),
        (not_attempted(RETRYABLE), 5.0, 0, ItemAction.WAIT, "not attempted"),
        (None, 2.0, 0, ItemAction.WAIT, "not stored yet"),
        (None, 60.0, 0, ItemAction.DEAD_LETTER, TRACE_MISSING),
    ],
)
def test_item_table(item, age, attempts, action, reason_part):
    decision = decide_item(item, age_seconds=age, attempts=attempts, policy=POLICY)
    assert decision.action is action
    assert reason_part in decision.reason


def decide(results, *, circuit_open=False, probe_step=0, consecutive=0, in_window=0, seed=1):
    return decide_destination(
        results,
        now=NOW,
        circuit_open=circuit_open,
        probe_step=probe_step,
        consecutive_failures=consecutive,
        failures_in_window=in_window,
        policy=POLICY,
        rng=random.Random(seed),
    )


@pytest.mark.parametrize(
    ("results", "circuit_open", "action"),
    [
        ([DELIVERED, DELIVERED], False, DestinationAction.SEND_NOW),
        ([DELIVERED, PERMANENT], False, DestinationAction.SEND_NOW),  # per item, not the vendor
        ([DELIVERED], True, DestinationAction.CLOSE_CIRCUIT),
        ([AUTH, not_attempted(AUTH)], False, DestinationAction.PAUSE),
        ([AUTH], True, DestinationAction.PAUSE),
        ([RETRYABLE], False, DestinationAction.BACK_OFF),
        ([RETRYABLE], True, DestinationAction.STAY_OPEN),
        ([], False, DestinationAction.SEND_NOW),  # every trace missing: nothing was sent
    ],
)
def test_destination_table(results, circuit_open, action):
    assert decide(results, circuit_open=circuit_open, consecutive=1, in_window=1).action is action


def test_backoff_is_full_jitter_exponential_and_capped():
    waits = {
        k: [
            decide([RETRYABLE], consecutive=k, in_window=1, seed=s).wait_until - NOW
            for s in range(200)
        ]
        for k in (1, 3, 10)
    }
    assert max(waits[1]) <= 2.0 and min(waits[1]) >= 0.0
    assert max(waits[3]) <= 8.0 and max(waits[3]) > 4.0  # ceiling base * 2**(k-1)
    assert max(waits[10]) <= POLICY.retry_cap_seconds


def test_retry_after_is_a_floor_and_a_long_one_opens_the_circuit():
    slow = result(Outcome.RETRYABLE, 429, error="HTTP 429", retry_after=60.0)
    decision = decide([slow], consecutive=1, in_window=1)
    assert decision.action is DestinationAction.BACK_OFF and decision.wait_until - NOW >= 60.0
    very_slow = result(Outcome.RETRYABLE, 429, error="HTTP 429", retry_after=7200.0)
    decision = decide([very_slow], consecutive=1, in_window=1)
    assert decision.action is DestinationAction.OPEN_CIRCUIT
    assert decision.wait_until - NOW == 7200.0


def test_the_circuit_opens_at_the_rule_and_probes_wait_longer_each_time():
    assert decide([RETRYABLE], consecutive=4, in_window=4).action is DestinationAction.BACK_OFF
    opened = decide([RETRYABLE], consecutive=5, in_window=5)
    assert opened.action is DestinationAction.OPEN_CIRCUIT and opened.wait_until - NOW == 30.0
    waits = [
        decide([RETRYABLE], circuit_open=True, probe_step=step).wait_until - NOW
        for step in range(5)
    ]
    assert waits == [30.0, 300.0, 1800.0, 1800.0, 1800.0]  # the last wait repeats


def test_a_failure_concerns_the_destination_only_when_attempted():
    # Every trace left untried by an earlier stop: the destination's decision comes from the
    # one that was tried.
    decision = decide([RETRYABLE, not_attempted(RETRYABLE)], consecutive=1, in_window=1)
    assert decision.action is DestinationAction.BACK_OFF
    assert decide([not_attempted(RETRYABLE)]).action is DestinationAction.SEND_NOW
