"""`broadcast enable|disable` and `broadcast org add-member`: who has Broadcast on, and
who administers an organization's settings."""

from __future__ import annotations

import argparse
from typing import Any

from broadcast_interfaces.cli.common import Commands
from broadcast_interfaces.service import ROLES, SettingsService

OWNER_HELP = "user:ID or org:ID"


def _enable(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    service.set_enabled(args.owner, True, actor=args.actor)
    return {"owner": args.owner, "enabled": True}


def _disable(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    service.set_enabled(args.owner, False, actor=args.actor)
    return {"owner": args.owner, "enabled": False}


def _add_member(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    service.add_member(args.org, args.user, args.role, actor=args.actor)
    return {"org": args.org, "user": args.user, "role": args.role}


def register(commands: Commands) -> None:
    for name, handler, text in (
        ("enable", _enable, "turn Broadcast on for an owner"),
        ("disable", _disable, "turn Broadcast off for an owner"),
    ):
        commands.add(name, handler, text, actor=True).add_argument(
            "--owner", required=True, help=OWNER_HELP
        )

    org = commands.group("org", "organization roles")
    member = org.add(
        "add-member", _add_member, "record a user's role in an organization", actor=True
    )
    member.add_argument("org", help="the organization's ID (without org:)")
    member.add_argument("user", help="the user's ID (without user:)")
    member.add_argument("--role", required=True, choices=ROLES, help="admin changes settings")
