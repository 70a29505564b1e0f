"""`broadcast api-keys create|list|revoke`: the management keys of the HTTP API."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from broadcast_interfaces.cli.common import Commands, Refused
from broadcast_interfaces.cli.owners import OWNER_HELP
from broadcast_interfaces.service import SettingsService
from settings.api_keys import ManagementKeys


def _create(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    service.authorize(args.owner, actor=args.actor)
    created = ManagementKeys(service.store.redis).create(args.owner, args.name or "")
    return {
        **asdict(created.key),
        "key": created.token,
        "note": "shown once: only its hash is stored",
    }


def _list(service: SettingsService, args: argparse.Namespace) -> list[dict[str, Any]]:
    service.authorize(args.owner, actor=args.actor)
    return [asdict(key) for key in ManagementKeys(service.store.redis).list(args.owner)]


def _revoke(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    keys = ManagementKeys(service.store.redis)
    found = keys.get(args.key_id)
    if found is None:
        raise Refused(f"no management key {args.key_id!r}")
    service.authorize(found.owner, actor=args.actor)
    key = keys.revoke(args.key_id)
    return {"id": key.id, "owner": key.owner, "revoked": True}


def register(commands: Commands) -> None:
    api_keys = commands.group("api-keys", "management keys of the HTTP API")
    create = api_keys.add("create", _create, "create a management key (printed once)", actor=True)
    create.add_argument("--owner", required=True, help=f"the owner the key acts as: {OWNER_HELP}")
    create.add_argument("--name", help="a label to recognise the key by")
    api_keys.add("list", _list, "an owner's management keys", actor=True).add_argument(
        "--owner", required=True, help=OWNER_HELP
    )
    api_keys.add("revoke", _revoke, "revoke a management key", actor=True).add_argument(
        "key_id", help="the key's id (mk_...)"
    )
