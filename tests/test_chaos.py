"""The chaos run's short form (`bench/chaos.py --short`): failing and hanging receivers,
workers `kill -9`ed every few seconds, the Redis store `kill -9`ed once. It passes only
when no accepted trace is lost, duplicates stay within 0.5 % and the counters match what
the receivers accepted.

It runs with RabbitMQ as the broker: with a Redis broker, kombu's transport pops a message
(BRPOP) before it records it as unacknowledged, so a worker killed in between loses that
message before any of our code sees it (docs/production.md, "Choosing the broker")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def test_the_short_chaos_run_loses_nothing():
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--short", "--broker", "rabbitmq"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.rstrip().endswith("PASS")
