"""The one backoff helper (`broadcast_engine.backoff.Backoff`), as a table."""

from __future__ import annotations

import random

import pytest

from broadcast_engine.backoff import SETTLE_RETRY, STORE_RETRY, Backoff

EXPONENTIAL = Backoff(base_seconds=2.0, cap_seconds=120.0)


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(-1, 2.0), (0, 2.0), (1, 4.0), (2, 8.0), (5, 64.0), (6, 120.0), (40, 120.0)],
)
def test_the_ceiling_doubles_from_the_base_up_to_the_cap(attempt, ceiling):
    assert EXPONENTIAL.ceiling(attempt) == ceiling


@pytest.mark.parametrize("attempt", [0, 1, 3, 6, 12])
def test_full_jitter_draws_between_zero_and_the_ceiling(attempt):
    rng = random.Random(attempt)
    draws = [EXPONENTIAL.delay(attempt, rng=rng) for _ in range(400)]
    ceiling = EXPONENTIAL.ceiling(attempt)
    assert all(0.0 <= wait <= ceiling for wait in draws)
    # Spread over the whole range, not clustered at the ceiling.
    assert min(draws) < ceiling * 0.1 and max(draws) > ceiling * 0.9


@pytest.mark.parametrize(
    ("retry_after", "at_least"),
    [(None, 0.0), (0.5, 0.5), (30.0, 30.0), (600.0, 600.0)],
)
def test_retry_after_is_a_floor_even_past_the_cap(retry_after, at_least):
    rng = random.Random(7)
    assert all(
        EXPONENTIAL.delay(attempt, retry_after=retry_after, rng=rng) >= at_least
        for attempt in range(10)
    )


@pytest.mark.parametrize(
    ("backoff", "waits"),
    [
        (STORE_RETRY, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]),
        (SETTLE_RETRY, [0.1, 0.2, 0.4, 0.5, 0.5, 0.5, 0.5]),
    ],
)
def test_without_jitter_the_waits_are_the_ceilings(backoff, waits):
    assert [backoff.delay(attempt) for attempt in range(len(waits))] == pytest.approx(waits)
