"""What every command group of the CLI shares: the parser class, how a command is
declared (`Commands.add`), argument types, and printing."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from settings.moments import parse_moment

EXIT_REFUSED = 2
# A health probe (`broadcast health ...`) that failed: what an orchestrator acts on.
EXIT_UNHEALTHY = 1

Handler = Callable[[Any, argparse.Namespace], Any]
Render = Callable[[Any], str]


class Refused(Exception):
    """A mistake in the command line itself (bad JSON, unreadable file, a busy port)."""


class UsageError(Exception):
    """argparse's complaint about the command line, reported like every other mistake."""


class Parser(argparse.ArgumentParser):
    """Raises `UsageError` instead of printing usage and exiting, so `main` reports it in
    the same one line (or JSON) as any other refusal. Subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _json_option() -> argparse.ArgumentParser:
    parent = Parser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print JSON")
    return parent


def _actor_option() -> argparse.ArgumentParser:
    parent = Parser(add_help=False)
    parent.add_argument(
        "--actor",
        metavar="user:ID",
        help="act as this user (its permissions are checked); default: the operator",
    )
    return parent


class Commands:
    """One level of subcommands. `add` declares a command; `group` a nested level."""

    def __init__(self, subparsers: Any) -> None:
        self._subparsers = subparsers
        self._json = _json_option()
        self._actor = _actor_option()

    def add(
        self,
        name: str,
        handler: Handler,
        help_text: str,
        render: Render | None = None,
        *,
        actor: bool = False,
        needs_service: bool = True,
    ) -> argparse.ArgumentParser:
        """A command calling `handler(service, args)`. `actor`: it reads or changes one
        owner's settings, so `--actor` means something (permissions are checked);
        `needs_service`: the handler is given a `SettingsService` (else None)."""
        parents = [self._json, self._actor] if actor else [self._json]
        sub = self._subparsers.add_parser(
            name, parents=parents, help=help_text, description=help_text
        )
        sub.set_defaults(handler=handler, render=render, needs_service=needs_service, actor=None)
        return sub

    def group(self, name: str, help_text: str) -> Commands:
        parser = self._subparsers.add_parser(name, help=help_text, description=help_text)
        return Commands(parser.add_subparsers(dest=f"{name}_command", required=True))


# Argument types and values


def json_object(raw: str, flag: str) -> dict[str, Any]:
    """A JSON object given inline or as @file."""
    text = raw
    if raw.startswith("@"):
        try:
            text = Path(raw[1:]).read_text()
        except OSError as exc:
            raise Refused(f"{flag}: cannot read {raw[1:]}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Refused(f"{flag} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(value, dict):
        raise Refused(f"{flag} must be a JSON object")
    return value


def moment(raw: str | None) -> float | None:
    """--since/--until: ISO 8601 (UTC when no offset is given) or unix seconds."""
    if raw is None:
        return None
    try:
        return parse_moment(raw)
    except ValueError:
        raise Refused(
            f"not a time: {raw!r} (ISO 8601 or unix seconds, from 1970 to 9999)"
        ) from None


def positive_int(raw: str) -> int:
    """A count flag (`--limit`): a whole number from 1."""
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def port_number(raw: str) -> int:
    """A TCP port: 0 (any free port) to 65535."""
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {raw!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {value}")
    return value


def add_limit(parser: argparse.ArgumentParser, default: int | None, what: str) -> None:
    shown = f" (default {default})" if default is not None else " (default: all)"
    parser.add_argument(
        "--limit", type=positive_int, default=default, help=f"at most this many {what}{shown}"
    )


def split(raw: str | None) -> list[str]:
    return [item for item in (raw or "").split(",") if item.strip()]


def check_port_free(host: str, port: int) -> None:
    """Refuse at once, in one line, when `host:port` cannot be listened on (in use, or
    not an address of this machine), instead of the server's traceback. The server binds
    again right after: a port taken in between still fails, in the server's words."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the servers do: a port left in TIME_WAIT by the last run is free to use.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
            raise Refused(f"cannot listen on {shown}: {exc.strerror or exc}") from None


# Printing


def render_default(result: Any) -> str:
    if isinstance(result, dict):
        return "\n".join(f"{key}: {value}" for key, value in result.items())
    return str(result)


def print_result(result: Any, as_json: bool, render: Render | None) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    render = render or render_default
    if isinstance(result, list):
        print("\n".join(render(item) for item in result) if result else "(none)")
    else:
        print(render(result))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, under a header row."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    )


def fail(message: str, as_json: bool, status: int) -> int:
    """One line on stderr (`broadcast: error: ...`), or `{"error": {"message": ...}}`."""
    if as_json:
        print(json.dumps({"error": {"message": message}}), file=sys.stderr)
    else:
        print(f"broadcast: error: {message}", file=sys.stderr)
    return status
