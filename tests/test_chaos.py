"""The chaos run's short form (`bench/chaos.py --short`): failing and hanging receivers,
workers `kill -9`ed every few seconds, Redis and beat `kill -9`ed once. It passes only when
no accepted trace is lost, duplicates stay within 0.5 %, the counters match what the
receivers accepted and everything settles within 120 s of the last kill. It runs on both
brokers (RabbitMQ, and Redis through Broadcast's stream transport), with beat and with beat
stopped for the whole run (then within 120 s of beat's start)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("beat", ["with-beat", "without-beat"])
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_the_short_chaos_run_loses_nothing(broker, beat):
    argv = [sys.executable, str(ROOT / "bench" / "chaos.py"), "--short", "--broker", broker]
    run = subprocess.run(
        argv + (["--without-beat"] if beat == "without-beat" else []),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.rstrip().endswith("PASS")
    assert "recovered: every trace settled" in run.stdout
