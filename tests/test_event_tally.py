"""Fan-out's event tally (broadcast_engine/event_tally.py) on a real Redis: counts reach the
store from the flushing thread, and survive a store that is down until it is back."""

from __future__ import annotations

import pytest
import redis

from broadcast_engine.event_tally import EventTally
from harness.processes import free_port
from harness.waiting import wait_for
from settings import keys


@pytest.fixture
def client(redis_server) -> redis.Redis:
    """A database of its own: the session's worker writes its tallies to database 0."""
    client = redis.Redis(port=redis_server.port, db=9)
    client.delete(keys.EVENT_COUNTS)
    return client


def counts(client: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(keys.EVENT_COUNTS).items()}


def test_counts_reach_the_store_within_the_flush_period(client):
    tally = EventTally(lambda: client, flush_seconds=0.05)
    for outcome in ("fanned_out", "fanned_out", "filtered", "duplicate"):
        tally.add(outcome)

    expected = {"fanned_out": 2, "filtered": 1, "duplicate": 1}
    wait_for(lambda: counts(client) == expected, timeout=10, what="the tally's flush")


def test_a_store_that_is_down_keeps_the_counts_for_the_next_flush(client):
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    target = {"client": down}
    tally = EventTally(lambda: target["client"], flush_seconds=3600)  # flushed by hand here
    tally.add("filtered")
    tally.add("filtered")
    tally.flush()  # logged, not raised
    assert counts(client) == {}
    target["client"] = client
    tally.flush()
    assert counts(client) == {"filtered": 2}


def test_an_unknown_outcome_is_refused():
    tally = EventTally(lambda: redis.Redis(port=free_port()))
    with pytest.raises(ValueError, match="unknown event outcome"):
        tally.add("fanned-out")
