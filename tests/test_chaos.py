"""The chaos run's short form (`bench/chaos.py --short`): failing and hanging receivers,
workers `kill -9`ed every few seconds, Redis `kill -9`ed once. It passes only when no
accepted trace is lost, duplicates stay within 0.5 % and the counters match what the
receivers accepted. It runs on both brokers: RabbitMQ, and Redis through Broadcast's
stream transport (broadcast_broker/stream_transport.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_the_short_chaos_run_loses_nothing(broker):
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--short", "--broker", broker],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.rstrip().endswith("PASS")
