"""`broadcast.deliver`: drain one destination's backlog (`broadcast_engine.delivery_run`).

The message carries the destination id only. The task carries out what the run decided:
a store it could not reach retries the task (`STORE_RETRY`: the claimed entries come back
to another run after the lease), and a destination that backs off briefly brings this task
back when its wait is over (Flower: RETRY).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import redis
from celery import Task

from broadcast_engine.backoff import STORE_RETRY
from broadcast_engine.delivery_run import DeliveryRun, delivery_policy
from broadcast_engine.runtime import runtime
from tasks.app import broadcast_task

logger = logging.getLogger("broadcast.deliver")


@broadcast_task(
    name="broadcast.deliver",
    max_retries=None,
    describe_args=lambda destination_id, *_, **__: str(destination_id),
)
def deliver(self: Task, destination_id: str) -> dict[str, Any]:
    """Drain the destination's backlog; returns what this run did (shown by Flower)."""
    current = runtime()
    try:
        run = DeliveryRun(current, delivery_policy(current), destination_id, self.request.id)
        summary = run.run()
    except redis.RedisError as exc:
        delay = STORE_RETRY.delay(self.request.retries)
        logger.warning(
            "broadcast.deliver.store_unreachable destination=%s error=%s retry_in=%s",
            destination_id,
            type(exc).__name__,
            delay,
        )
        raise self.retry(countdown=delay, max_retries=None) from None
    if summary.retry_in is not None:
        # Whole seconds, at least 1: RabbitMQ's delayed delivery refuses anything else.
        raise self.retry(countdown=max(1, math.ceil(summary.retry_in)), max_retries=None)
    return summary.shown()
