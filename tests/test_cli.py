"""The `broadcast` console script, run as a real process against the test Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from harness.receiver import Reply

# The console script installed beside this interpreter (`pip install -e .`).
BROADCAST = str(Path(sys.executable).parent / "broadcast")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BROADCAST, *argv], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )


def ok(*argv: str):
    result = run(*argv, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def refused(*argv: str) -> str:
    result = run(*argv)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("broadcast: error: ")
    return lines[0]


@pytest.fixture
def owner(redis_server) -> str:
    return f"user:cli{uuid.uuid4().hex[:10]}"


def test_full_operator_session(owner, receiver, tmp_path):
    sink = receiver()
    token = "Bearer cli_" + uuid.uuid4().hex
    assert ok("enable", "--owner", owner) == {"owner": owner, "enabled": True}
    config_file = tmp_path / "hook.json"
    config_file.write_text(json.dumps({"url": sink.url, "headers": {"Authorization": token}}))
    added = ok(
        "destination",
        "add",
        "--owner",
        owner,
        "--type",
        "webhook",
        "--name",
        "Hook",
        "--config",
        f"@{config_file}",
        "--api-keys",
        "k1,k2",
        "--exclude-api-keys",
        "k3",
        "--sampling",
        "0.25",
        "--privacy",
    )
    assert added["apiKeys"] == ["k1", "k2"] and added["excludedApiKeys"] == ["k3"]
    assert added["samplingRate"] == 0.25 and added["privacyMode"] is True
    assert added["config"]["headers"]["Authorization"] == "****" + token[-4:]

    human = run("destination", "list", "--owner", owner)
    assert added["id"] in human.stdout and token not in human.stdout
    assert ok("destination", "show", added["id"])["name"] == "Hook"
    updated = ok("destination", "update", added["id"], "--name", "Renamed", "--no-privacy")
    assert (updated["name"], updated["privacyMode"]) == ("Renamed", False)
    assert ok("destination", "test", added["id"])["ok"] is True
    [row] = ok("status", "--owner", owner)
    assert row["health"] == "healthy" and row["counters"]["delivered"] == 0
    assert ok("deliveries", added["id"]) == []
    assert "webhook" in ok("types")
    assert ok("destination", "remove", added["id"]) == {"id": added["id"], "deleted": True}
    assert ok("destination", "list", "--owner", owner) == []


def test_mistakes_exit_non_zero_with_one_line_and_change_nothing(owner, receiver):
    sink = receiver()
    url = json.dumps({"url": sink.url})
    add = ("destination", "add", "--owner", owner, "--name", "x")
    assert "unknown destination type 'nope'" in refused(*add, "--type", "nope", "--config", url)
    assert "config field 'colour': Unknown field" in refused(
        *add, "--type", "webhook", "--config", json.dumps({"url": sink.url, "colour": 1})
    )
    assert "config field 'url': Missing data" in refused(
        *add, "--type", "webhook", "--config", "{}"
    )
    assert "--config is not valid JSON" in refused(*add, "--type", "webhook", "--config", "{")
    for index in range(5):
        ok(*add[:-1], f"hook{index}", "--type", "webhook", "--config", url)
    assert "already has 5 webhook destinations" in refused(
        *add, "--type", "webhook", "--config", url
    )
    assert len(ok("destination", "list", "--owner", owner)) == 5


def test_failed_test_connection_refuses_the_save(owner, receiver):
    sink = receiver(lambda _r: Reply(403, b"forbidden"))
    line = refused(
        "destination",
        "add",
        "--owner",
        owner,
        "--type",
        "webhook",
        "--name",
        "x",
        "--config",
        json.dumps({"url": sink.url}),
    )
    assert "Test Connection failed, nothing saved" in line and "HTTP 403" in line
    assert ok("destination", "list", "--owner", owner) == []


def test_organization_roles(receiver):
    org = f"org{uuid.uuid4().hex[:8]}"
    sink = receiver()
    ok("org", "add-member", org, "alice", "--role", "admin")
    ok("org", "add-member", org, "bob", "--role", "member")
    ok("enable", "--owner", f"org:{org}", "--actor", "user:alice")
    assert "user:bob is not an admin" in refused(
        "disable", "--owner", f"org:{org}", "--actor", "user:bob"
    )
    assert "not an admin" in refused(
        "destination",
        "add",
        "--owner",
        f"org:{org}",
        "--type",
        "webhook",
        "--name",
        "x",
        "--config",
        json.dumps({"url": sink.url}),
        "--actor",
        "user:bob",
    )
    assert ok("destination", "list", "--owner", f"org:{org}") == []


def test_keys_generate_makes_a_usable_key():
    from settings.crypto import SecretBox

    key = ok("keys", "generate")["key"]
    SecretBox([key])
