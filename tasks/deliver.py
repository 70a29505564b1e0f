"""`broadcast.deliver`: drain one destination's backlog (`broadcast_engine.delivery_run`).

The message carries the destination id only. A run sends one batch and sends the task
that follows it itself (the next batch, a batch's retry, the end of a wait); the task only
retries when the store could not be reached (`STORE_RETRY`: the claimed entries come back
to another run after the lease; Flower: RETRY). Its message's `argsrepr` (what Flower shows
as its arguments) names the destination's type and, when fan-out sent it, the request
that did (`broadcast_broker.task_client.describe_delivery`).
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from broadcast_engine.backoff import STORE_RETRY
from broadcast_engine.delivery_run import DeliveryRun, delivery_policy
from broadcast_engine.runtime import runtime
from tasks.app import BroadcastTask, broadcast_task
from tasks.final_state import FAILURE, FinalState

logger = logging.getLogger("broadcast.deliver")


@broadcast_task(
    name="broadcast.deliver",
    max_retries=None,
    describe_args=lambda destination_id, *_, **__: str(destination_id),
)
def deliver(self: BroadcastTask, destination_id: str) -> dict[str, Any]:
    """Drain the destination's backlog; returns what this run did (shown by Flower: the
    destination's type, the request ids it carried, each trace's fate). A run that sent
    a batch and failed (every trace dead-lettered, a failed circuit probe, credentials
    rejected) ends FAILURE with that reason and the same result, without a traceback."""
    current = runtime()
    token = self.request.id
    assert token is not None  # Celery gives every run (a worker's or apply's) its task id
    try:
        run = DeliveryRun(current, delivery_policy(current), destination_id, token)
        summary = run.run()
    except redis.RedisError as exc:
        delay = STORE_RETRY.delay(self.request.retries)
        logger.warning(
            "broadcast.deliver.store_unreachable destination=%s error=%s retry_in=%s",
            destination_id,
            type(exc).__name__,
            delay,
        )
        self.retry_or_requeue(delay)
    if summary.failure is not None:
        raise FinalState(FAILURE, summary.failure, summary.shown())
    return summary.shown()
