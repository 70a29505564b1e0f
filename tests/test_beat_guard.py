"""Exactly one beat sends (broadcast_engine/beat_guard.py): two real `celery beat`
processes on one Redis, the second stands by; the first stops and the second takes over.
Nothing reads the maintenance queue here, so every task a beat sent stays in its stream
to be counted."""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from broadcast_broker.stream_transport import stream_key
from harness.processes import ManagedProcess, RedisServer, celery_beat
from harness.waiting import wait_for
from settings import keys

SWEEP = "broadcast.maintenance.sweep"


@pytest.fixture(scope="module")
def beat_env(workdir: Path) -> Iterator[tuple[dict[str, str], redis.Redis]]:
    server = RedisServer(workdir, name="redis-beats")
    env = {
        **os.environ,
        "BROADCAST_BROKER_URL": server.url,
        "BROADCAST_STORE_URL": server.url,
        "BROADCAST_SWEEP_INTERVAL_SECONDS": "1",
    }
    yield env, redis.Redis.from_url(server.url)
    server.stop()


def start_beat(env: dict[str, str], workdir: Path, name: str) -> ManagedProcess:
    """A beat with its own log and schedule file (`celery beat -s`)."""
    own = workdir / name
    own.mkdir(exist_ok=True)
    return celery_beat(env, own)


def log(beat: ManagedProcess) -> str:
    return beat.log_path.read_text(errors="replace")


def sweeps_sent(beat: ManagedProcess) -> int:
    return len(re.findall(rf"Sending due task sweep-backlogs \({re.escape(SWEEP)}\)", log(beat)))


def sweeps_queued(client: redis.Redis) -> int:
    """Sweep tasks waiting in the maintenance queue (each entry's envelope names its task)."""
    count = 0
    for _id, fields in client.xrange(stream_key("broadcast.maintenance")):
        envelope = json.loads(zlib.decompress(fields[b"z"]))
        count += envelope["headers"]["task"] == SWEEP
    return count


def test_a_second_beat_stands_by_and_takes_over_when_the_first_stops(beat_env, workdir):
    env, client = beat_env
    first = start_beat(env, workdir, "beat-first")
    second: ManagedProcess | None = None
    try:
        wait_for(lambda: sweeps_sent(first) >= 1, timeout=60, what="the first beat's sweep")
        assert "broadcast.beat.active" in log(first)
        second = start_beat(env, workdir, "beat-second")
        wait_for(lambda: "broadcast.beat.standby" in log(second), timeout=60,
                 what="the second beat to stand by")  # fmt: skip
        sent_before = sweeps_sent(first)
        wait_for(lambda: sweeps_sent(first) >= sent_before + 3, timeout=30,
                 what="three more sweeps from the first beat")  # fmt: skip
        assert sweeps_sent(second) == 0
        # What the queue holds is what the first beat sent: nothing twice.
        wait_for(lambda: sweeps_queued(client) == sweeps_sent(first), timeout=10,
                 what="the queued sweeps to match the first beat's")  # fmt: skip
        token = client.get(keys.BEAT_LOCK).decode()
        assert f"broadcast.beat.active token={token}" in log(first)

        first.stop()  # a clean stop gives the lock back
        wait_for(lambda: sweeps_sent(second) >= 1, timeout=30,
                 what="the second beat to take over")  # fmt: skip
        assert "broadcast.beat.active" in log(second)
        assert client.get(keys.BEAT_LOCK).decode() != token
    finally:
        first.stop()
        if second is not None:
            second.stop()
