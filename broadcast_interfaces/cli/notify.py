"""`broadcast notify set`: where an owner's health events are posted."""

from __future__ import annotations

import argparse
from typing import Any

from broadcast_interfaces.cli.common import Commands
from broadcast_interfaces.cli.owners import OWNER_HELP
from broadcast_interfaces.service import SettingsService


def _set(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    return service.set_notification_target(
        args.owner, args.url, args.signing_secret, actor=args.actor
    )


def register(commands: Commands) -> None:
    notify = commands.group("notify", "owners' health notifications")
    target = notify.add(
        "set",
        _set,
        "post the owner's health events to a URL (signed with a whsec_ secret)",
        actor=True,
    )
    target.add_argument("--owner", required=True, help=OWNER_HELP)
    target.add_argument("--url", required=True, help="the https URL events are posted to")
    target.add_argument(
        "--signing-secret", help="a whsec_ secret to sign them with (Standard Webhooks)"
    )
