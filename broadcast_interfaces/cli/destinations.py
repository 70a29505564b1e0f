"""`broadcast destination ...` and `broadcast types`: an owner's destinations. Their
`--json` has the HTTP API's field names (`broadcast_interfaces.wire`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from broadcast_interfaces.cli.common import Commands, Refused, json_object, split
from broadcast_interfaces.cli.owners import OWNER_HELP
from broadcast_interfaces.service import SettingsError, SettingsService
from broadcast_interfaces.wire import destination_json
from destinations.registry import known_types

ID_HELP = "the destination's id (dst_...)"


def _rules(raw: str | None) -> dict[str, Any] | None:
    return json_object(raw, "--filter-rules") if raw is not None else None


def _add(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    return destination_json(
        service.add_destination(
            args.owner,
            args.type,
            args.name,
            json_object(args.config, "--config"),
            api_keys=split(args.api_keys),
            exclude_api_keys=split(args.exclude_api_keys),
            sampling_rate=args.sampling,
            privacy=args.privacy,
            filter_rules=_rules(args.filter_rules),
            actor=args.actor,
        )
    )


def _update(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    return destination_json(
        service.update_destination(
            args.id,
            name=args.name,
            config=json_object(args.config, "--config") if args.config is not None else None,
            api_keys=split(args.api_keys) if args.api_keys is not None else None,
            exclude_api_keys=(
                split(args.exclude_api_keys) if args.exclude_api_keys is not None else None
            ),
            sampling_rate=args.sampling,
            privacy=args.privacy,
            enabled=args.enabled,
            filter_rules=_rules(args.filter_rules),
            actor=args.actor,
        )
    )


def _list(service: SettingsService, args: argparse.Namespace) -> list[dict[str, Any]]:
    return [destination_json(v) for v in service.list_destinations(args.owner, actor=args.actor)]


def _show(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    return destination_json(service.show_destination(args.id, actor=args.actor))


def _remove(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    service.remove_destination(args.id, actor=args.actor)
    return {"id": args.id, "deleted": True}


def _test(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    result = service.test_destination(args.id, actor=args.actor)
    if not result["ok"]:
        raise SettingsError(f"Test Connection failed: {result['message']}")
    return {
        "id": result["id"],
        "ok": result["ok"],
        "message": result["message"],
        "statusCode": result["status_code"],
    }


def _resume(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    result = service.resume_destination(args.id, actor=args.actor)
    return {
        "id": result["id"],
        "circuitWasOpen": result["circuit_was_open"],
        "circuit": result["circuit"],
        "health": result["health"],
    }


def _schema(_service: None, args: argparse.Namespace) -> str:
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


def _types(_service: None, _args: argparse.Namespace) -> list[str]:
    return known_types()


def render_destination(d: dict[str, Any]) -> str:
    filters = []
    if d["apiKeys"]:
        filters.append("keys=" + ",".join(d["apiKeys"]))
    if d["excludedApiKeys"]:
        filters.append("exclude=" + ",".join(d["excludedApiKeys"]))
    if d["samplingRate"] < 1:
        filters.append(f"sampling={d['samplingRate']:g}")
    if d["privacyMode"]:
        filters.append("privacy")
    if d.get("filterRules"):
        filters.append("filter-rules")
    lines = [
        f"{d['id']}  {d['type']}  {d['name']!r}  owner={d['owner']}  "
        f"{'enabled' if d['enabled'] else 'disabled'}  health={d['health']}"
        + (f"  [{' '.join(filters)}]" if filters else ""),
    ]
    lines += [f"    {key} = {json.dumps(value)}" for key, value in sorted(d["config"].items())]
    return "\n".join(lines)


def _filters(parser: argparse.ArgumentParser, *, update: bool) -> None:
    """The routing options `add` and `update` share."""
    keep = "; an empty value admits every key again" if update else ""
    parser.add_argument(
        "--api-keys", help=f"only traces of these API key ids (comma-separated){keep}"
    )
    parser.add_argument(
        "--exclude-api-keys",
        help="never traces of these API key ids (comma-separated; wins over --api-keys)",
    )
    parser.add_argument(
        "--sampling",
        type=float,
        default=None if update else 1.0,
        help="the share of traces sent, in (0, 1]" + ("" if update else " (default 1)"),
    )
    removes = "; {} removes them" if update else ""
    parser.add_argument("--filter-rules", help=f"filter rules as a JSON object, or @file{removes}")


def register(commands: Commands) -> None:
    destination = commands.group("destination", "manage destinations")
    add = destination.add(
        "add",
        _add,
        "add a destination (saved only if Test Connection passes)",
        render_destination,
        actor=True,
    )
    add.add_argument("--owner", required=True, help=f"whose destination: {OWNER_HELP}")
    add.add_argument("--type", required=True, help="a destination type (`broadcast types`)")
    add.add_argument("--name", required=True, help="a name to recognise it by")
    add.add_argument("--config", required=True, help="the type's settings: JSON object, or @file")
    _filters(add, update=False)
    add.add_argument("--privacy", action="store_true", help="drop prompts and completions")

    update = destination.add(
        "update",
        _update,
        "change a destination (a config change must pass Test Connection)",
        render_destination,
        actor=True,
    )
    update.add_argument("id", help=ID_HELP)
    update.add_argument("--name", help="a new name")
    update.add_argument("--config", help="JSON object merged into the stored config, or @file")
    _filters(update, update=True)
    update.add_argument(
        "--privacy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="drop prompts and completions (or send them again)",
    )
    update.add_argument(
        "--enabled",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send traces to it (or stop)",
    )

    destination.add(
        "list", _list, "list an owner's destinations", render_destination, actor=True
    ).add_argument("--owner", required=True, help=OWNER_HELP)
    for name, handler, text, render in (
        ("show", _show, "show one destination", render_destination),
        ("remove", _remove, "remove a destination", None),
        ("test", _test, "run Test Connection and record the health", None),
        (
            "resume",
            _resume,
            "close the circuit and send the backlog now (the vendor is back)",
            None,
        ),
    ):
        destination.add(name, handler, text, render, actor=True).add_argument("id", help=ID_HELP)

    schema = destination.add(
        "schema",
        _schema,
        "print the CREATE TABLE statement of a warehouse destination (clickhouse, "
        "snowflake, bigquery): one statement, nothing else",
        lambda statement: statement,
        needs_service=False,
    )
    schema.add_argument(
        "--type", required=True, help="the warehouse: clickhouse, snowflake or bigquery"
    )
    schema.add_argument(
        "--table", help="the table's name (default OPENROUTER_TRACES; bigquery: openrouter_traces)"
    )
    for flag, text in (
        ("--database", "the database (clickhouse, snowflake)"),
        ("--schema", "the schema (snowflake)"),
        ("--dataset", "the dataset (bigquery)"),
    ):
        schema.add_argument(flag, help=f"qualify the table with {text}; default: unqualified")

    commands.add("types", _types, "destination types available", needs_service=False)
