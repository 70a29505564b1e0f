"""Beat's periodic jobs as tasks: thin wrappers over `broadcast_engine.housekeeping`,
which holds the work (and its tests drive it with a controllable clock).

Beat's periodic jobs send no task events (`send_events=False`), so Flower does not list
them: several a minute, they crowded out the tasks that carry traces. Their work shows in
their log lines, in the metrics and in beat's heartbeat (`broadcast health beat`). A
destination's check and an owner's notification, which one can follow, stay listed."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task

from broadcast_engine import housekeeping
from broadcast_engine.runtime import runtime
from tasks.app import BroadcastTask, broadcast_task
from tasks.final_state import FAILURE, FinalState

logger = logging.getLogger("broadcast.maintenance")


@broadcast_task(name="broadcast.maintenance.sweep", send_events=False)
def sweep(self: Task) -> dict[str, int]:
    done = housekeeping.sweep(runtime(), time.time())
    if done:
        logger.info("broadcast.maintenance.swept %s", dict(done))
    return dict(done)


@broadcast_task(name="broadcast.maintenance.revalidate_due", send_events=False)
def revalidate_due(self: Task) -> None:
    housekeeping.revalidate_due(runtime(), time.time())


@broadcast_task(name="broadcast.maintenance.check_destination")
def check_destination(self: Task, destination_id: str) -> None:
    check = housekeeping.check_destination_now(runtime(), destination_id, time.time())
    if check is not None:
        logger.info("broadcast.maintenance.checked destination=%s ok=%s", destination_id, check.ok)
        if not check.ok:  # the vendor's message stays in the health record, not in events
            raise FinalState(
                FAILURE, f"connection check failed: {check.outcome.value} ({check.status_code})"
            )


@broadcast_task(name="broadcast.maintenance.flush_notifications", send_events=False)
def flush_notifications(self: Task) -> None:
    housekeeping.flush_notifications(runtime())


@broadcast_task(
    name="broadcast.maintenance.notify",
    max_retries=None,
    describe_args=lambda event, *_, **__: housekeeping.describe_notification(event),
)
def notify(self: BroadcastTask, event: dict[str, Any]) -> None:
    """POST one health event to its owner's URL; retried on the short tier."""
    delay = housekeeping.post_notification(runtime(), event, self.request.retries)
    if delay is not None:
        self.retry_or_requeue(delay)


@broadcast_task(name="broadcast.maintenance.trim_dead_letters", send_events=False)
def trim_dead_letters(self: Task) -> None:
    housekeeping.trim_dead_letters(runtime(), time.time())
