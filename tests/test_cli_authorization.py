"""Who may read and change what, through the `broadcast` console script as a real process.

A user reads and changes its own settings; an organization's members read its settings
and only its admins change them. What an actor may not read does not exist for it: the
same "not found" as an id that was never created, and no other owner's name anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

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
    assert len(lines) == 1 and lines[0].startswith("broadcast: error: "), result.stderr
    return lines[0]


@pytest.fixture
def world(service, receiver):
    """alice (a user), bob (another user), an organization with alice as admin and carol
    as member; a destination and a rejected event for alice and for the organization."""
    tag = uuid.uuid4().hex[:8]
    alice, bob, carol, org = f"alice{tag}", f"bob{tag}", f"carol{tag}", f"org{tag}"
    sink = receiver()
    service.add_member(org, alice, "admin")
    service.add_member(org, carol, "member")
    destinations = {}
    for owner in (f"user:{alice}", f"org:{org}", f"user:{bob}"):
        service.set_enabled(owner, True)
        destinations[owner] = service.add_destination(owner, "webhook", "hook", {"url": sink.url})[
            "id"
        ]
        service.store.record_rejected_event(
            owner, {"id": f"bad-{owner}", "owner": owner, "reason": "model: bad", "at": "t"}
        )
    return {
        "alice": f"user:{alice}",
        "bob": f"user:{bob}",
        "carol": f"user:{carol}",
        "org": f"org:{org}",
        "names": (alice, org),
        "dest": destinations,
    }


def test_rejected_checks_the_actor(world):
    alice, bob, org = world["alice"], world["bob"], world["org"]
    own = ok("rejected", "--actor", bob, "--limit", "500")
    assert {entry["owner"] for entry in own} == {bob}
    assert refused("rejected", "--owner", alice, "--actor", bob) == (
        f"broadcast: error: {bob} may not read the settings of {alice}"
    )
    admin_view = ok("rejected", "--actor", alice, "--limit", "500")
    assert {entry["owner"] for entry in admin_view} == {alice, org}
    member_view = ok("rejected", "--owner", org, "--actor", world["carol"])
    assert [entry["id"] for entry in member_view] == [f"bad-{org}"]


def test_status_without_owner_names_no_other_owner(world):
    bob = world["bob"]
    result = run("status", "--actor", bob, "--json")
    assert result.returncode == 0, result.stderr
    for name in world["names"]:
        assert name not in result.stdout + result.stderr
    assert world["dest"][bob] in result.stdout
    rows = ok("status", "--actor", world["carol"])
    assert {row["owner"] for row in rows} == {world["org"]}  # a member reads its org
    assert refused("status", "--owner", world["alice"], "--actor", bob) == (
        f"broadcast: error: {bob} may not read the settings of {world['alice']}"
    )


@pytest.mark.parametrize(
    "command",
    [
        ["destination", "show"],
        ["deliveries"],
        ["dead-letters"],
        ["destination", "update", "--sampling", "0.5"],
        ["destination", "remove"],
        ["destination", "test"],
        ["replay"],
    ],
    ids=lambda c: "-".join(c[:2]),
)
def test_what_an_actor_may_not_see_is_not_found(world, command):
    bob = world["bob"]
    hidden = world["dest"][world["alice"]]
    missing = "dst_" + uuid.uuid4().hex[:16]

    def attempt(destination_id: str) -> str:
        argv = (
            [*command[:2], destination_id]
            if command[0] == "destination"
            else [
                command[0],
                destination_id,
            ]
        )
        return refused(*argv, *command[2:], "--actor", bob)

    assert attempt(hidden) == f"broadcast: error: no destination {hidden!r}"
    assert attempt(missing) == f"broadcast: error: no destination {missing!r}"
    assert ok("destination", "show", hidden)["id"] == hidden  # still there for the operator


def test_members_read_and_only_admins_change(world):
    carol, org_dest = world["carol"], world["dest"][world["org"]]
    assert ok("destination", "show", org_dest, "--actor", carol)["id"] == org_dest
    assert ok("destination", "list", "--owner", world["org"], "--actor", carol)[0]["id"] == org_dest
    line = refused("destination", "update", org_dest, "--sampling", "0.5", "--actor", carol)
    assert line.endswith(f"is not an admin of organization {world['org'].split(':')[1]}")
    line = refused("destination", "list", "--owner", world["alice"], "--actor", world["bob"])
    assert line == f"broadcast: error: {world['bob']} may not read the settings of {world['alice']}"
    updated = ok("destination", "update", org_dest, "--sampling", "0.5", "--actor", world["alice"])
    assert updated["samplingRate"] == 0.5
