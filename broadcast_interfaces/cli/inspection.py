"""What is happening to the traces: `status`, `deliveries`, `dead-letters`, `replay`,
`events`, `rejected`, `unreadable`. Times are ISO 8601 in every output."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tqdm import tqdm

from broadcast_engine.unreadable_messages import UnreadableMessages
from broadcast_interfaces.cli.common import Commands, Refused, add_limit, moment, table
from broadcast_interfaces.cli.destinations import ID_HELP
from broadcast_interfaces.cli.owners import OWNER_HELP
from broadcast_interfaces.service import SettingsService
from broadcast_interfaces.wire import letter_json
from settings.moments import iso

# `status` without --verbose: one row per destination, names cut to fit 100 columns.
NAME_WIDTH = OWNER_WIDTH = 14


def _status(service: SettingsService, args: argparse.Namespace) -> list[dict[str, Any]]:
    return service.status(args.owner, actor=args.actor)


def _deliveries(service: SettingsService, args: argparse.Namespace) -> list[dict[str, Any]]:
    return service.deliveries(args.id, limit=args.limit, actor=args.actor)


def _rejected(service: SettingsService, args: argparse.Namespace) -> list[dict[str, Any]]:
    return service.rejected_events(args.owner, limit=args.limit, actor=args.actor)


def _events(service: SettingsService, args: argparse.Namespace) -> list[dict[str, Any]]:
    return service.events(args.owner, limit=args.limit, actor=args.actor)


def _dead_letters(service: SettingsService, args: argparse.Namespace) -> list[dict[str, Any]]:
    letters = service.dead_letters(
        args.id,
        since=moment(args.since),
        until=moment(args.until),
        ids=args.ids,
        limit=args.limit,
        actor=args.actor,
    )
    return [letter_json(letter) for letter in letters]


def _replay(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    letters = service.dead_letters(
        args.id, since=moment(args.since), until=moment(args.until), ids=args.ids, actor=args.actor
    )
    if args.ids:
        unmatched = service.unmatched_letter_ids(args.ids, letters)
        if unmatched:
            raise Refused(
                f"no dead letter of {args.id} has the id {', '.join(unmatched)}: --id takes a "
                f"request id or a dead-letter id (a stream id like 1733490000000-0, listed "
                f"by `broadcast dead-letters {args.id}`)"
            )
    with tqdm(
        total=len(letters),
        desc="replaying",
        unit="letter",
        file=sys.stderr,
        disable=args.json or None,
    ) as progress:
        outcome = service.replay(
            args.id,
            letters,
            again=args.again,
            on_progress=lambda _letter: progress.update(1),
            actor=args.actor,
        )
    return {"id": args.id, **outcome.as_json()}


def _unreadable(service: SettingsService, args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.queue is not None and args.queue not in UnreadableMessages.listed_queues():
        raise Refused(f"--queue: one of {', '.join(UnreadableMessages.listed_queues())}")
    entries = UnreadableMessages(service.store.redis).latest(args.queue, limit=args.limit)
    return [{**entry, "at": iso(float(entry["at"]))} for entry in entries]


# Rendering


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _state(row: dict[str, Any]) -> str:
    """What happens to its traces, in a word: the health when traces go to it."""
    if not row["owner_enabled"]:
        return "owner-off"
    if not row["enabled"]:
        return "disabled"
    return row["health"]


def render_status_table(rows: list[dict[str, Any]], *, with_owner: bool = True) -> str:
    """A header row, then one row per destination; the owner column only when the rows
    may be of several owners (no --owner)."""
    if not rows:
        return "(none)"
    headers = ["ID", "TYPE", "NAME", "OWNER", "STATE", "DELIVERED", "FAILED", "BACKLOG"]
    lines = [
        [
            row["id"],
            row["type"],
            _cut(row["name"], NAME_WIDTH),
            _cut(row["owner"], OWNER_WIDTH),
            _state(row),
            str(row["counters"]["delivered"]),
            str(row["counters"]["failed"]),
            str(row["backlog"]),
        ]
        for row in rows
    ]
    if not with_owner:
        headers.pop(3)
        for line in lines:
            line.pop(3)
    return table(headers, lines)


def render_status_details(row: dict[str, Any]) -> str:
    c = row["counters"]
    line = (
        f"{row['id']}  {row['type']}  {row['name']!r}  owner={row['owner']}"
        f"{'' if row['owner_enabled'] else ' (broadcast off)'}  "
        f"{'enabled' if row['enabled'] else 'disabled'}  health={row['health']}\n"
        f"    delivered={c['delivered']} retried={c['retried']} failed={c['failed']} "
        f"filtered_by_key={c['filtered_by_key']} "
        f"filtered_by_rule={c.get('filtered_by_rule', 0)} sampled_out={c['sampled_out']}\n"
        f"    dropped_overflow={c['dropped_overflow']} "
        f"skipped(disabled)={c['skipped_disabled'] + c['skipped_owner_disabled']} "
        f"rejected_events(owner)={row['owner_rejected_events']}\n"
        f"    replayed={c.get('replayed', 0)} replay_delivered={c.get('replay_delivered', 0)} "
        f"replay_failed={c.get('replay_failed', 0)}"
    )
    line += (
        f"\n    delivery: {row['delivery']}"
        + (f"; next attempt {row['next_attempt']}" if row["next_attempt"] else "")
        + f"\n    circuit={row['circuit']} backlog={row['backlog']} in_flight={row['in_flight']}"
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
    return f"{event['at']}  {event['type']}  {details}"


def _render_letter(letter: dict[str, Any]) -> str:
    text = f"{letter['id']}  {letter['requestId']}  {letter['at']}  {letter['reason']}"
    if letter["replayDeliveredAt"]:
        text += f"  (replay delivered {letter['replayDeliveredAt']})"
    elif letter["replayedAt"]:
        text += f"  (replayed {letter['replayedAt']}, not delivered yet)"
    return text


def _render_rejected(entry: dict[str, Any]) -> str:
    return f"{entry['at']}  {entry['id'] or '(no id)'}  {entry['owner'] or '-'}  {entry['reason']}"


def _render_unreadable(entry: dict[str, Any]) -> str:
    return (
        f"{entry['at']}  {entry['queue']}  task={entry['task'] or '-'}  "
        f"id={entry['task_id'] or '-'}  {entry['size']} bytes  sha256={entry['sha256']}\n"
        f"    {entry['reason']}"
    )


def _render_replay(result: dict[str, Any]) -> str:
    text = f"sent {result['sent']} trace(s) of {result['id']} again"
    if result["skippedDelivered"]:
        text += (
            f"; skipped {result['skippedDelivered']} already replayed and delivered "
            "(--again sends them anyway)"
        )
    if result["skippedNoTrace"]:
        text += f"; {result['skippedNoTrace']} kept no trace to send"
    return text


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


def register(commands: Commands) -> None:
    status = commands.add(
        "status",
        _status,
        "health and counters per destination: a table, the details with --verbose",
        actor=True,
    )
    status.add_argument("--owner", help=f"one owner's destinations ({OWNER_HELP}); default: all")
    status.add_argument(
        "--verbose", "-v", action="store_true", help="every counter, the delivery state, errors"
    )
    status.set_defaults(render_whole=_status_renderer)

    deliveries = commands.add(
        "deliveries",
        _deliveries,
        "latest delivery attempts of a destination",
        _render_attempt,
        actor=True,
    )
    deliveries.add_argument("id", help=ID_HELP)
    add_limit(deliveries, 20, "attempts, newest first")

    rejected = commands.add(
        "rejected",
        _rejected,
        "latest rejected events with reasons",
        _render_rejected,
        actor=True,
    )
    rejected.add_argument("--owner", help=f"one owner's events ({OWNER_HELP}); default: all")
    add_limit(rejected, 20, "events, newest first")

    unreadable = commands.add(
        "unreadable",
        _unreadable,
        "broker messages no worker could read, set aside (operator only)",
        _render_unreadable,
    )
    unreadable.add_argument("--queue", help="one queue (default: all)")
    add_limit(unreadable, 20, "messages, newest first")

    events = commands.add("events", _events, "an owner's health events", _render_event, actor=True)
    events.add_argument("--owner", required=True, help=OWNER_HELP)
    add_limit(events, 50, "events, newest first")

    for name, handler, text, render in (
        ("dead-letters", _dead_letters, "deliveries given up on, with reasons", _render_letter),
        (
            "replay",
            _replay,
            "send dead letters again; a trace whose replay was delivered is skipped "
            "unless --again (idempotent at the vendor)",
            _render_replay,
        ),
    ):
        sub = commands.add(name, handler, text, render, actor=True)
        sub.add_argument("id", help=ID_HELP)
        sub.add_argument("--since", help="dead-lettered from this time: ISO 8601 or unix seconds")
        sub.add_argument("--until", help="dead-lettered up to this time: ISO 8601 or unix seconds")
        sub.add_argument(
            "--id",
            dest="ids",
            action="append",
            metavar="ID",
            help="a request id or a dead-letter id (repeat for more)",
        )
        if name == "dead-letters":
            add_limit(sub, None, "letters, oldest first")
        else:
            sub.add_argument(
                "--again",
                action="store_true",
                help="also send traces whose earlier replay was delivered",
            )


def _status_renderer(args: argparse.Namespace) -> Any:
    if args.verbose:
        return lambda rows: "\n".join(map(render_status_details, rows)) if rows else "(none)"
    return lambda rows: render_status_table(rows, with_owner=args.owner is None)
