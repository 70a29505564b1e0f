"""The `broadcast` command's surface: help on every option, `--actor` only where it means
something, one line for a busy port, ISO 8601 times, `status` as a table."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from broadcast_interfaces.cli import build_parser
from harness.receiver import Reply

# The commands that read or change one owner's settings: the only ones offering --actor.
ACTOR_COMMANDS = {
    "enable",
    "disable",
    "org add-member",
    "destination add",
    "destination update",
    "destination list",
    "destination show",
    "destination remove",
    "destination test",
    "destination resume",
    "status",
    "deliveries",
    "rejected",
    "events",
    "dead-letters",
    "replay",
    "notify set",
    "api-keys create",
    "api-keys list",
    "api-keys revoke",
}
ISO_8601 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every runnable command of the tree, as ("destination add", its parser)."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield " ".join(path), parser
    for group in groups:
        for name, sub in group.choices.items():
            yield from commands(sub, (*path, name))


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broadcast_interfaces.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


def test_every_option_of_every_command_has_help():
    found = dict(commands(build_parser()))
    assert len(found) >= 30 and "metrics serve" in found and "destination schema" in found
    missing = [
        f"{name}: {action.option_strings or action.dest}"
        for name, parser in found.items()
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()
    ]
    assert missing == []


def test_actor_is_offered_only_where_an_owner_s_settings_are_read_or_changed():
    offering = {
        name
        for name, parser in commands(build_parser())
        if any("--actor" in action.option_strings for action in parser._actions)
    }
    assert offering == ACTOR_COMMANDS


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize("command", [("metrics", "serve"), ("serve",)])
def test_a_busy_port_is_one_line_and_exit_2(redis_server, busy_port, command):
    result = run(*command, "--port", str(busy_port))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.splitlines() == [
        f"broadcast: error: cannot listen on 127.0.0.1:{busy_port}: Address already in use"
    ]


def test_limit_must_be_a_whole_number_from_1(redis_server):
    for value in ("0", "-1"):
        result = run("events", "--owner", "user:nobody", "--limit", value)
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            f"broadcast: error: argument --limit: must be at least 1, not {value} "
            "(see `broadcast events --help`)"
        ]


def test_events_times_are_iso_8601(redis_server, receiver):
    owner = f"user:shape{uuid.uuid4().hex[:8]}"
    refusing = {"on": False}
    sink = receiver(lambda _r: Reply(401, b"no") if refusing["on"] else Reply(200))
    added = json.loads(
        run(
            "destination", "add", "--owner", owner, "--type", "webhook", "--name", "h",
            "--config", json.dumps({"url": sink.url}), "--json",
        ).stdout
    )  # fmt: skip
    refusing["on"] = True
    assert run("destination", "test", added["id"]).returncode == 2  # credentials rejected
    [event] = json.loads(run("events", "--owner", owner, "--json").stdout)
    assert event["type"] == "destination.auth_failed" and ISO_8601.match(event["at"]), event
    human = run("events", "--owner", owner).stdout
    assert human.startswith(event["at"] + "  destination.auth_failed")


def test_status_is_a_table_that_fits_100_columns(redis_server, receiver):
    owner = f"user:shape{uuid.uuid4().hex[:8]}"
    sink = receiver()
    assert run("enable", "--owner", owner).returncode == 0
    for name in ("prod traces", "a rather long destination name"):
        assert run(
            "destination", "add", "--owner", owner, "--type", "webhook", "--name", name,
            "--config", json.dumps({"url": sink.url}),
        ).returncode == 0  # fmt: skip
    table = run("status", "--owner", owner).stdout.splitlines()
    # One owner asked for: no owner column.
    assert table[0].split() == ["ID", "TYPE", "NAME", "STATE", "DELIVERED", "FAILED", "BACKLOG"]
    assert len(table) == 3 and all(len(line) <= 100 for line in table), table
    assert {line.split()[-4] for line in table[1:]} == {"healthy"}
    assert any("a rather long…" in line for line in table)
    assert run("disable", "--owner", owner).returncode == 0
    every = run("status").stdout.splitlines()
    assert every[0].split() == [
        "ID", "TYPE", "NAME", "OWNER", "STATE", "DELIVERED", "FAILED", "BACKLOG"
    ]  # fmt: skip
    mine = [line for line in every if owner[:13] in line]
    assert len(mine) == 2 and {line.split()[-4] for line in mine} == {"owner-off"}
    assert all(len(line) <= 100 for line in mine), mine
    verbose = run("status", "--owner", owner, "--verbose").stdout
    assert "dropped_overflow=0" in verbose and "delivery: sending" in verbose
    assert "(broadcast off)" in verbose
