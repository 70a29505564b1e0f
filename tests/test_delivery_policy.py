"""The policy table (`broadcast_engine.delivery_policy`), without Redis or a worker."""

from __future__ import annotations

import random

import pytest

from broadcast_engine.delivery_policy import (
    TRACE_MISSING,
    DeliveryPolicy,
    DestinationAction,
    ItemAction,
    WindowCounts,
    circuit_rule_met,
    decide_destination,
    decide_item,
)
from destinations.base import DeliveryResult, not_attempted
from destinations.outcomes import Outcome

POLICY = DeliveryPolicy(
    retry_base_seconds=2.0,
    retry_cap_seconds=120.0,
    circuit_failure_rate=0.5,
    circuit_min_attempts=20,
    circuit_consecutive_failures=5,
    probe_schedule_seconds=(30.0, 60.0, 120.0, 300.0),
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


def decide(results, *, circuit_open=False, probe_step=0, counts=None, batch_attempts=0, seed=1):
    return decide_destination(
        results,
        now=NOW,
        circuit_open=circuit_open,
        probe_step=probe_step,
        counts=counts or WindowCounts(attempts=1, failures=1, consecutive=1),
        batch_attempts=batch_attempts,
        policy=POLICY,
        rng=random.Random(seed),
    )


THROTTLED = result(Outcome.RETRYABLE, 429, error="HTTP 429")


@pytest.mark.parametrize(
    ("results", "circuit_open", "action"),
    [
        ([DELIVERED, DELIVERED], False, DestinationAction.SEND_NOW),
        ([DELIVERED, PERMANENT], False, DestinationAction.SEND_NOW),  # per item, not the vendor
        ([DELIVERED], True, DestinationAction.CLOSE_CIRCUIT),
        ([AUTH, not_attempted(AUTH)], False, DestinationAction.PAUSE),
        ([AUTH], True, DestinationAction.PAUSE),
        ([RETRYABLE], False, DestinationAction.RETRY_BATCH),  # the batch waits, others go on
        ([THROTTLED], False, DestinationAction.BACK_OFF),  # the vendor asked: all wait
        ([RETRYABLE], True, DestinationAction.STAY_OPEN),
        ([THROTTLED], True, DestinationAction.STAY_OPEN),
        ([], False, DestinationAction.SEND_NOW),  # every trace missing: nothing was sent
    ],
)
def test_destination_table(results, circuit_open, action):
    assert decide(results, circuit_open=circuit_open).action is action


@pytest.mark.parametrize(
    ("name", "counts", "opens"),
    [
        ("0 of 20 failed", WindowCounts(attempts=20, failures=0, consecutive=0), False),
        # 5 of 100 spread out: never two in a row.
        ("5 of 100 spread out", WindowCounts(attempts=100, failures=5, consecutive=1), False),
        ("11 of 20", WindowCounts(attempts=20, failures=11, consecutive=1), True),
        ("10 of 20 (the threshold itself)", WindowCounts(attempts=20, failures=10), True),
        ("9 of 20", WindowCounts(attempts=20, failures=9, consecutive=2), False),
        ("11 of 19: below the minimum", WindowCounts(attempts=19, failures=11), False),
        ("5 consecutive", WindowCounts(attempts=5, failures=5, consecutive=5), True),
        ("4 consecutive", WindowCounts(attempts=4, failures=4, consecutive=4), False),
    ],
)
def test_the_circuit_opens_only_when_failures_dominate(name, counts, opens):
    decision = decide([RETRYABLE], counts=counts)
    expected = DestinationAction.OPEN_CIRCUIT if opens else DestinationAction.RETRY_BATCH
    assert decision.action is expected, name
    assert circuit_rule_met(counts, POLICY) is opens
    if opens:
        assert decision.wait_until - NOW == POLICY.probe_schedule_seconds[0]


def test_a_failed_batch_backs_off_full_jitter_exponential_in_its_own_attempts():
    waits = {
        k: [decide([RETRYABLE], batch_attempts=k, seed=s).wait_until - NOW for s in range(200)]
        for k in (0, 2, 10)
    }
    assert max(waits[0]) <= 2.0 and min(waits[0]) >= 0.0
    assert max(waits[2]) <= 8.0 and max(waits[2]) > 4.0  # ceiling base * 2**attempts
    assert max(waits[10]) <= POLICY.retry_cap_seconds


def test_retry_after_is_a_floor_and_a_long_one_opens_the_circuit():
    slow = result(Outcome.RETRYABLE, 503, error="HTTP 503", retry_after=60.0)
    decision = decide([slow])
    assert decision.action is DestinationAction.BACK_OFF and decision.wait_until - NOW >= 60.0
    very_slow = result(Outcome.RETRYABLE, 429, error="HTTP 429", retry_after=7200.0)
    decision = decide([very_slow])
    assert decision.action is DestinationAction.OPEN_CIRCUIT
    assert decision.wait_until - NOW == 7200.0


def test_probes_wait_longer_each_time_up_to_the_last_wait():
    waits = [
        decide([RETRYABLE], circuit_open=True, probe_step=step).wait_until - NOW
        for step in range(6)
    ]
    assert waits == [30.0, 60.0, 120.0, 300.0, 300.0, 300.0]  # the last wait repeats


def test_a_failure_concerns_the_destination_only_when_attempted():
    # Every trace left untried by an earlier stop: the destination's decision comes from the
    # one that was tried.
    decision = decide([RETRYABLE, not_attempted(RETRYABLE)])
    assert decision.action is DestinationAction.RETRY_BATCH
    assert decide([not_attempted(RETRYABLE)]).action is DestinationAction.SEND_NOW
