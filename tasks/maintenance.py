"""Beat's periodic jobs: sweep parked deliveries, re-validate credentials, post owners'
notifications, trim dead letters.

Each job is a plain function of (runtime, now) wrapped by a thin task, so tests drive the
functions with a controllable clock while the deliveries they enqueue run on a real worker.
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
from settings.models import Circuit, Health
from tasks.app import broadcast_task
from tasks.deliver import deliver, retry_policy
from tasks.runtime import Runtime, runtime

logger = logging.getLogger("broadcast.maintenance")

SWEEP_BATCH = 500
CHECK_BATCH = 500
CHECK_LEASE_SECONDS = 600.0
OUTBOX_BATCH = 200


# Parked deliveries


def sweep_parked(current: Runtime, now: float, *, batch: int = SWEEP_BATCH) -> Counter[str]:
    """Re-queue parked deliveries that are due, at most `drain_per_sweep` per destination.

    Destinations whose credentials are rejected keep their deliveries parked; an open
    circuit lets one probe through per interval. Returns what was done, by kind.
    """
    config = current.config
    done: Counter[str] = Counter()
    drained: Counter[str] = Counter()
    for entry in current.parking.due(now, batch):
        record = current.store.get_destination(entry.destination_id)
        if record is None:
            current.parking.remove(entry)
            done["dropped"] += 1
            continue
        if not record.enabled:
            current.health.dead_letter(
                record, entry.trace, entry.accepted_at, "destination disabled", now
            )
            current.parking.remove(entry)
            done["dead_lettered"] += 1
            continue
        health = current.store.health(record.id)
        if health.status is Health.AUTH_FAILED:
            current.parking.postpone(entry, now + config.auth_failed_recheck_seconds)
            done["waiting_for_credentials"] += 1
            continue
        if health.circuit is Circuit.OPEN:
            if current.health.take_probe(record, now) and current.parking.claim(
                entry, now, config.claim_lease_seconds
            ):
                _enqueue(entry.destination_id, entry.trace, entry.accepted_at, entry.id, True)
                done["probes"] += 1
            else:
                current.parking.postpone(entry, current.store.health(record.id).probe_at)
                done["waiting_for_circuit"] += 1
            continue
        if drained[record.id] >= config.drain_per_sweep:
            done["over_drain_rate"] += 1
            continue
        if current.parking.claim(entry, now, config.claim_lease_seconds):
            _enqueue(entry.destination_id, entry.trace, entry.accepted_at, entry.id, False)
            drained[record.id] += 1
            done["requeued"] += 1
    return done


def _enqueue(
    destination_id: str, trace: dict[str, Any], accepted_at: float, parked_id: str, probe: bool
) -> None:
    deliver.apply_async(
        args=(destination_id, trace, accepted_at),
        kwargs={"parked_id": parked_id, "probe": probe},
    )


@broadcast_task(name="broadcast.maintenance.sweep_parked")
def sweep_parked_task(self: Task) -> None:
    done = sweep_parked(runtime(), time.time())
    if done:
        logger.info("broadcast.maintenance.swept %s", dict(done))


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
    delay = retry_policy().next_delay(result.outcome, self.request.retries, result.retry_after)
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
    removed = 0
    for owner in current.store.owners():
        for record in current.store.list_destinations(owner):
            removed += current.dead_letters.trim(record.id, now)
    return removed


@broadcast_task(name="broadcast.maintenance.trim_dead_letters")
def trim_dead_letters_task(self: Task) -> None:
    trim_dead_letters(runtime(), time.time())
