"""Beat's periodic jobs: sweep the backlogs, re-validate credentials, post owners'
notifications, trim dead letters.

Each job is a plain function of (runtime, now); `tasks.maintenance` wraps each in a thin
task, so tests drive the functions with a controllable clock while the deliveries they
start run on a real worker. Jobs that fan out (a check per due destination, a POST per
notification) send tasks by name through the runtime's `TaskSender`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from broadcast_broker.task_client import CHECK_DESTINATION_TASK, NOTIFY_TASK
from broadcast_engine.backlog_upkeep import enforce_budget, upkeep
from broadcast_engine.backoff import RetryPolicy
from broadcast_engine.connection_check import check_stored_connection
from broadcast_engine.runtime import Runtime
from destinations.base import ConnectionCheck, result_from_transport
from destinations.outcomes import Outcome
from destinations.registry import UnknownDestinationType, destination_class
from destinations.transport import HttpRequest
from destinations.webhook import signed_headers
from settings import keys

logger = logging.getLogger("broadcast.maintenance")

CHECK_BATCH = 500
CHECK_LEASE_SECONDS = 600.0
OUTBOX_BATCH = 200
NOTIFY_MAX_RETRIES = 8
# One sweep at a time, even when one runs longer than beat's interval; a sweep whose
# worker was killed holds the lock only this many intervals (every step is idempotent).
SWEEP_LOCK_INTERVALS = 3


# The backlogs


def sweep(current: Runtime, now: float) -> Counter[str]:
    """Look after every destination's backlog (`backlog_upkeep.upkeep`), keep the trace
    bytes they hold within the budget, and record beat's heartbeat. Returns what was done."""
    redis_client = current.store.redis
    redis_client.set(keys.BEAT_HEARTBEAT, repr(now))
    lock = f"{keys.BEAT_HEARTBEAT}:sweeping"
    lock_ms = int(SWEEP_LOCK_INTERVALS * current.config.sweep_interval_seconds * 1000)
    if not redis_client.set(lock, "1", nx=True, px=lock_ms):
        return Counter(skipped=1)
    try:
        done: Counter[str] = Counter()
        records = current.store.get_destinations(current.store.all_destination_ids())
        for record in records:
            done.update(upkeep(current, record, now))
        done["dropped"] += enforce_budget(current, [r for r in records if r.enabled], now)
        return +done
    finally:
        redis_client.delete(lock)


# Credential re-validation


def revalidate_due(current: Runtime, now: float) -> list[str]:
    """Enqueue one check task per destination whose re-validation is due."""
    due = current.health.due_checks(now, CHECK_BATCH, CHECK_LEASE_SECONDS)
    for destination_id in due:
        current.tasks.send(CHECK_DESTINATION_TASK, (destination_id,))
    return due


def check_destination_now(
    current: Runtime, destination_id: str, now: float
) -> ConnectionCheck | None:
    """Re-run Test Connection for one destination and apply the result to its health:
    recovered (parked deliveries released), rejected (disabled past the window), or
    unreachable. Schedules the next check."""
    record = current.store.get_destination(destination_id)
    if record is None or not record.enabled:
        current.health.unschedule_check(destination_id)
        return None
    try:
        cls = destination_class(record.type)
    except UnknownDestinationType:
        logger.warning(
            "broadcast.maintenance.unknown_type destination=%s type=%s", record.id, record.type
        )
        current.health.unschedule_check(destination_id)
        return None
    now_utc = datetime.fromtimestamp(now, UTC)
    check = check_stored_connection(cls, record, current.box, current.transport, now_utc)
    current.health.record_check(record, check, now)
    if check.outcome is Outcome.AUTH_FAILED and current.health.disable_if_rejected_too_long(
        record, now
    ):
        return check
    current.health.schedule_next_check(record, now)
    return check


# Owners' notifications


def flush_notifications(current: Runtime) -> int:
    events = current.notifications.take_outbox(OUTBOX_BATCH)
    for event in events:
        current.tasks.send(NOTIFY_TASK, (event,), argsrepr=describe_notification(event))
    return len(events)


def describe_notification(event: dict[str, Any]) -> str:
    """How a notification task's argument shows in Flower and task events."""
    return f"{event['type']} {event['id']} for {event['owner']}"


def post_notification(current: Runtime, event: dict[str, Any], retries_so_far: int) -> float | None:
    """POST one health event to its owner's URL, signed like the webhook destination.
    Returns the seconds until it should be tried again, or None when it is done (posted,
    no target, or given up).

    The event id is the `webhook-id`, the same on every retry.
    """
    target = current.notifications.target(event["owner"])
    if target is None:
        return None
    url, secret = target
    body = json.dumps(event, sort_keys=True).encode()
    headers = signed_headers({"signing_secret": secret}, event["id"], datetime.now(UTC), body)
    result = result_from_transport(current.transport.send(HttpRequest("POST", url, headers, body)))
    if result.outcome is Outcome.DELIVERED:
        return None
    config = current.config
    policy = RetryPolicy(config.retry_base_seconds, config.retry_cap_seconds, NOTIFY_MAX_RETRIES)
    delay = policy.next_delay(result.outcome, retries_so_far, result.retry_after)
    logger.warning(
        "broadcast.maintenance.notify_failed owner=%s event=%s status=%s retry=%s",
        event["owner"],
        event["id"],
        result.status_code,
        delay is not None,
    )
    return delay


# Retention


def trim_dead_letters(current: Runtime, now: float) -> int:
    return sum(
        current.dead_letters.trim(destination_id, now)
        for destination_id in current.store.all_destination_ids()
    )
