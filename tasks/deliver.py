"""`broadcast.deliver`: send one trace to one destination and record what happened.

The message carries the destination id and the trace, never credentials: they are loaded
and decrypted here, in memory, for this one delivery.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from celery import Task

from destinations.base import DeliveryContext, DeliveryResult
from destinations.outcomes import Outcome
from destinations.registry import UnknownDestinationType, destination_class
from destinations.trace import Trace
from settings.models import DestinationRecord, Health
from settings.service import redact
from tasks.app import broadcast_task
from tasks.retry_policy import RetryPolicy
from tasks.runtime import runtime

logger = logging.getLogger("broadcast.deliver")


def retry_policy() -> RetryPolicy:
    config = runtime().config
    return RetryPolicy(
        base_seconds=config.retry_base_seconds,
        cap_seconds=config.retry_cap_seconds,
        max_retries=config.max_short_retries,
    )


@broadcast_task(name="broadcast.deliver", max_retries=None)
def deliver(
    self: Task, destination_id: str, trace_wire: dict[str, Any], accepted_at: float
) -> None:
    """Deliver once; on a retryable outcome schedule the next short retry (see retry_policy)."""
    current = runtime()
    record = current.store.get_destination(destination_id)
    trace = Trace.from_wire(trace_wire)
    if record is None or record.owner != trace.owner:
        # Removed since fan-out (or, defensively, not this trace's owner): nothing to send.
        logger.info("broadcast.deliver.dropped destination=%s reason=gone", destination_id)
        return
    if not record.enabled:
        current.store.count(record.id, "skipped_disabled")
        return
    secrets = current.box.open(record.sealed_secrets)
    attempt = self.request.retries
    result = _attempt(record, {**record.config, **secrets}, trace, attempt)
    error = redact(result.error, secrets) if result.error else None
    delay = None
    if result.outcome is Outcome.RETRYABLE:
        delay = retry_policy().next_delay(result.outcome, attempt, result.retry_after)
    _record(record, trace, result, error, attempt, accepted_at, retrying=delay is not None)
    if delay is not None:
        raise self.retry(countdown=delay, max_retries=None)


def _attempt(
    record: DestinationRecord, config: dict[str, Any], trace: Trace, attempt: int
) -> DeliveryResult:
    """Run the vendor's delivery. A bug in a vendor module becomes a recorded permanent
    failure for this one trace (logged with its traceback), never a dead worker."""
    try:
        cls = destination_class(record.type)
    except UnknownDestinationType as exc:
        return DeliveryResult(Outcome.PERMANENT, None, 0.0, error=str(exc))
    if record.privacy:
        trace = trace.without_content()
    context = DeliveryContext(
        destination_id=record.id, owner=record.owner, now=datetime.now(UTC), attempt=attempt
    )
    try:
        return cls(config, runtime().transport).deliver(trace, context)
    except Exception as exc:
        logger.exception(
            "broadcast.deliver.internal_error destination=%s request=%s",
            record.id,
            trace.request_id,
        )
        return DeliveryResult(
            Outcome.PERMANENT, None, 0.0, error=f"internal error: {type(exc).__name__}"
        )


def _record(
    record: DestinationRecord,
    trace: Trace,
    result: DeliveryResult,
    error: str | None,
    attempt: int,
    accepted_at: float,
    *,
    retrying: bool,
) -> None:
    store = runtime().store
    now = datetime.now(UTC).isoformat()
    entry = {
        "at": now,
        "request_id": trace.request_id,
        "attempt": attempt + 1,
        "outcome": result.outcome.value,
        "status_code": result.status_code,
        "duration_ms": round(result.duration_ms, 2),
        "latency_ms": round((time.time() - accepted_at) * 1000.0, 2),
        "error": error,
        "rejected": list(result.rejected),
        "next": "retry" if retrying else None,
    }
    store.record_attempt(record.id, entry)
    if result.outcome is Outcome.DELIVERED:
        store.count(record.id, "delivered")
        logger.info(
            "broadcast.deliver.delivered destination=%s request=%s status=%s",
            record.id,
            trace.request_id,
            result.status_code,
        )
        return
    store.set_health(record, {"last_error": error or result.outcome.value, "last_error_at": now})
    if retrying:
        store.count(record.id, "retried")
    else:
        store.count(record.id, "failed")
    if result.outcome is Outcome.AUTH_FAILED:
        store.set_health(
            record, {"status": Health.AUTH_FAILED, "reason": error or "", "changed_at": now}
        )
    logger.warning(
        "broadcast.deliver.%s destination=%s request=%s status=%s error=%s",
        "retrying" if retrying else result.outcome.value,
        record.id,
        trace.request_id,
        result.status_code,
        error,
    )
