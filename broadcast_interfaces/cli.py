"""The `broadcast` console script: a thin shell over `SettingsService`.

Every command takes `--json`. Secrets are masked in every output. A refused operation
prints one line, `broadcast: error: ...`, to stderr and exits 2, having changed nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import redis
from tqdm import tqdm

from broadcast_engine.dead_letters import DeadLetter
from broadcast_engine.unreadable_messages import UnreadableMessages
from broadcast_interfaces import probes
from broadcast_interfaces.probes import Unhealthy
from broadcast_interfaces.service import SettingsError, SettingsService, settings_service
from destinations.registry import known_types
from settings.api_keys import ApiKeyError, ManagementKeys
from settings.config import ConfigurationError
from settings.crypto import SecretsCorrupted, generate_key
from settings.key_rotation import rotate_all
from settings.moments import iso, parse_moment

EXIT_REFUSED = 2
# A health probe (`broadcast health ...`) that failed: what an orchestrator acts on.
EXIT_UNHEALTHY = 1


class Refused(Exception):
    """A mistake in the command line itself (bad JSON, unreadable file)."""


class UsageError(Exception):
    """argparse's complaint about the command line, reported like every other mistake."""


class _Parser(argparse.ArgumentParser):
    """Raises `UsageError` instead of printing usage and exiting, so `main` reports it in
    the same one line (or JSON) as any other refusal. Subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def main(argv: Sequence[str] | None = None, service: SettingsService | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:
        return _fail(str(exc), "--json" in argv, EXIT_REFUSED)
    as_json = args.json or args.json_first
    try:
        result = args.handler((service or _service()) if args.needs_service else None, args)
    except (SettingsError, ConfigurationError, Refused, SecretsCorrupted, ApiKeyError) as exc:
        return _fail(str(exc), as_json, EXIT_REFUSED)
    except redis.ConnectionError:
        return _fail("cannot reach the settings store (BROADCAST_STORE_URL)", as_json, EXIT_REFUSED)
    except Unhealthy as exc:
        return _fail(str(exc), as_json, EXIT_UNHEALTHY)
    try:
        _print(result, as_json, args.render)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped early (`broadcast ... | head`): not an error. Point stdout at
        # /dev/null so the interpreter's flush at exit does not raise a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _fail(message: str, as_json: bool, status: int) -> int:
    """One line on stderr (`broadcast: error: ...`), or `{"error": {"message": ...}}`."""
    if as_json:
        print(json.dumps({"error": {"message": message}}), file=sys.stderr)
    else:
        print(f"broadcast: error: {message}", file=sys.stderr)
    return status


def _service() -> SettingsService:
    return settings_service()


# Command handlers: (service, args) -> printable result


def _enable(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    service.set_enabled(args.owner, True, actor=args.actor)
    return {"owner": args.owner, "enabled": True}


def _disable(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    service.set_enabled(args.owner, False, actor=args.actor)
    return {"owner": args.owner, "enabled": False}


def _add_member(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    service.add_member(args.org, args.user, args.role, actor=args.actor)
    return {"org": args.org, "user": args.user, "role": args.role}


def _destination_add(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    return service.add_destination(
        args.owner,
        args.type,
        args.name,
        _config(args.config),
        api_keys=_split(args.api_keys),
        exclude_api_keys=_split(args.exclude_api_keys),
        sampling_rate=args.sampling,
        privacy=args.privacy,
        filter_rules=(
            _json_object(args.filter_rules, "--filter-rules") if args.filter_rules else None
        ),
        actor=args.actor,
    )


def _destination_update(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    return service.update_destination(
        args.id,
        name=args.name,
        config=_config(args.config) if args.config is not None else None,
        api_keys=_split(args.api_keys) if args.api_keys is not None else None,
        exclude_api_keys=(
            _split(args.exclude_api_keys) if args.exclude_api_keys is not None else None
        ),
        sampling_rate=args.sampling,
        privacy=args.privacy,
        enabled=args.enabled,
        filter_rules=(
            _json_object(args.filter_rules, "--filter-rules")
            if args.filter_rules is not None
            else None
        ),
        actor=args.actor,
    )


def _destination_list(service: SettingsService, args: argparse.Namespace) -> list[dict[str, Any]]:
    return service.list_destinations(args.owner, actor=args.actor)


def _destination_show(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    return service.show_destination(args.id, actor=args.actor)


def _destination_remove(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    service.remove_destination(args.id, actor=args.actor)
    return {"id": args.id, "removed": True}


def _destination_test(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    result = service.test_destination(args.id, actor=args.actor)
    if not result["ok"]:
        raise SettingsError(f"Test Connection failed: {result['message']}")
    return result


def _destination_resume(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    return service.resume_destination(args.id, actor=args.actor)


def _status(service: SettingsService, args: argparse.Namespace) -> list[dict[str, Any]]:
    return service.status(args.owner, actor=args.actor)


def _deliveries(service: SettingsService, args: argparse.Namespace) -> list[dict[str, Any]]:
    return service.deliveries(args.id, limit=args.limit, actor=args.actor)


def _rejected(service: SettingsService, args: argparse.Namespace) -> list[dict[str, Any]]:
    return service.rejected_events(args.owner, limit=args.limit, actor=args.actor)


def _notify_set(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    return service.set_notification_target(
        args.owner, args.url, args.signing_secret, actor=args.actor
    )


def _events(service: SettingsService, args: argparse.Namespace) -> list[dict[str, Any]]:
    return service.events(args.owner, limit=args.limit, actor=args.actor)


def _dead_letters(service: SettingsService, args: argparse.Namespace) -> list[dict[str, Any]]:
    letters = service.dead_letters(
        args.id,
        since=_time(args.since),
        until=_time(args.until),
        ids=args.ids,
        limit=args.limit,
        actor=args.actor,
    )
    return [_letter_view(letter) for letter in letters]


def _replay(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    letters = service.dead_letters(
        args.id,
        since=_time(args.since),
        until=_time(args.until),
        ids=args.ids,
        actor=args.actor,
    )
    if args.ids:
        missing = sorted(set(args.ids) - {letter.id for letter in letters})
        if missing:
            raise Refused(f"no dead letter {', '.join(missing)} for {args.id}")
    with tqdm(
        total=len(letters),
        desc="replaying",
        unit="trace",
        file=sys.stderr,
        disable=args.json or None,
    ) as progress:
        count = service.replay(
            args.id, letters, on_progress=lambda _l: progress.update(1), actor=args.actor
        )
    return {
        "id": args.id,
        "replayed": count,
        "request_ids": [letter.request_id for letter in letters],
    }


def _destination_schema(_service: None, args: argparse.Namespace) -> str:
    from destinations.warehouse_schema import create_table

    try:
        statement = create_table(
            args.type,
            table=args.table,
            database=args.database,
            schema=args.schema,
            dataset=args.dataset,
        )
    except ValueError as exc:
        raise Refused(str(exc)) from None
    return statement + ";"


def _types(_service: SettingsService, _args: argparse.Namespace) -> list[str]:
    return known_types()


def _keys_generate(_service: None, _args: argparse.Namespace) -> dict[str, str]:
    return {"key": generate_key()}


def _keys_rotate(service: SettingsService, args: argparse.Namespace) -> dict[str, int]:
    _operator_only(args, "keys rotate")  # re-seals every owner's secrets
    return rotate_all(service.store, service.box).as_dict()


def _unreadable(service: SettingsService, args: argparse.Namespace) -> list[dict[str, Any]]:
    _operator_only(args, "unreadable")  # broker messages belong to no owner
    if args.queue is not None and args.queue not in UnreadableMessages.listed_queues():
        raise Refused(f"--queue: one of {', '.join(UnreadableMessages.listed_queues())}")
    return UnreadableMessages(service.store.redis).latest(args.queue, limit=args.limit)


def _operator_only(args: argparse.Namespace, command: str) -> None:
    """Refuse `--actor` for a command that reaches beyond one owner's settings."""
    if args.actor is not None:
        raise Refused(f"`broadcast {command}` is for the operator only: run it without --actor")


# Operations: probes for an orchestrator and the metrics endpoint (no settings service).


def _health_worker(_service: None, args: argparse.Namespace) -> dict[str, Any]:
    from broadcast_engine.runtime import runtime

    return probes.check_worker(runtime().tasks.celery, node=args.node, timeout=args.timeout)


def _health_beat(_service: None, args: argparse.Namespace) -> dict[str, Any]:
    from broadcast_engine.runtime import runtime

    return probes.check_beat(
        runtime().store.redis, max_age_seconds=args.max_age, now=time.time()
    )


def _health_store(_service: None, _args: argparse.Namespace) -> dict[str, Any]:
    from broadcast_engine.runtime import runtime

    return probes.check_store(runtime().store.redis)


def _metrics_serve(_service: None, args: argparse.Namespace) -> dict[str, Any]:
    from broadcast_interfaces import metrics

    metrics.serve(args.host, args.port)
    return {"stopped": True}


def _api_keys_create(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    service.authorize(args.owner, actor=args.actor)
    created = ManagementKeys(service.store.redis).create(args.owner, args.name or "")
    return {
        **asdict(created.key),
        "key": created.token,
        "note": "shown once: only its hash is stored",
    }


def _api_keys_list(service: SettingsService, args: argparse.Namespace) -> list[dict[str, Any]]:
    service.authorize(args.owner, actor=args.actor)
    return [asdict(key) for key in ManagementKeys(service.store.redis).list(args.owner)]


def _api_keys_revoke(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    keys = ManagementKeys(service.store.redis)
    found = keys.get(args.key_id)
    if found is None:
        raise Refused(f"no management key {args.key_id!r}")
    service.authorize(found.owner, actor=args.actor)
    key = keys.revoke(args.key_id)
    return {"id": key.id, "owner": key.owner, "revoked": True}


def _serve(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    from broadcast_engine.runtime import runtime
    from broadcast_interfaces.http_api import serve

    serve(service, args.host, args.port, runtime().config)
    return {"stopped": f"http://{args.host}:{args.port}"}


# Rendering


def _render_destination(d: dict[str, Any]) -> str:
    filters = []
    if d["api_keys"]:
        filters.append("keys=" + ",".join(d["api_keys"]))
    if d["exclude_api_keys"]:
        filters.append("exclude=" + ",".join(d["exclude_api_keys"]))
    if d["sampling_rate"] < 1:
        filters.append(f"sampling={d['sampling_rate']:g}")
    if d["privacy"]:
        filters.append("privacy")
    if d.get("filter_rules"):
        filters.append("filter-rules")
    lines = [
        f"{d['id']}  {d['type']}  {d['name']!r}  owner={d['owner']}  "
        f"{'enabled' if d['enabled'] else 'disabled'}  health={d['health']}"
        + (f"  [{' '.join(filters)}]" if filters else ""),
    ]
    lines += [f"    {key} = {json.dumps(value)}" for key, value in sorted(d["config"].items())]
    return "\n".join(lines)


def _render_status(row: dict[str, Any]) -> str:
    c = row["counters"]
    line = (
        f"{row['id']}  {row['type']}  {row['name']!r}  owner={row['owner']}"
        f"{'' if row['owner_enabled'] else ' (broadcast off)'}  "
        f"{'enabled' if row['enabled'] else 'disabled'}  health={row['health']}\n"
        f"    delivered={c['delivered']} retried={c['retried']} failed={c['failed']} "
        f"filtered_by_key={c['filtered_by_key']} "
        f"filtered_by_rule={c.get('filtered_by_rule', 0)} sampled_out={c['sampled_out']} "
        f"dropped_overflow={c['dropped_overflow']} "
        f"skipped(disabled)={c['skipped_disabled'] + c['skipped_owner_disabled']} "
        f"rejected_events(owner)={row['owner_rejected_events']}"
    )
    line += (
        f"\n    delivery: {row['delivery']}"
        + (f"; next attempt {row['next_attempt']}" if row["next_attempt"] else "")
        + f"  circuit={row['circuit']} backlog={row['backlog']} in_flight={row['in_flight']}"
        f" dead_letters={row['dead_letters']}"
    )
    if row["oldest_waiting_since"]:
        line += f" oldest_waiting_since={row['oldest_waiting_since']}"
    line += f"\n    last_check={row['checked_at'] or '-'} next_check={row['next_check'] or '-'}"
    if row["health_reason"]:
        line += f"\n    health reason: {row['health_reason']}"
    if row["last_error"]:
        line += f"\n    last error ({row['last_error_at']}): {row['last_error']}"
    return line


def _render_event(event: dict[str, Any]) -> str:
    details = " ".join(f"{k}={v}" for k, v in sorted(event["data"].items()))
    return f"{iso(event['at'])}  {event['type']}  {details}"


def _render_letter(letter: dict[str, Any]) -> str:
    text = f"{letter['id']}  {letter['request_id']}  {letter['at']}  {letter['reason']}"
    if letter["replayed_at"]:
        text += f"  (replayed {letter['replayed_at']})"
    return text


def _render_rejected(entry: dict[str, Any]) -> str:
    return f"{entry['at']}  {entry['id'] or '(no id)'}  {entry['owner'] or '-'}  {entry['reason']}"


def _render_unreadable(entry: dict[str, Any]) -> str:
    return (
        f"{iso(entry['at'])}  {entry['queue']}  task={entry['task'] or '-'}  "
        f"id={entry['task_id'] or '-'}  {entry['size']} bytes  sha256={entry['sha256']}\n"
        f"    {entry['reason']}"
    )


def _render_replay(result: dict[str, Any]) -> str:
    return f"replayed {result['replayed']} dead letter(s) of {result['id']}"


def _render_attempt(entry: dict[str, Any]) -> str:
    count = entry.get("traces", 1)
    requests = entry["request_id"] + (f" (+{count - 1} more)" if count > 1 else "")
    text = f"{entry['at']}  {requests}  {entry['outcome']}"
    if entry.get("status_code") is not None or entry.get("duration_ms") is not None:
        text += f"  status={entry.get('status_code')}  {entry.get('duration_ms') or 0:.0f}ms"
    if entry.get("next"):
        text += f"  next={entry['next']}"
    if entry.get("error"):
        text += f"\n    {entry['error']}"
    for item in entry.get("rejected") or ():
        text += f"\n    rejected: {item}"
    for note in entry.get("notes") or ():
        text += f"\n    note: {note}"
    for request_id, fate in (entry.get("items") or {}).items():
        text += f"\n    {request_id}: {fate}"
    return text


def _render_default(result: Any) -> str:
    if isinstance(result, dict):
        return "\n".join(f"{key}: {value}" for key, value in result.items())
    return str(result)


def _print(result: Any, as_json: bool, render: Callable[[Any], str] | None) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    render = render or _render_default
    if isinstance(result, list):
        print("\n".join(render(item) for item in result) if result else "(none)")
    else:
        print(render(result))


# Argument parsing


def _config(raw: str) -> dict[str, Any]:
    return _json_object(raw, "--config")


def _json_object(raw: str, flag: str) -> dict[str, Any]:
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


def _time(raw: str | None) -> float | None:
    """--since/--until: ISO 8601 (UTC when no offset is given) or unix seconds."""
    if raw is None:
        return None
    try:
        return parse_moment(raw)
    except ValueError:
        raise Refused(
            f"not a time: {raw!r} (ISO 8601 or unix seconds, from 1970 to 9999)"
        ) from None


def _letter_view(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "request_id": letter.request_id,
        "at": iso(letter.at),
        "reason": letter.reason,
        "replayed_at": iso(letter.replayed_at) if letter.replayed_at else None,
    }


def _positive_int(raw: str) -> int:
    """A count flag (`--limit`): a whole number from 1."""
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _split(raw: str | None) -> list[str]:
    return [item for item in (raw or "").split(",") if item.strip()]


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument("--actor", help="act as user:ID (permissions checked); default: operator")

    parser = _Parser(
        prog="broadcast", description="Configure and inspect Broadcast destinations."
    )
    # `--json` is accepted before the command too; its own dest, because a subcommand's
    # default would overwrite a shared one.
    parser.add_argument("--json", dest="json_first", action="store_true", help="print JSON")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(
        group: Any,
        name: str,
        handler: Callable[..., Any],
        help_text: str,
        render: Callable[[Any], str] | None = None,
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler, render=render, needs_service=True)
        return sub

    for name, handler, text in (
        ("enable", _enable, "turn Broadcast on for an owner"),
        ("disable", _disable, "turn Broadcast off for an owner"),
    ):
        command(commands, name, handler, text).add_argument("--owner", required=True)

    org = commands.add_parser("org", help="organization roles").add_subparsers(
        dest="org_command", required=True
    )
    member = command(org, "add-member", _add_member, "record a user's role in an organization")
    member.add_argument("org")
    member.add_argument("user")
    member.add_argument("--role", required=True, choices=["admin", "member"])

    destination = commands.add_parser("destination", help="manage destinations").add_subparsers(
        dest="destination_command", required=True
    )
    add = command(
        destination,
        "add",
        _destination_add,
        "add a destination (saved only if Test Connection passes)",
        _render_destination,
    )
    add.add_argument("--owner", required=True)
    add.add_argument("--type", required=True)
    add.add_argument("--name", required=True)
    add.add_argument("--config", required=True, help="JSON object, or @file")
    add.add_argument("--api-keys", help="only these API key ids (comma-separated)")
    add.add_argument("--exclude-api-keys", help="never these API key ids (comma-separated)")
    add.add_argument("--sampling", type=float, default=1.0, help="rate in (0, 1]")
    add.add_argument("--privacy", action="store_true", help="drop prompts and completions")
    add.add_argument("--filter-rules", help="filter rules JSON object, or @file")

    update = command(
        destination,
        "update",
        _destination_update,
        "change a destination (a config change must pass Test Connection)",
        _render_destination,
    )
    update.add_argument("id")
    update.add_argument("--name")
    update.add_argument("--config", help="JSON object merged into the stored config, or @file")
    update.add_argument("--api-keys")
    update.add_argument("--exclude-api-keys")
    update.add_argument("--sampling", type=float)
    update.add_argument("--privacy", action=argparse.BooleanOptionalAction, default=None)
    update.add_argument("--enabled", action=argparse.BooleanOptionalAction, default=None)
    update.add_argument("--filter-rules", help="filter rules JSON object, or @file; {} removes")

    command(
        destination, "list", _destination_list, "list an owner's destinations", _render_destination
    ).add_argument("--owner", required=True)
    for name, handler, text, render in (
        ("show", _destination_show, "show one destination", _render_destination),
        ("remove", _destination_remove, "remove a destination", None),
        ("test", _destination_test, "run Test Connection and record the health", None),
        (
            "resume",
            _destination_resume,
            "close the circuit and send the backlog now (the vendor is back)",
            None,
        ),
    ):
        command(destination, name, handler, text, render).add_argument("id")

    schema = command(
        destination,
        "schema",
        _destination_schema,
        "print the CREATE TABLE statement of a warehouse destination (clickhouse, "
        "snowflake, bigquery): one statement, nothing else",
        lambda statement: statement,
    )
    schema.set_defaults(needs_service=False)
    schema.add_argument("--type", required=True)
    for flag in ("--table", "--database", "--schema", "--dataset"):
        schema.add_argument(flag)

    status = command(
        commands, "status", _status, "health and counters per destination", _render_status
    )
    status.add_argument("--owner")

    deliveries = command(
        commands,
        "deliveries",
        _deliveries,
        "latest delivery attempts of a destination",
        _render_attempt,
    )
    deliveries.add_argument("id")
    deliveries.add_argument("--limit", type=_positive_int, default=20)

    rejected = command(
        commands, "rejected", _rejected, "latest rejected events with reasons", _render_rejected
    )
    rejected.add_argument("--owner")
    rejected.add_argument("--limit", type=_positive_int, default=20)

    unreadable = command(
        commands,
        "unreadable",
        _unreadable,
        "broker messages no worker could read, set aside (operator only)",
        _render_unreadable,
    )
    unreadable.add_argument("--queue", help="one queue (default: all)")
    unreadable.add_argument("--limit", type=_positive_int, default=20)

    notify = commands.add_parser("notify", help="owners' health notifications").add_subparsers(
        dest="notify_command", required=True
    )
    notify_set = command(
        notify,
        "set",
        _notify_set,
        "post the owner's health events to a URL (signed with a whsec_ secret)",
    )
    notify_set.add_argument("--owner", required=True)
    notify_set.add_argument("--url", required=True)
    notify_set.add_argument("--signing-secret")

    events = command(commands, "events", _events, "an owner's health events", _render_event)
    events.add_argument("--owner", required=True)
    events.add_argument("--limit", type=_positive_int, default=50)

    for name, handler, text, render in (
        ("dead-letters", _dead_letters, "deliveries given up on, with reasons", _render_letter),
        ("replay", _replay, "re-queue dead letters (idempotent at the vendor)", _render_replay),
    ):
        sub = command(commands, name, handler, text, render)
        sub.add_argument("id", help="destination id")
        sub.add_argument("--since", help="ISO 8601 or unix seconds")
        sub.add_argument("--until", help="ISO 8601 or unix seconds")
        sub.add_argument("--id", dest="ids", action="append", help="a dead letter id (repeat)")
        if name == "dead-letters":
            sub.add_argument("--limit", type=_positive_int)

    command(commands, "types", _types, "destination types available").set_defaults(
        needs_service=False
    )
    keys = commands.add_parser("keys", help="encryption keys").add_subparsers(
        dest="keys_command", required=True
    )
    command(
        keys, "generate", _keys_generate, "print a new encryption key", lambda r: r["key"]
    ).set_defaults(needs_service=False)
    command(
        keys,
        "rotate",
        _keys_rotate,
        "re-encrypt every stored secret with the first key of BROADCAST_ENCRYPTION_KEYS",
    )
    _operations_commands(commands, command)

    api_keys = commands.add_parser(
        "api-keys", help="management keys of the HTTP API"
    ).add_subparsers(dest="api_keys_command", required=True)
    create = command(
        api_keys, "create", _api_keys_create, "create a management key (printed once)"
    )
    create.add_argument("--owner", required=True, help="user:ID or org:ID the key acts as")
    create.add_argument("--name", help="a label to recognise the key by")
    command(api_keys, "list", _api_keys_list, "an owner's management keys").add_argument(
        "--owner", required=True
    )
    command(api_keys, "revoke", _api_keys_revoke, "revoke a management key").add_argument(
        "key_id"
    )

    serve = command(commands, "serve", _serve, "run the management HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    return parser


def _operations_commands(commands: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """`broadcast health worker|beat|store` (exit 0 or 1) and `broadcast metrics serve`."""
    health = commands.add_parser(
        "health", help="liveness/readiness probes: exit 0 when healthy, 1 when not"
    ).add_subparsers(dest="health_command", required=True)
    worker = command(health, "worker", _health_worker, "a worker answers a Celery ping")
    worker.add_argument("--node", help="worker node name (`fanout` means fanout@this host)")
    worker.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    beat = command(health, "beat", _health_beat, "beat's sweep ran recently")
    beat.add_argument(
        "--max-age", type=float, default=60.0, help="seconds since the last sweep (default 60)"
    )
    store = command(health, "store", _health_store, "the settings store answers")
    metrics = commands.add_parser("metrics", help="Prometheus metrics").add_subparsers(
        dest="metrics_command", required=True
    )
    serve = command(metrics, "serve", _metrics_serve, "serve /metrics (read from Redis)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=9808)
    for sub in (worker, beat, store, serve):
        sub.set_defaults(needs_service=False)


if __name__ == "__main__":
    sys.exit(main())
