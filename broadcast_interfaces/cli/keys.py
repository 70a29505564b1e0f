"""`broadcast keys generate|rotate`: the encryption keys of stored secrets (the
operator's, so no `--actor`)."""

from __future__ import annotations

import argparse

from broadcast_interfaces.cli.common import Commands
from broadcast_interfaces.service import SettingsService
from settings.crypto import generate_key
from settings.key_rotation import rotate_all


def _generate(_service: None, _args: argparse.Namespace) -> dict[str, str]:
    return {"key": generate_key()}


def _rotate(service: SettingsService, _args: argparse.Namespace) -> dict[str, int]:
    return rotate_all(service.store, service.box).as_dict()


def register(commands: Commands) -> None:
    keys = commands.group("keys", "encryption keys")
    keys.add(
        "generate",
        _generate,
        "print a new encryption key",
        lambda result: result["key"],
        needs_service=False,
    )
    keys.add(
        "rotate",
        _rotate,
        "re-encrypt every stored secret with the first key of BROADCAST_ENCRYPTION_KEYS",
    )
