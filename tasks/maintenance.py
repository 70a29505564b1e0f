"""Beat's periodic jobs: sweep the backlogs, re-validate credentials, post owners'
notifications, trim dead letters.

Each job is a plain function of (runtime, now) wrapped by a thin task, so tests drive the
functions with a controllable clock while the deliveries they start run on a real worker.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from celery import Task

from destinations.base import ConnectionCheck, result_from_transport
from destinations.outcomes import Outcome
from destinations.transport import HttpRequest
from destinations.webhook import signed_headers
from settings import keys
from settings.runtime import Runtime, runtime
from tasks.app import broadcast_task
from tasks.backlog_upkeep import enforce_budget, upkeep
from tasks.retry_policy import RetryPolicy

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


@broadcast_task(name="broadcast.maintenance.sweep")
def sweep_task(self: Task) -> dict[str, int]:
    done = sweep(runtime(), time.time())
    if done:
        logger.info("broadcast.maintenance.swept %s", dict(done))
    return dict(done)


# Credential re-validation


def revalidate_due(current: Runtime, now: float) -> list[str]:
    """Enqueue one check task per destination whose re-validation is due."""
    due = current.health.due_checks(now, CHECK_BATCH, CHECK_LEASE_SECONDS)
    for destination_id in due:
        check_destination.delay(destination_id)
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
    check = current.service.check_connection(record)
    current.health.record_check(record, check, now)
    if check.outcome is Outcome.AUTH_FAILED and current.health.disable_if_rejected_too_long(
        record, now
    ):
        return check
    current.health.schedule_next_check(record, now)
    return check


@broadcast_task(name="broadcast.maintenance.revalidate_due")
def revalidate_due_task(self: Task) -> None:
    revalidate_due(runtime(), time.time())


@broadcast_task(name="broadcast.maintenance.check_destination")
def check_destination(self: Task, destination_id: str) -> None:
    check = check_destination_now(runtime(), destination_id, time.time())
    if check is not None:
        logger.info("broadcast.maintenance.checked destination=%s ok=%s", destination_id, check.ok)


# Owners' notifications


def flush_notifications(current: Runtime) -> int:
    events = current.notifications.take_outbox(OUTBOX_BATCH)
    for event in events:
        notify.delay(event)
    return len(events)


@broadcast_task(name="broadcast.maintenance.flush_notifications")
def flush_notifications_task(self: Task) -> None:
    flush_notifications(runtime())


@broadcast_task(
    name="broadcast.maintenance.notify",
    max_retries=None,
    describe_args=lambda event, *_, **__: f"{event['type']} {event['id']} for {event['owner']}",
)
def notify(self: Task, event: dict[str, Any]) -> None:
    """POST one health event to its owner's URL, signed like the webhook destination.

    The event id is the `webhook-id`, the same on every retry.
    """
    current = runtime()
    target = current.notifications.target(event["owner"])
    if target is None:
        return
    url, secret = target
    body = json.dumps(event, sort_keys=True).encode()
    headers = signed_headers({"signing_secret": secret}, event["id"], datetime.now(UTC), body)
    result = result_from_transport(current.transport.send(HttpRequest("POST", url, headers, body)))
    if result.outcome is Outcome.DELIVERED:
        return
    config = current.config
    policy = RetryPolicy(config.retry_base_seconds, config.retry_cap_seconds, NOTIFY_MAX_RETRIES)
    delay = policy.next_delay(result.outcome, self.request.retries, result.retry_after)
    logger.warning(
        "broadcast.maintenance.notify_failed owner=%s event=%s status=%s retry=%s",
        event["owner"],
        event["id"],
        result.status_code,
        delay is not None,
    )
    if delay is not None:
        raise self.retry(countdown=delay, max_retries=None)


# Retention


def trim_dead_letters(current: Runtime, now: float) -> int:
    return sum(
        current.dead_letters.trim(destination_id, now)
        for destination_id in current.store.all_destination_ids()
    )


@broadcast_task(name="broadcast.maintenance.trim_dead_letters")
def trim_dead_letters_task(self: Task) -> None:
    trim_dead_letters(runtime(), time.time())
