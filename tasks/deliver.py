"""`broadcast.deliver`: drain one destination's backlog in batches, one vendor request each.

The message carries the destination id only: the backlog says what to send, the trace
store holds the traces, and credentials are loaded and decrypted here, in memory.

A run: take an in-flight slot (`Backlog.begin`: at most `max_in_flight` runs per
destination; none while it backs off, is paused or waits for its next probe), then claim
batches up to the vendor's limits and send each as one request, until the backlog is
empty or the time slice is spent (then a fresh task takes over, so one busy destination
never holds a worker for long). After each batch `tasks.delivery_policy` decides each
trace's fate and the destination's next step, and this module only carries it out:
settle (atomic, exactly once per entry), update health, back off, or stop.

Failures that are not a vendor's answer: a store error retries the task (the claimed
entries come back to another run after the lease), except between the vendor's answer
and the settlement, where the run waits for the store (`BROADCAST_SETTLE_PATIENCE_SECONDS`)
so that a Redis restart does not make it send an accepted batch again; a bug in a
vendor module becomes a permanent, recorded failure of the trace it concerns, never a
dead worker or a lost trace.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Task

from destinations.base import ConnectionCheck, DeliveryContext, DeliveryResult, Destination
from destinations.outcomes import Outcome
from destinations.registry import UnknownDestinationType, destination_class
from destinations.trace import Trace
from settings.backlog import BacklogEntry, Begin, Settled, Settlement
from settings.dead_letters import letter_json
from settings.models import DestinationRecord, HealthRecord
from settings.redaction import redact
from settings.runtime import Runtime, runtime
from settings.store import latency_bucket
from tasks.app import broadcast_task
from tasks.delivery_policy import (
    DeliveryPolicy,
    DestinationAction,
    DestinationDecision,
    ItemAction,
    decide_destination,
    decide_item,
)

logger = logging.getLogger("broadcast.deliver")

# Waits before retrying a task whose store was unreachable (seconds, then capped).
STORE_RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
LOG_REQUEST_IDS = 50


def delivery_policy(current: Runtime) -> DeliveryPolicy:
    config = current.config
    return DeliveryPolicy(
        retry_base_seconds=config.retry_base_seconds,
        retry_cap_seconds=config.retry_cap_seconds,
        circuit_failures=config.circuit_failures,
        probe_schedule_seconds=config.probe_schedule_seconds,
        retry_horizon_seconds=config.retry_horizon_seconds,
        auth_recheck_seconds=config.auth_failed_recheck_seconds,
    )


def consumer_name() -> str:
    """This thread's consumer in the backlog's group (stable, so consumers stay few)."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


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
        delay = STORE_RETRY_SECONDS[min(self.request.retries, len(STORE_RETRY_SECONDS) - 1)]
        logger.warning(
            "broadcast.deliver.store_unreachable destination=%s error=%s retry_in=%s",
            destination_id,
            type(exc).__name__,
            delay,
        )
        raise self.retry(countdown=delay, max_retries=None) from None
    if summary.retry_in is not None:
        # The destination backs off briefly: this task comes back then (Flower: RETRY).
        # Whole seconds, at least 1: RabbitMQ's delayed delivery refuses anything else.
        raise self.retry(countdown=max(1, math.ceil(summary.retry_in)), max_retries=None)
    return summary.shown()


@dataclass
class RunSummary:
    verdict: str
    batches: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    retry_in: float | None = None

    def shown(self) -> dict[str, Any]:
        return {"run": self.verdict, "batches": self.batches, **self.outcomes}


@dataclass
class DeliveryRun:
    current: Runtime
    policy: DeliveryPolicy
    destination_id: str
    token: str

    def run(self) -> RunSummary:
        backlog, config = self.current.backlog, self.current.config
        verdict = backlog.begin(
            self.destination_id,
            self.token,
            time.time(),
            probe_seconds=config.claim_lease_seconds,
            recheck_seconds=config.auth_failed_recheck_seconds,
        )
        summary = RunSummary(verdict.value)
        if verdict not in (Begin.RUN, Begin.PROBE):
            return summary
        try:
            self._drain(verdict, summary)
        finally:
            backlog.release(self.destination_id, self.token)
        return summary

    def _drain(self, verdict: Begin, summary: RunSummary) -> None:
        current, backlog = self.current, self.current.backlog
        record = current.store.get_destination(self.destination_id)
        if record is None or not record.enabled:
            # Removed, or disabled: beat's sweep turns a disabled backlog into dead letters.
            summary.verdict = "disabled"
            backlog.finish(self.destination_id, self.token, time.time())
            return
        vendor = self._vendor(record)
        health = current.store.health(record.id)
        limits = vendor.batch_limits if vendor is not None else None
        full = limits.max_items if limits is not None else 1
        max_items = 1 if verdict is Begin.PROBE else full
        consumer = consumer_name()
        helper_called = False
        config = current.config
        slice_ends = time.monotonic() + config.task_slice_seconds
        touched = time.monotonic()
        # First what a dead task left and what failed before, then what is new.
        entries = backlog.claim(record.id, consumer, max_items)
        fresh = False  # entries read new from the stream: none was ever tried
        busy = False  # True while traces keep arriving as fast as batches go out
        while True:
            if not entries:
                busy = False
                # Linger a moment: the next trace goes out the moment it is appended, and
                # the task (with its broker round trips) is not paid for again.
                entries = backlog.read_new(record.id, consumer, full, config.task_linger_seconds)
                fresh = True
            if not entries:
                if backlog.finish(record.id, self.token, time.time()):
                    return
                entries = backlog.claim(record.id, consumer, full)
                fresh = False
                continue
            if busy and len(entries) < full:
                # Under load (a batch just went out, and this one is not full), gather a
                # moment so the next request carries more; a trace that finds the
                # destination idle goes out at once.
                time.sleep(config.batch_gather_seconds)
                entries += backlog.read_new(record.id, consumer, full - len(entries), 0.0)
            if limits is not None:
                entries = self._within_bytes(record.id, entries, limits.max_bytes)
            if len(entries) == full > 1 and not helper_called:
                # A full batch: more may wait. A helper takes a slot if one is free.
                current.kick(record.id, force=True)
                helper_called = True
            decision, health = self._batch(record, vendor, health, entries, summary, fresh)
            summary.batches += 1
            if not decision.keeps_sending:
                wait = max((decision.wait_until or 0.0) - time.time(), 0.0)
                backlog.hold(record.id, wait)  # fan-out sends nothing while it waits
                if decision.action is DestinationAction.BACK_OFF:
                    summary.retry_in = wait
                return
            if time.monotonic() > slice_ends:
                backlog.release(record.id, self.token)
                current.kick(record.id, force=True)  # a fresh task goes on: others get a turn
                summary.verdict = "handed over"
                return
            if time.monotonic() - touched > config.claim_lease_seconds / 3:
                backlog.touch(record.id, self.token, time.time())
                touched = time.monotonic()
            entries = backlog.read_new(record.id, consumer, full, 0.0)
            fresh = True
            busy = bool(entries) and full > 1

    def _vendor(self, record: DestinationRecord) -> Destination | None:
        try:
            cls = destination_class(record.type)
        except UnknownDestinationType:
            return None
        secrets = self.current.box.open(record.sealed_secrets)
        return cls({**record.config, **secrets}, self.current.transport)

    def _within_bytes(
        self, destination_id: str, entries: list[BacklogEntry], max_bytes: int
    ) -> list[BacklogEntry]:
        """Keep a prefix within the vendor's byte limit; give the rest back, untried."""
        kept: list[BacklogEntry] = []
        total = 0
        for entry in entries:
            if kept and total + entry.size > max_bytes:
                break
            kept.append(entry)
            total += entry.size
        self.current.backlog.give_back(destination_id, entries[len(kept) :])
        return kept

    def _batch(
        self,
        record: DestinationRecord,
        vendor: Destination | None,
        health: HealthRecord,
        entries: Sequence[BacklogEntry],
        summary: RunSummary,
        fresh: bool,
    ) -> tuple[DestinationDecision, HealthRecord]:
        current, now = self.current, time.time()
        stored = current.traces.get_many(record.owner, [e.request_id for e in entries])
        present = [(e, t) for e in entries if (t := stored[e.request_id]) is not None]
        results = self._send(record, vendor, [t for _, t in present])
        by_request = {e.request_id: r for (e, _), r in zip(present, results, strict=True)}
        failed_before = any(r.outcome is not Outcome.DELIVERED for r in results) or len(
            present
        ) < len(entries)
        attempts = (
            current.backlog.attempts(record.id, [e.request_id for e in entries])
            if failed_before
            else {}
        )
        secrets = current.box.open(record.sealed_secrets) if failed_before else {}
        decision = self._destination_decision(record, results, health, now, secrets)
        misconfigured = next((r for r in results if r.config_error), None)
        if misconfigured is not None:  # e.g. a warehouse table that lost a column
            reason = redact(misconfigured.error or "destination misconfigured", secrets)
            current.health.record_check(record, ConnectionCheck(Outcome.PERMANENT, reason), now)
        settlements: list[Settlement] = []
        items: dict[str, str] = {}
        dead_reasons: list[str] = []
        for entry in entries:
            result = by_request.get(entry.request_id)
            age = now - entry.accepted_at
            item = decide_item(
                result,
                age_seconds=age,
                attempts=attempts.get(entry.request_id, 0),
                policy=self.policy,
            )
            summary.outcomes[item.action.value] += 1
            if item.action is ItemAction.DELIVERED:
                settlements.append(
                    Settlement(entry, "d", latency_bucket(age), latency_ms=age * 1000.0)
                )
                continue
            reason = redact(item.reason, secrets)
            items[entry.request_id] = f"{item.action.value}: {reason}"
            if item.action is ItemAction.WAIT:
                tried = result is not None and result.attempted
                settlements.append(Settlement(entry, "w" if tried else "g"))
                continue
            dead_reasons.append(reason)
            trace = stored[entry.request_id]
            settlements.append(
                Settlement(
                    entry,
                    "f",
                    dead_letter=letter_json(
                        request_id=entry.request_id,
                        owner=record.owner,
                        reason=reason,
                        trace=trace.to_wire() if trace is not None else None,
                        accepted_at=entry.accepted_at,
                        attempts=attempts.get(entry.request_id, 0) + 1,
                        now=now,
                    ),
                )
            )
        log_entry = self._log_entry(entries, results, items, decision, now, secrets)
        settled = self._settle_through_outage(record, settlements, log_entry, fresh)
        self._release_traces(record, settled.ended)
        health = self._apply(record, health, decision, now)
        if dead_reasons:
            current.health.dead_lettered(record, len(dead_reasons), dead_reasons[-1], now)
        self._log(record, entries, log_entry)
        return decision, health

    def _settle_through_outage(
        self,
        record: DestinationRecord,
        settlements: list[Settlement],
        log_entry: dict[str, Any],
        fresh: bool,
    ) -> Settled:
        """Settle the batch the vendor answered, retrying while the store is unreachable
        (a restart, a failover) for up to `settle_patience_seconds` (at most half the claim
        lease); then raise. Only pending entries are settled, so a retry after a
        settlement that was applied but not answered counts no delivery or dead letter
        twice (its `retried` count and delivery-log entry may repeat, and its traces are
        not released: they live to their TTL)."""
        config = self.current.config
        # Past half the lease another run may reclaim the batch and send it again anyway.
        patience = min(config.settle_patience_seconds, config.claim_lease_seconds / 2)
        deadline = time.monotonic() + patience
        wait = 0.1
        while True:
            try:
                return self.current.backlog.settle(record.id, settlements, log_entry, fresh=fresh)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() + wait > deadline:
                    raise
                logger.warning(
                    "broadcast.deliver.settle_waits_for_store destination=%s error=%s",
                    record.id,
                    type(exc).__name__,
                )
                time.sleep(wait)  # backoff while the store comes back
                # At most 0.5 s: once it is back, settle before a sweep reclaims the batch.
                wait = min(wait * 2, 0.5)

    def _send(
        self, record: DestinationRecord, vendor: Destination | None, traces: list[Trace]
    ) -> list[DeliveryResult]:
        """The vendor's results, one per trace. A vendor-module bug fails only the trace
        that causes it (the batch is retried one trace at a time to find it)."""
        if not traces:
            return []
        if vendor is None:
            return [_internal(f"unknown destination type {record.type!r}")] * len(traces)
        if record.privacy:
            traces = [trace.without_content() for trace in traces]
        context = DeliveryContext(
            destination_id=record.id, owner=record.owner, now=datetime.now(UTC)
        )
        try:
            return vendor.deliver_batch(traces, context)
        except Exception as exc:  # boundary: a vendor-module bug must not kill the run
            if len(traces) == 1:
                logger.exception(
                    "broadcast.deliver.internal_error destination=%s request=%s",
                    record.id,
                    traces[0].request_id,
                )
                return [_internal(f"internal error: {type(exc).__name__}")]
            return [self._send(record, vendor, [trace])[0] for trace in traces]

    def _destination_decision(
        self,
        record: DestinationRecord,
        results: Sequence[DeliveryResult],
        health: HealthRecord,
        now: float,
        secrets: dict[str, Any],
    ) -> DestinationDecision:
        """The policy's decision; its reason (a vendor's answer) redacted of credentials
        before it reaches the health record or an owner event."""
        failure = next((r for r in results if r.attempted and r.concerns_destination), None)
        consecutive, in_window = health.consecutive_failures, 0
        if failure is not None and failure.outcome is Outcome.RETRYABLE:
            reason = redact(failure.error or failure.outcome.value, secrets)
            consecutive, in_window = self.current.health.failure(record, reason, now)
        decision = decide_destination(
            results,
            now=now,
            circuit_open=health.circuit.value == "open",
            probe_step=health.probe_step,
            consecutive_failures=consecutive,
            failures_in_window=in_window,
            policy=self.policy,
        )
        return dataclasses.replace(decision, reason=redact(decision.reason, secrets))

    def _apply(
        self,
        record: DestinationRecord,
        health: HealthRecord,
        decision: DestinationDecision,
        now: float,
    ) -> HealthRecord:
        """Carry out the destination's decision; returns the health to go on with."""
        keeper = self.current.health
        action, until = decision.action, decision.wait_until or now
        if action in (DestinationAction.SEND_NOW, DestinationAction.CLOSE_CIRCUIT):
            if keeper.delivered(record, health, now) or health.consecutive_failures:
                return HealthRecord(status=health.status)
            return health
        if action is DestinationAction.BACK_OFF:
            keeper.back_off(record, until)
        elif action is DestinationAction.OPEN_CIRCUIT:
            keeper.open_circuit(record, until, decision.reason, now)
        elif action is DestinationAction.STAY_OPEN:
            keeper.probe_failed(record, until)
        elif action is DestinationAction.PAUSE:
            keeper.credentials_rejected(record, decision.reason, now)
        return health

    def _release_traces(self, record: DestinationRecord, ended: Sequence[str]) -> None:
        """The entries that ended give their traces back. The batch is settled already:
        a store error here only leaves those traces to their TTL, so it is logged, not
        raised (raising would retry a run that has nothing left to send)."""
        try:
            self.current.traces.release(record.owner, ended)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning(
                "broadcast.deliver.release_failed destination=%s traces=%d error=%s",
                record.id,
                len(ended),
                type(exc).__name__,
            )

    def _log_entry(
        self,
        entries: Sequence[BacklogEntry],
        results: Sequence[DeliveryResult],
        items: dict[str, str],
        decision: DestinationDecision,
        now: float,
        secrets: dict[str, Any],
    ) -> dict[str, Any]:
        """One delivery-log entry per batch attempt (secrets redacted)."""
        answered = next((r for r in results if r.attempted and r.status_code), None)
        rejected = sorted({text for r in results for text in r.rejected})
        notes = sorted({text for r in results for text in r.notes})
        first_error = next((r.error for r in results if r.error), None)
        if not items:
            outcome = "delivered"
        elif len(items) < len(entries):
            outcome = "partial"
        else:
            outcome = next(
                (r.outcome.value for r in results if r.attempted),
                ItemAction.WAIT.value if results else "trace_missing",
            )
        return {
            "at": datetime.fromtimestamp(now, UTC).isoformat(),
            "request_id": entries[0].request_id,
            "request_ids": [e.request_id for e in entries[:LOG_REQUEST_IDS]],
            "traces": len(entries),
            "outcome": outcome,
            "status_code": answered.status_code if answered else None,
            "duration_ms": round(sum(r.duration_ms for r in results), 2),
            "latency_ms": round(max(now - e.accepted_at for e in entries) * 1000.0, 2),
            "error": redact(first_error, secrets) if first_error else None,
            "rejected": [redact(text, secrets) for text in rejected],
            "notes": notes,
            "items": dict(list(items.items())[:LOG_REQUEST_IDS]),
            "next": _describe_next(decision, items),
        }

    def _log(
        self, record: DestinationRecord, entries: Sequence[BacklogEntry], entry: dict[str, Any]
    ) -> None:
        log = logger.info if entry["outcome"] == "delivered" else logger.warning
        log(
            "broadcast.deliver.%s destination=%s traces=%d first_request=%s status=%s next=%s "
            "error=%s",
            entry["outcome"],
            record.id,
            len(entries),
            entries[0].request_id,
            entry["status_code"],
            entry["next"],
            entry["error"],
        )


def _internal(reason: str) -> DeliveryResult:
    return DeliveryResult(Outcome.PERMANENT, None, 0.0, error=reason)


def _describe_next(decision: DestinationDecision, items: dict[str, str]) -> str:
    if decision.keeps_sending:
        dead = sum(text.startswith(ItemAction.DEAD_LETTER.value) for text in items.values())
        return "dead-lettered" if dead and dead == len(items) else "-"
    until = decision.wait_until
    at = datetime.fromtimestamp(until, UTC).isoformat() if until else "later"
    return {
        DestinationAction.BACK_OFF: f"retry at {at}",
        DestinationAction.OPEN_CIRCUIT: f"circuit opened; probe at {at}",
        DestinationAction.STAY_OPEN: f"circuit open; next probe at {at}",
        DestinationAction.PAUSE: f"paused: credentials rejected; re-check at {at}",
    }.get(decision.action, "-")
