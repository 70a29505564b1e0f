"""A delivery run: one batch of one destination's backlog, one vendor request.

`tasks.deliver` runs one per deliver message (which carries the destination id only):
the backlog says what to send, the trace store holds the traces, and credentials are
loaded and decrypted here, in memory.

A run takes an in-flight slot (`Backlog.begin`: at most `max_in_flight` runs per
destination; none while it backs off, is paused or waits for its next probe), claims one
batch up to the vendor's limits (a dead run's batch, retries that are due, or new
traces), sends it while its lease is kept (`LeaseKeeper`), lets
`broadcast_engine.delivery_policy` decide each trace's fate and the destination's next
step, carries that out (settle, atomic and exactly once per entry; health; waits), and
leaves. Nothing waits in a worker slot for work that may come: when more is due the run
sends the next task, at once when a full batch waits, else after `batch_gather_seconds`
in the broker so the next request carries what arrives meanwhile; a failed batch's own
retry is a task with a countdown. A full batch of new traces also calls a helper run.

Failures that are not a vendor's answer: a store error is raised, and the task retries
(the claimed entries come back to another run after the lease), except between the
vendor's answer and the settlement, where the run waits for the store
(`BROADCAST_SETTLE_PATIENCE_SECONDS`) so that a Redis restart does not make it send an
accepted batch again; a bug in a vendor module becomes a permanent, recorded failure of
the trace it concerns, never a dead worker or a lost trace.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
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
from kombu.exceptions import OperationalError

from broadcast_broker.task_client import DELIVER_TASK, describe_delivery
from broadcast_engine.backlog import (
    BacklogEntry,
    Begin,
    ClaimKind,
    Settled,
    Settlement,
    VendorRequest,
)
from broadcast_engine.backoff import SETTLE_RETRY
from broadcast_engine.dead_letters import letter_json
from broadcast_engine.delivery_policy import (
    DeliveryPolicy,
    DestinationAction,
    DestinationDecision,
    ItemAction,
    WindowCounts,
    batch_failure,
    decide_destination,
    decide_item,
    is_throttle,
)
from broadcast_engine.runtime import Runtime
from destinations.base import ConnectionCheck, DeliveryContext, DeliveryResult, Destination
from destinations.outcomes import Outcome
from destinations.registry import UnknownDestinationType, destination_class
from destinations.trace import Trace
from settings.crypto import SecretsCorrupted
from settings.models import Circuit, DestinationRecord, HealthRecord
from settings.redaction import redact
from settings.store import latency_bucket

logger = logging.getLogger("broadcast.deliver")

LOG_REQUEST_IDS = 50
# A log line names its batch's request ids up to this many; past it, their digest.
LOG_LINE_REQUEST_IDS = 20
SECRETS_UNREADABLE_REASON = (
    "secrets unreadable: no key in BROADCAST_ENCRYPTION_KEYS opens this destination's "
    "credentials (add back the key that sealed them)"
)


def delivery_policy(current: Runtime) -> DeliveryPolicy:
    config = current.config
    return DeliveryPolicy(
        retry_base_seconds=config.retry_base_seconds,
        retry_cap_seconds=config.retry_cap_seconds,
        circuit_failure_rate=config.circuit_failure_rate,
        circuit_min_attempts=config.circuit_min_attempts,
        circuit_consecutive_failures=config.circuit_consecutive_failures,
        probe_schedule_seconds=config.probe_schedule_seconds,
        retry_horizon_seconds=config.retry_horizon_seconds,
        auth_recheck_seconds=config.auth_failed_recheck_seconds,
    )


def gather_seconds(unread: int, full: int, elapsed: float, cap: float) -> float | None:
    """How long a busy destination's next task waits in the broker so that its request
    carries a full batch: the time `full` traces take to arrive at the rate `unread` came
    in during `elapsed`, at most `cap`. None (go at once) unless traces queue up faster
    than requests go out: fewer than `busy_from(full)` arrived meanwhile."""
    if cap <= 0 or unread < busy_from(full) or unread >= full:
        return None
    rate = unread / max(elapsed, 1e-3)
    return min(cap, (full - unread) / rate)


def busy_from(full: int) -> int:
    """Unread traces after a run that mark a destination as busy: a twentieth of a full
    batch, at least 2. Below it the next trace goes out at once (latency first)."""
    return max(2, full // 20)


def consumer_name() -> str:
    """This thread's consumer in the backlog's group (stable, so consumers stay few)."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


@dataclass
class RunSummary:
    """What a run did (Flower shows it as the task's result, so a trace can be followed
    from `fan_out` to its vendor): its verdict, the destination's type, the kind of batch
    it claimed and the request ids it carried, each trace's fate, and what follows.
    `failure`: why the run is a failure although it ran (every trace of its batch
    dead-lettered, a circuit probe that failed, credentials rejected); None otherwise."""

    verdict: str
    destination_type: str = ""
    batch: str = ""
    request_ids: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    next: str = "-"
    failure: str | None = None

    def shown(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"run": self.verdict}
        if self.destination_type:
            shown["destination_type"] = self.destination_type
        if self.batch:
            shown.update(
                batch=self.batch,
                traces=len(self.request_ids),
                request_ids=self.request_ids[:LOG_REQUEST_IDS],
                delivered=self.outcomes[ItemAction.DELIVERED.value],
                dead_lettered=self.outcomes[ItemAction.DEAD_LETTER.value],
                waiting=self.outcomes[ItemAction.WAIT.value],
            )
        shown["next"] = self.next
        return shown


@dataclass
class DeliveryRun:
    current: Runtime
    policy: DeliveryPolicy
    destination_id: str
    token: str
    # Known once the run read its destination; names the tasks it sends (Flower).
    destination_type: str = field(default="", init=False)

    def run(self) -> RunSummary:
        backlog, config = self.current.backlog, self.current.config
        verdict, health = backlog.begin_with_health(
            self.destination_id,
            self.token,
            time.time(),
            probe_seconds=config.claim_lease_seconds,
            recheck_seconds=config.auth_failed_recheck_seconds,
        )
        summary = RunSummary(verdict.value)
        if verdict not in (Begin.RUN, Begin.PROBE):
            return summary
        left = False
        try:
            left = self._one_batch(verdict is Begin.PROBE, health, summary)
        finally:
            if not left:
                backlog.release(self.destination_id, self.token)
        return summary

    def _one_batch(self, probe: bool, health: HealthRecord, summary: RunSummary) -> bool:
        """Claim, send and settle one batch. True when the run left through `finish`
        (its slot released), False when the caller must release the slot."""
        current, backlog = self.current, self.current.backlog
        record = current.store.get_destination(self.destination_id)
        if record is None or not record.enabled:
            # Removed, or disabled: beat's sweep turns a disabled backlog into dead letters.
            summary.verdict = "disabled"
            return False
        summary.destination_type = self.destination_type = record.type
        try:
            vendor = self._vendor(record)
        except SecretsCorrupted:
            # No configured key opens its credentials (a key dropped too early): nothing
            # can be sent, and nothing is lost either. The destination pauses like one
            # whose credentials were rejected, until the key is back and a check passes.
            summary.verdict = "paused: secrets unreadable"
            current.health.credentials_rejected(record, SECRETS_UNREADABLE_REASON, time.time())
            backlog.hold(record.id, current.config.auth_failed_recheck_seconds)
            return False
        limits = vendor.batch_limits if vendor is not None else None
        full = limits.max_items if limits is not None else 1
        consumer = consumer_name()
        now = time.time()
        claim = backlog.claim(record.id, consumer, 1 if probe else full, now, probe=probe)
        entries = claim.entries
        if claim.kind is ClaimKind.RETRY and not probe:
            entries = self._split_retries(record.id, entries, full, now)
        if limits is not None:
            entries = self._within_bytes(record.id, entries, limits.max_bytes, now)
        if not entries:
            self._leave(record.id, full, summary, sent_since=None)
            return True
        summary.batch, summary.request_ids = claim.kind.value, [e.request_id for e in entries]
        if claim.kind is ClaimKind.NEW and len(entries) == full > 1:
            current.kick(record.id, force=True)  # a full batch: more may wait for a helper
        with current.leases.held(record.id, self.token, consumer, entries):
            decision = self._batch(record, vendor, health, entries, summary, claim.kind, probe)
        if decision.keeps_sending:
            if decision.action is DestinationAction.RETRY_BATCH and decision.wait_until:
                self._send_later(record.id, decision.wait_until)
            self._leave(record.id, full, summary, sent_since=now)
            return True
        # The destination as a whole waits (throttled, circuit open, credentials rejected).
        until = decision.wait_until or now
        backlog.hold(record.id, max(until - time.time(), 0.0))  # fan-out sends no task meanwhile
        if decision.action is not DestinationAction.PAUSE:
            # Beat's sweep sends one too when it is due: this task is the prompt path.
            self._send_later(record.id, until)
        return False

    def _leave(
        self, destination_id: str, full: int, summary: RunSummary, *, sent_since: float | None
    ) -> None:
        """Release the slot, or send the next task when more is due. `sent_since`: when
        this run claimed the batch it sent (None: it sent nothing)."""
        now = time.time()
        left = self.current.backlog.finish(destination_id, self.token, now, full)
        if not left.go_on:
            summary.next = "done"
            if left.orphans_at is not None:
                # A dead run's batch: a task claims it when its lease ends (not at beat's
                # next sweep, which is only the safety net).
                self._send_later(destination_id, left.orphans_at + 0.1)
                summary.next = "done; a dead run's batch is claimed when its lease ends"
            return
        countdown = None
        if sent_since is not None and 0 < left.unread < full:
            countdown = gather_seconds(
                left.unread, full, now - sent_since, self.current.config.batch_gather_seconds
            )
        sent_later = self._send_next(destination_id, countdown=countdown)
        summary.next = "continued later" if sent_later else "continued"

    def _send_next(self, destination_id: str, *, countdown: float | None) -> bool:
        """The next task for the destination (its queued flag is held); True when it was
        sent with a countdown (the broker holds it, never a worker slot)."""
        tasks = self.current.tasks
        if countdown is not None and not tasks.subsecond_countdowns:
            countdown = None  # a whole second is worth more than the traces it gathers
        try:
            tasks.send(
                DELIVER_TASK, (destination_id,), argsrepr=self._described(), countdown=countdown
            )
        except OperationalError as exc:  # the flag expires, then fan-out or beat sends one
            logger.warning(
                "broadcast.deliver.next_task_failed destination=%s error=%s",
                destination_id,
                type(exc).__name__,
            )
        return countdown is not None

    def _send_later(self, destination_id: str, at: float) -> None:
        """A task for when a wait is over (a batch's retry, a backoff, a probe). Waits
        longer than the short tier's cap are left to beat's sweep."""
        wait = at - time.time()
        if wait > self.current.config.retry_cap_seconds:
            return
        try:
            self.current.tasks.send(
                DELIVER_TASK,
                (destination_id,),
                argsrepr=self._described(),
                countdown=max(wait, 0.0),
            )
        except OperationalError as exc:
            logger.warning(
                "broadcast.deliver.retry_task_failed destination=%s error=%s",
                destination_id,
                type(exc).__name__,
            )

    def _described(self) -> str | None:
        if not self.destination_type:
            return None
        return describe_delivery(self.destination_id, self.destination_type)

    def _split_retries(
        self, destination_id: str, entries: list[BacklogEntry], full: int, now: float
    ) -> list[BacklogEntry]:
        """A batch that failed again and again is split (half, then a quarter... down to
        one trace), so one bad trace cannot hold back or open the circuit for the rest."""
        attempts = self.current.backlog.attempts(destination_id, [e.request_id for e in entries])
        failed = max(attempts.values(), default=0)
        size = max(1, full >> max(failed - 1, 0))
        self.current.backlog.give_back(destination_id, entries[size:], now)
        return entries[:size]

    def _vendor(self, record: DestinationRecord) -> Destination | None:
        try:
            cls = destination_class(record.type)
        except UnknownDestinationType:
            return None
        secrets = self.current.box.open(record.sealed_secrets)
        return cls({**record.config, **secrets}, self.current.transport)

    def _within_bytes(
        self, destination_id: str, entries: list[BacklogEntry], max_bytes: int, now: float
    ) -> list[BacklogEntry]:
        """Keep a prefix within the vendor's byte limit; give the rest back, untried."""
        kept: list[BacklogEntry] = []
        total = 0
        for entry in entries:
            if kept and total + entry.size > max_bytes:
                break
            kept.append(entry)
            total += entry.size
        self.current.backlog.give_back(destination_id, entries[len(kept) :], now)
        return kept

    def _batch(
        self,
        record: DestinationRecord,
        vendor: Destination | None,
        health: HealthRecord,
        entries: Sequence[BacklogEntry],
        summary: RunSummary,
        kind: ClaimKind,
        probe: bool,
    ) -> DestinationDecision:
        current, now = self.current, time.time()
        stored = current.traces.get_many(record.owner, [e.request_id for e in entries])
        present = [(e, t) for e in entries if (t := stored[e.request_id]) is not None]
        results = self._send(record, vendor, [t for _, t in present])
        by_request = {e.request_id: r for (e, _), r in zip(present, results, strict=True)}
        fresh = kind is ClaimKind.NEW
        trouble = any(r.outcome is not Outcome.DELIVERED for r in results) or len(present) < len(
            entries
        )
        attempts = (
            current.backlog.attempts(record.id, [e.request_id for e in entries])
            if trouble or not fresh
            else {}
        )
        secrets = current.box.open(record.sealed_secrets) if trouble else {}
        decision = self._destination_decision(
            record, results, health, attempts, now, probe, secrets
        )
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
            tried_before = attempts.get(entry.request_id, 0)
            item = decide_item(result, age_seconds=age, attempts=tried_before, policy=self.policy)
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
                due = self._due(decision, tried_before, now)
                settlements.append(Settlement(entry, "w" if tried else "g", due=due))
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
                        attempts=tried_before + 1,
                        now=now,
                    ),
                )
            )
        log_entry = self._log_entry(entries, results, items, decision, now, secrets)
        through = batch_failure(results) is None and any(r.attempted for r in results)
        settled = self._settle_through_outage(
            record, settlements, log_entry, fresh, through, now, vendor_requests(results)
        )
        self._release_traces(record, settled.ended)
        self._apply(record, health, decision, now)
        if dead_reasons:
            current.health.dead_lettered(record, len(dead_reasons), dead_reasons[-1], now)
        summary.failure = _run_failure(decision, probe, dead_reasons, len(entries))
        self._log(record, entries, log_entry)
        return decision

    def _due(self, decision: DestinationDecision, tried_before: int, now: float) -> float:
        """When a waiting trace may be tried again: a failed batch at its own backoff; a
        trace that waits for the destination (throttled, circuit open, paused) as soon as
        the destination may send again, which `begin` decides; one that failed alone in a
        batch that got through, at its own backoff."""
        if decision.action is DestinationAction.RETRY_BATCH and decision.wait_until:
            return decision.wait_until
        if not decision.keeps_sending:
            return now
        return now + self.policy.backoff.delay(tried_before)

    def _settle_through_outage(
        self,
        record: DestinationRecord,
        settlements: list[Settlement],
        log_entry: dict[str, Any],
        fresh: bool,
        through: bool,
        now: float,
        requests: Sequence[VendorRequest],
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
        attempt = 0
        while True:
            try:
                return self.current.backlog.settle(
                    record.id,
                    settlements,
                    log_entry,
                    now=now,
                    fresh=fresh,
                    delivered_attempt=through,
                    window_seconds=config.circuit_window_seconds,
                    requests=requests,
                )
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                wait = SETTLE_RETRY.delay(attempt)
                if time.monotonic() + wait > deadline:
                    raise
                logger.warning(
                    "broadcast.deliver.settle_waits_for_store destination=%s error=%s",
                    record.id,
                    type(exc).__name__,
                )
                time.sleep(wait)  # backoff while the store comes back
                attempt += 1

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
        attempts: dict[str, int],
        now: float,
        probe: bool,
        secrets: dict[str, Any],
    ) -> DestinationDecision:
        """The policy's decision; its reason (a vendor's answer) redacted of credentials
        before it reaches the health record or an owner event. An ordinary retryable
        failure is counted in the circuit's window first (not a probe's, not a throttle)."""
        failure = batch_failure(results)
        counts = WindowCounts(consecutive=health.consecutive_failures)
        if (
            failure is not None
            and failure.outcome is Outcome.RETRYABLE
            and not probe
            and not is_throttle(failure)
        ):
            reason = redact(failure.error or failure.outcome.value, secrets)
            in_a_row = not any(attempts.values())  # a batch's retries count once
            counts = self.current.health.failure(record, reason, now, counts_in_a_row=in_a_row)
        decision = decide_destination(
            results,
            now=now,
            circuit_open=health.circuit is Circuit.OPEN,
            probe_step=health.probe_step,
            counts=counts,
            batch_attempts=max(attempts.values(), default=0),
            policy=self.policy,
        )
        return dataclasses.replace(decision, reason=redact(decision.reason, secrets))

    def _apply(
        self,
        record: DestinationRecord,
        health: HealthRecord,
        decision: DestinationDecision,
        now: float,
    ) -> None:
        """Carry out the destination's decision on its health."""
        keeper = self.current.health
        action, until = decision.action, decision.wait_until or now
        if action in (DestinationAction.SEND_NOW, DestinationAction.CLOSE_CIRCUIT):
            keeper.delivered(record, health, now)
        elif action is DestinationAction.BACK_OFF:
            keeper.back_off(record, until)
        elif action is DestinationAction.OPEN_CIRCUIT:
            keeper.open_circuit(record, until, decision.reason, now)
        elif action is DestinationAction.STAY_OPEN:
            keeper.probe_failed(record, until)
        elif action is DestinationAction.PAUSE:
            keeper.credentials_rejected(record, decision.reason, now)

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
            "next": _describe_next(decision, items, len(entries)),
        }

    def _log(
        self, record: DestinationRecord, entries: Sequence[BacklogEntry], entry: dict[str, Any]
    ) -> None:
        """One line per vendor request: who, where, which task, how long, what became of
        it and which traces it carried (`logged_request_ids`). Deliveries log at INFO."""
        log = logger.info if entry["outcome"] == "delivered" else logger.warning
        # The event name is part of the template (outcomes are our own words), so the
        # JSON format reads it and each field from the template, not from the values.
        log(
            f"broadcast.deliver.{entry['outcome']} outcome=%s destination=%s type=%s owner=%s "
            "task=%s traces=%d requests=%s status=%s duration_ms=%s next=%s error=%s",
            entry["outcome"],
            record.id,
            record.type,
            record.owner,
            self.token,
            len(entries),
            logged_request_ids([e.request_id for e in entries]),
            entry["status_code"],
            entry["duration_ms"],
            entry["next"],
            entry["error"],
        )


def logged_request_ids(request_ids: Sequence[str]) -> str:
    """A batch's request ids for its log line: all of them, comma-separated, up to
    `LOG_LINE_REQUEST_IDS`; past that `sha256:` and the first 16 hex digits of the
    SHA-256 of the ids joined by newlines (the line's `traces` gives their count; the
    delivery log lists the first `LOG_REQUEST_IDS`)."""
    if len(request_ids) <= LOG_LINE_REQUEST_IDS:
        return ",".join(request_ids)
    digest = hashlib.sha256("\n".join(request_ids).encode("utf-8", "surrogatepass"))
    return f"sha256:{digest.hexdigest()[:16]}"


def _run_failure(
    decision: DestinationDecision, probe: bool, dead_reasons: Sequence[str], traces: int
) -> str | None:
    """Why a run that sent a batch of `traces` failed (Flower: FAILURE), or None: every
    trace dead-lettered (`dead_reasons`: one per dead letter), a circuit probe that
    failed, a circuit that opened, credentials rejected."""
    if dead_reasons and len(dead_reasons) == traces:
        return f"every trace dead-lettered: {dead_reasons[-1]}"
    if probe and decision.action is DestinationAction.STAY_OPEN:
        return f"circuit probe failed: {decision.reason}"
    if decision.action is DestinationAction.PAUSE:
        return f"credentials rejected: {decision.reason}"
    if decision.action is DestinationAction.OPEN_CIRCUIT:
        return f"circuit opened: {decision.reason}"
    return None


def vendor_requests(results: Sequence[DeliveryResult]) -> list[VendorRequest]:
    """The requests a batch made, read from its results: the traces a batched request
    carried share its status and duration, so each distinct (status, duration) among the
    attempted results is one request. A result with neither (refused before sending: too
    large, a bug, an unknown type) made no request."""
    made = {
        (r.status_code, r.duration_ms)
        for r in results
        if r.attempted and (r.status_code is not None or r.duration_ms > 0)
    }
    return [VendorRequest(status, duration) for status, duration in sorted(made, key=str)]


def _internal(reason: str) -> DeliveryResult:
    return DeliveryResult(Outcome.PERMANENT, None, 0.0, error=reason)


def _describe_next(decision: DestinationDecision, items: dict[str, str], traces: int) -> str:
    """What happens next, for the delivery log. `dead-lettered` only when every one of the
    batch's `traces` was (a batch whose vendor refused one row of four delivered three)."""
    until = decision.wait_until
    at = datetime.fromtimestamp(until, UTC).isoformat() if until else "later"
    if decision.action is DestinationAction.RETRY_BATCH:
        return f"batch retry at {at}"
    if decision.keeps_sending:
        dead = sum(text.startswith(ItemAction.DEAD_LETTER.value) for text in items.values())
        return "dead-lettered" if dead and dead == traces else "-"
    return {
        DestinationAction.BACK_OFF: f"retry at {at}",
        DestinationAction.OPEN_CIRCUIT: f"circuit opened; probe at {at}",
        DestinationAction.STAY_OPEN: f"circuit open; next probe at {at}",
        DestinationAction.PAUSE: f"paused: credentials rejected; re-check at {at}",
    }.get(decision.action, "-")
