"""The outcome table, Retry-After, and the short retry policy."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from broadcast_engine.backoff import RetryPolicy
from destinations.outcomes import Outcome, classify_status, parse_retry_after


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (202, Outcome.DELIVERED),
        (207, Outcome.DELIVERED),
        (400, Outcome.PERMANENT),
        (404, Outcome.PERMANENT),
        (409, Outcome.PERMANENT),
        (413, Outcome.PERMANENT),
        (410, Outcome.PERMANENT),
        (401, Outcome.AUTH_FAILED),
        (403, Outcome.AUTH_FAILED),
        (408, Outcome.RETRYABLE),
        (429, Outcome.RETRYABLE),
        (500, Outcome.RETRYABLE),
        (502, Outcome.RETRYABLE),
        (503, Outcome.RETRYABLE),
        (504, Outcome.RETRYABLE),
        (501, Outcome.PERMANENT),
        (505, Outcome.PERMANENT),
        (301, Outcome.PERMANENT),
    ],
)
def test_status_table(status, outcome):
    assert classify_status(status) is outcome


def test_retry_after_seconds_and_date():
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after("garbage") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-5") == 0.0


def test_never_outcomes_do_not_retry():
    policy = RetryPolicy(base_seconds=1, cap_seconds=60, max_retries=5)
    for outcome in (Outcome.PERMANENT, Outcome.AUTH_FAILED, Outcome.DELIVERED):
        assert policy.next_delay(outcome, 0, None) is None


def test_backoff_is_full_jitter_under_an_exponential_ceiling():
    policy = RetryPolicy(base_seconds=1, cap_seconds=60, max_retries=10)
    rng = random.Random(7)
    for retries in range(8):
        ceiling = min(60, 2**retries)
        delays = [policy.next_delay(Outcome.RETRYABLE, retries, None, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # full jitter spans the whole range
    assert policy.next_delay(Outcome.RETRYABLE, 10, None, rng) is None


def test_retry_after_is_a_floor_and_too_long_leaves_the_short_tier():
    policy = RetryPolicy(base_seconds=1, cap_seconds=60, max_retries=5)
    assert policy.next_delay(Outcome.RETRYABLE, 0, 30.0) >= 30.0
    assert policy.next_delay(Outcome.RETRYABLE, 0, 600.0) is None
