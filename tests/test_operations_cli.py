"""The `broadcast` command's operator edges and the orchestrator probes, as real processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import redis

from harness.processes import free_port
from settings import keys
from settings.store import SettingsStore

BROADCAST = str(Path(sys.executable).parent / "broadcast")


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BROADCAST, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ) if env is None else env,
    )


def test_keys_generate_prints_the_bare_key_and_needs_no_settings():
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCAST_")}
    result = run("keys", "generate", env=env)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert result.stdout == key + "\n" and len(key) == 44
    from settings.crypto import SecretBox

    SecretBox([key])  # a usable Fernet key: `export BROADCAST_ENCRYPTION_KEYS=$(...)`
    types = run("types", env=env)
    assert types.returncode == 0 and "webhook" in types.stdout.split()


def test_json_flag_before_or_after_the_command(redis_server):
    before, after = run("--json", "types"), run("types", "--json")
    assert before.returncode == after.returncode == 0, (before.stderr, after.stderr)
    assert json.loads(before.stdout) == json.loads(after.stdout)
    assert "webhook" in json.loads(before.stdout)


def test_errors_are_json_on_stderr_with_json(redis_server):
    refused = run("destination", "show", "d-does-not-exist", "--json")
    assert refused.returncode == 2 and refused.stdout == ""
    message = json.loads(refused.stderr)["error"]["message"]
    assert "d-does-not-exist" in message
    usage = run("--json", "destination", "add", "--owner", "user:x")
    assert usage.returncode == 2
    assert "--type" in json.loads(usage.stderr)["error"]["message"]
    plain = run("destination", "add", "--owner", "user:x")
    assert plain.returncode == 2
    assert plain.stderr.startswith("broadcast: error: ") and len(plain.stderr.splitlines()) == 1


def test_a_closed_pipe_ends_quietly(redis_server):
    """`broadcast --json rejected ... | head -c 1`: the output (~500 KB) is far larger than a
    pipe's buffer, so the writer meets the closed pipe; it must exit without a traceback."""
    # A database of its own, so the 500 entries push no other test's out of the capped list.
    url = redis_server.url.rsplit("/", 1)[0] + "/8"
    store = SettingsStore(redis.Redis.from_url(url))
    owner = f"user:pipe{os.getpid()}"
    for index in range(500):
        store.record_rejected_event(
            owner, {"id": f"gen-{index}", "owner": owner, "reason": "x" * 1000, "at": "-"}
        )
    with subprocess.Popen(
        f"{BROADCAST} --json rejected --owner {owner} --limit 500 | head -c 1",
        shell=True,
        env=dict(os.environ, BROADCAST_STORE_URL=url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as pipeline:
        _, stderr = pipeline.communicate(timeout=60)
    store.redis.flushdb()
    assert pipeline.returncode == 0
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_health_store(redis_server):
    assert run("health", "store").returncode == 0
    env = dict(os.environ, BROADCAST_STORE_URL=f"redis://127.0.0.1:{free_port()}/0")
    down = run("health", "store", "--json", env=env)
    assert down.returncode == 1
    assert "does not answer" in json.loads(down.stderr)["error"]["message"]


def test_health_beat_reads_the_sweep_heartbeat(redis_server):
    # A database of its own: a beat running elsewhere in the session never writes here.
    url = redis_server.url.rsplit("/", 1)[0] + "/7"
    env = dict(os.environ, BROADCAST_STORE_URL=url)
    client = redis.Redis.from_url(url)
    client.delete(keys.BEAT_HEARTBEAT)
    missing = run("health", "beat", env=env)
    assert missing.returncode == 1 and "not run its sweep" in missing.stderr
    client.set(keys.BEAT_HEARTBEAT, repr(time.time() - 300))
    stale = run("health", "beat", "--max-age", "60", env=env)
    assert stale.returncode == 1 and re.search(r"last sweep was 30\ds ago", stale.stderr)
    client.set(keys.BEAT_HEARTBEAT, repr(time.time()))
    fresh = run("health", "beat", "--max-age", "60", "--json", env=env)
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout)["last_sweep_seconds_ago"] < 60
    client.flushdb()
    client.close()


def test_health_worker_pings_a_real_worker(worker):
    anyone = run("health", "worker", "--json", "--timeout", "1")
    assert anyone.returncode == 0, anyone.stderr
    node = next(n for n in json.loads(anyone.stdout)["workers"] if n.startswith("worker-"))
    assert run("health", "worker", "--node", node, "--timeout", "1").returncode == 0
    absent = run("health", "worker", "--node", "nobody", "--timeout", "0.5")
    assert absent.returncode == 1 and "no worker nobody@" in absent.stderr


def test_health_worker_says_when_the_broker_is_unreachable():
    env = {**os.environ, "BROADCAST_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = run("health", "worker", "--timeout", "0.5", env=env)
    assert result.returncode == 1
    assert "cannot reach the broker" in result.stderr and "Traceback" not in result.stderr
