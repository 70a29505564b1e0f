"""The `broadcast` console script: a thin shell over `SettingsService`.

One module per command group (owners, destinations, inspection, notify, keys, api-keys,
operations), each with a `register(commands)`; `common` holds what they share. Every
command takes `--json`, with the HTTP API's field names where the API has the same
thing; `--actor` only where the command reads or changes an owner's settings. Secrets
are masked in every output. A refused operation prints one line,
`broadcast: error: ...`, to stderr and exits 2, having changed nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import redis

from broadcast_interfaces.cli import (
    api_keys,
    destinations,
    inspection,
    keys,
    notify,
    operations,
    owners,
)
from broadcast_interfaces.cli.common import (
    EXIT_REFUSED,
    EXIT_UNHEALTHY,
    Commands,
    Parser,
    Refused,
    UsageError,
    fail,
    print_result,
)
from broadcast_interfaces.probes import Unhealthy
from broadcast_interfaces.service import SettingsError, SettingsService, settings_service
from settings.api_keys import ApiKeyError
from settings.config import ConfigurationError
from settings.crypto import SecretsCorrupted

__all__ = ["EXIT_REFUSED", "EXIT_UNHEALTHY", "build_parser", "main"]

# In the order `broadcast --help` lists them.
GROUPS = (owners, destinations, inspection, notify, keys, api_keys, operations)


def main(argv: Sequence[str] | None = None, service: SettingsService | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return fail(str(exc), "--json" in argv, EXIT_REFUSED)
    as_json = args.json or args.json_first
    try:
        result = args.handler((service or settings_service()) if args.needs_service else None, args)
    except (SettingsError, ConfigurationError, Refused, SecretsCorrupted, ApiKeyError) as exc:
        return fail(str(exc), as_json, EXIT_REFUSED)
    except redis.ConnectionError:
        return fail("cannot reach the settings store (BROADCAST_STORE_URL)", as_json, EXIT_REFUSED)
    except Unhealthy as exc:
        return fail(str(exc), as_json, EXIT_UNHEALTHY)
    try:
        whole = getattr(args, "render_whole", None)
        if whole is not None and not as_json:
            print(whole(args)(result))
        else:
            print_result(result, as_json, args.render)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped early (`broadcast ... | head`): not an error. Point stdout at
        # /dev/null so the interpreter's flush at exit does not raise a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Every command of every group (also walked by the tests: each option has help)."""
    parser = Parser(prog="broadcast", description="Configure and inspect Broadcast destinations.")
    # `--json` is accepted before the command too; its own dest, because a subcommand's
    # default would overwrite a shared one.
    parser.add_argument("--json", dest="json_first", action="store_true", help="print JSON")
    commands = Commands(parser.add_subparsers(dest="command", required=True))
    for group in GROUPS:
        group.register(commands)
    return parser
