"""`broadcast.deliver`: send one trace to one destination and record what happened.

The message carries the destination id and the trace, never credentials: they are loaded
and decrypted here, in memory, for this one delivery.

What happens after an attempt (ARCHITECTURE.md, "Outcomes and retries"):

| outcome | fresh delivery | parked delivery (`parked_id`) |
| --- | --- | --- |
| delivered | done | entry removed; a probe closes the circuit |
| retryable | short Celery retries, then parked | re-parked at the next step, or dead letter |
| credentials rejected | `auth_failed`, parked | `auth_failed`, re-parked at the same step |
| permanent | dead-lettered | dead-lettered |

A destination whose credentials are rejected or whose circuit is open is not attempted:
the delivery is parked straight away (a probe is the one exception).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import Task

from destinations.base import DeliveryContext, DeliveryResult
from destinations.outcomes import Outcome
from destinations.registry import UnknownDestinationType, destination_class
from destinations.trace import Trace
from settings.models import Circuit, DestinationRecord, Health
from settings.parking import ParkedDelivery
from settings.service import redact
from tasks.app import broadcast_task
from tasks.retry_policy import RetryPolicy
from tasks.runtime import Runtime, runtime

logger = logging.getLogger("broadcast.deliver")


@dataclass(frozen=True)
class NextStep:
    """What follows an attempt: `description` goes to the delivery log."""

    description: str = ""
    retry_delay: float | None = None


DONE = NextStep()


@dataclass(frozen=True)
class Job:
    """One delivery of one trace to one destination, as this run of the task sees it.

    `parked` is the Redis entry when the delivery came back from parking.
    """

    record: DestinationRecord
    trace: Trace
    trace_wire: dict[str, Any]
    accepted_at: float
    parked: ParkedDelivery | None = None

    @property
    def step(self) -> int:
        """The long-tier step this delivery is at (0 when never parked)."""
        return self.parked.step if self.parked else 0


def retry_policy() -> RetryPolicy:
    config = runtime().config
    return RetryPolicy(
        base_seconds=config.retry_base_seconds,
        cap_seconds=config.retry_cap_seconds,
        max_retries=config.max_short_retries,
    )


def _describe_delivery(
    destination_id: str, trace_wire: dict[str, Any], *_: Any, **kwargs: Any
) -> str:
    parked = f" parked {kwargs['parked_id']}" if kwargs.get("parked_id") else ""
    return f"{destination_id} request {trace_wire.get('request_id')}{parked}"


@broadcast_task(name="broadcast.deliver", max_retries=None, describe_args=_describe_delivery)
def deliver(
    self: Task,
    destination_id: str,
    trace_wire: dict[str, Any],
    accepted_at: float,
    parked_id: str | None = None,
    probe: bool = False,
) -> None:
    """Deliver once, then retry, park, or dead-letter as the table above says."""
    current = runtime()
    record = current.store.get_destination(destination_id)
    trace = Trace.from_wire(trace_wire)
    parked = current.parking.get(parked_id) if parked_id else None
    if parked_id and parked is None:
        # Already settled by an earlier run of the same claim: never deliver twice.
        logger.info("broadcast.deliver.already_settled parked=%s", parked_id)
        return
    if record is None or record.owner != trace.owner or not record.enabled:
        # Removed or disabled since fan-out (or, defensively, not this trace's owner).
        logger.info("broadcast.deliver.dropped destination=%s", destination_id)
        if record is not None and record.owner == trace.owner:
            current.store.count(record.id, "skipped_disabled")
        if parked is not None:
            current.parking.remove(parked)
        return
    job = Job(record, trace, trace_wire, accepted_at, parked)
    health = current.store.health(record.id)
    if not probe and (health.status is Health.AUTH_FAILED or health.circuit is Circuit.OPEN):
        # Not attempted: waiting costs this destination's traces nothing but time.
        park_unattempted(current, job, time.time())
        return

    secrets = current.box.open(record.sealed_secrets)
    attempt = self.request.retries + (job.step + 1 if parked else 0)
    result = _attempt(current, record, {**record.config, **secrets}, trace, attempt)
    error = redact(result.error, secrets) if result.error else None
    next_step = _settle(current, job, result, error, time.time(), retries=self.request.retries)
    _record(current, job, result, error, attempt, next_step)
    if next_step.retry_delay is not None:
        raise self.retry(countdown=next_step.retry_delay, max_retries=None)


def park_unattempted(current: Runtime, job: Job, now: float) -> None:
    """Park a delivery for a destination that cannot take it now (credentials rejected, or
    circuit open): due when credentials are re-checked, or at the circuit's next probe."""
    health = current.store.health(job.record.id)
    if health.status is Health.AUTH_FAILED:
        reason = f"credentials rejected: {health.reason}"
        due_at = now + current.config.auth_failed_recheck_seconds
    else:
        reason = "circuit open"
        due_at = max(health.probe_at, now)
    next_step = park(current, job, now, reason=reason, step=job.step, due_at=due_at)
    if job.parked is None:  # a re-park of a parked entry is not news for the delivery log
        skipped = DeliveryResult(Outcome.RETRYABLE, None, 0.0, error=reason)
        _record(current, job, skipped, reason, job.step, next_step, outcome="parked")


def _settle(
    current: Runtime,
    job: Job,
    result: DeliveryResult,
    error: str | None,
    now: float,
    *,
    retries: int,
) -> NextStep:
    """Apply the outcome; returns what happens next."""
    keeper, record = current.health, job.record
    reason = error or result.outcome.value
    if result.outcome is Outcome.DELIVERED:
        current.store.count(record.id, "delivered")
        keeper.delivery_succeeded(record, now)
        if job.parked is not None:
            current.parking.remove(job.parked)
        return DONE
    current.store.set_health(record, {"last_error": reason, "last_error_at": _iso(now)})
    if result.outcome is Outcome.PERMANENT:
        return _give_up(current, job, reason, now)
    if result.outcome is Outcome.AUTH_FAILED:
        keeper.credentials_rejected(record, reason, now)
        return park(
            current,
            job,
            now,
            reason=f"credentials rejected: {reason}",
            step=job.step,
            due_at=now + current.config.auth_failed_recheck_seconds,
        )
    opened = keeper.delivery_failed(record, now)
    schedule = current.config.park_schedule_seconds
    if job.parked is not None:
        step = job.step + 1
        if step >= len(schedule):
            return _give_up(
                current, job, f"gave up after {step + 1} parked attempts: {reason}", now
            )
        return park(current, job, now, reason=reason, step=step, due_at=now + schedule[step])
    delay = None
    if not opened:
        delay = retry_policy().next_delay(result.outcome, retries, result.retry_after)
    if delay is not None:
        current.store.count(record.id, "retried")
        return NextStep(f"retry in {delay:.1f} s", retry_delay=delay)
    return park(
        current,
        job,
        now,
        reason=("circuit opened: " if opened else "") + reason,
        step=0,
        due_at=now + max(schedule[0], result.retry_after or 0.0),
    )


def park(
    current: Runtime, job: Job, now: float, *, reason: str, step: int, due_at: float
) -> NextStep:
    """Park (or re-park) a delivery in Redis; the beat sweep brings it back when due."""
    current.parking.park(
        job.record.id,
        job.trace_wire,
        accepted_at=job.accepted_at,
        now=now,
        due_at=due_at,
        step=step,
        reason=reason,
        parked_id=job.parked.id if job.parked else None,
    )
    if job.parked is None:
        current.store.count(job.record.id, "parked")
    return NextStep(f"parked until {_iso(due_at)}")


def _give_up(current: Runtime, job: Job, reason: str, now: float) -> NextStep:
    current.store.count(job.record.id, "failed")
    current.health.dead_letter(job.record, job.trace_wire, job.accepted_at, reason, now)
    if job.parked is not None:
        current.parking.remove(job.parked)
    return NextStep("dead-lettered")


def _attempt(
    current: Runtime,
    record: DestinationRecord,
    config: dict[str, Any],
    trace: Trace,
    attempt: int,
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
        destination_id=record.id,
        owner=record.owner,
        now=datetime.now(UTC),
        attempt=attempt,
    )
    try:
        return cls(config, current.transport).deliver(trace, context)
    except Exception as exc:  # boundary: one trace fails, the worker goes on
        logger.exception(
            "broadcast.deliver.internal_error destination=%s request=%s",
            record.id,
            trace.request_id,
        )
        return DeliveryResult(
            Outcome.PERMANENT, None, 0.0, error=f"internal error: {type(exc).__name__}"
        )


def _record(
    current: Runtime,
    job: Job,
    result: DeliveryResult,
    error: str | None,
    attempt: int,
    next_step: NextStep,
    *,
    outcome: str | None = None,
) -> None:
    """Append the attempt to the destination's delivery log, and log it."""
    outcome = outcome or result.outcome.value
    entry = {
        "at": _iso(time.time()),
        "request_id": job.trace.request_id,
        "attempt": attempt + 1,
        "outcome": outcome,
        "status_code": result.status_code,
        "duration_ms": round(result.duration_ms, 2),
        "latency_ms": round((time.time() - job.accepted_at) * 1000.0, 2),
        "error": error,
        "rejected": list(result.rejected),
        "next": next_step.description or None,
    }
    current.store.record_attempt(job.record.id, entry)
    log = logger.info if result.outcome is Outcome.DELIVERED else logger.warning
    log(
        "broadcast.deliver.%s destination=%s request=%s status=%s next=%s error=%s",
        outcome,
        job.record.id,
        job.trace.request_id,
        result.status_code,
        next_step.description or "-",
        error,
    )


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()
