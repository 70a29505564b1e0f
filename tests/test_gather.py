"""When a busy destination's next task waits for a fuller batch (`gather_seconds`)."""

from __future__ import annotations

import pytest

from broadcast_engine.delivery_run import gather_seconds


@pytest.mark.parametrize(
    ("unread", "full", "elapsed", "cap", "wait"),
    [
        (0, 100, 0.05, 0.5, None),  # nothing arrived: done, not gathering
        (1, 100, 0.05, 0.5, None),  # a trickle: the next trace goes at once (latency)
        (4, 100, 0.05, 0.5, None),  # still under a twentieth of a full batch
        (10, 100, 0.05, 0.5, 0.45),  # 200 traces/s: 90 more take 0.45 s
        (10, 100, 0.01, 0.5, 0.09),  # 1,000 traces/s: a full batch in 0.09 s
        (50, 100, 0.05, 0.25, 0.05),  # half full at 1,000/s: the other half in 0.05 s
        (30, 100, 1.0, 0.5, 0.5),  # 30/s: capped
        (100, 100, 0.05, 0.5, None),  # a full batch waits: at once
        (2, 20, 0.01, 0.5, 0.09),  # a webhook batch of 20: busy from 2
        (1, 1, 0.01, 0.5, None),  # one trace per request: never gathers
        (10, 100, 0.05, 0.0, None),  # gathering off
    ],
)
def test_gather_table(unread, full, elapsed, cap, wait):
    got = gather_seconds(unread, full, elapsed, cap)
    assert got == pytest.approx(wait) if wait is not None else got is None
