"""What follows a delivery attempt: the one place that decides; runs carry it out.

Pure functions of (results, ages, attempts, window counts, health, clock, random), tested
as tables without Redis or a worker. Two decisions follow every batch:

Per trace (`decide_item`):

| result | decision |
| --- | --- |
| delivered (2xx, or the vendor already had it) | `DELIVERED` |
| permanent (other 4xx, item refused, too large) | `DEAD_LETTER`, the vendor's reason |
| retryable or credentials, within the horizon | `WAIT`: back in the backlog until due |
| retryable or credentials, past the horizon | `DEAD_LETTER`: how long, how often tried |
| stored trace gone, entry younger than the grace | `WAIT` (fan-out may be writing it) |
| stored trace gone, older | `DEAD_LETTER`: trace expired |

Per destination (`decide_destination`), from the batch's request-level results:

| batch | circuit | decision |
| --- | --- | --- |
| got through | closed | `SEND_NOW` |
| got through | open | `CLOSE_CIRCUIT`: the probe passed; send now |
| credentials rejected | any | `PAUSE`: nothing sent until credentials work |
| 429 or `Retry-After` (slow down) | closed | `BACK_OFF`: the whole destination waits |
| retryable, circuit rule not met | closed | `RETRY_BATCH`: the batch waits, new ones go on |
| retryable, circuit rule met | closed | `OPEN_CIRCUIT`: wait for the first probe |
| anything but through | open | `STAY_OPEN`: the probe failed; the next waits longer |

The circuit rule (resilience4j and Hystrix decide this way): within the window, at least
`circuit_min_attempts` attempts of which a share of at least `circuit_failure_rate`
failed, or `circuit_consecutive_failures` failed batches in a row. An attempt is one
vendor request, whatever its batch size; a batch's retries count once toward the
consecutive rule, and probes, 429s and `Retry-After` pauses are not failures for it.

Waits: a batch's backoff is full-jitter exponential in its failed attempts
(`broadcast_engine.backoff`); a vendor's Retry-After is a floor of every wait, and one
longer than the short tier's cap opens the circuit for that long; probes follow
`probe_schedule_seconds` (the last wait repeats).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from broadcast_engine.backoff import Backoff
from destinations.base import DeliveryResult
from destinations.outcomes import Outcome

THROTTLED_STATUS = 429


@dataclass(frozen=True)
class DeliveryPolicy:
    """The numbers behind the decisions (all seconds), from `BroadcastConfig`, whose
    fields say what each means (`broadcast_engine.delivery_run.delivery_policy` builds it)."""

    retry_base_seconds: float
    retry_cap_seconds: float
    circuit_failure_rate: float
    circuit_min_attempts: int
    circuit_consecutive_failures: int
    probe_schedule_seconds: tuple[float, ...]
    retry_horizon_seconds: float
    auth_recheck_seconds: float
    # A backlog entry may be read a moment before fan-out finished writing its trace.
    trace_grace_seconds: float = 30.0

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.retry_base_seconds, self.retry_cap_seconds)


class ItemAction(StrEnum):
    DELIVERED = "delivered"
    DEAD_LETTER = "dead_letter"
    WAIT = "wait"


@dataclass(frozen=True)
class ItemDecision:
    action: ItemAction
    reason: str = ""


class DestinationAction(StrEnum):
    SEND_NOW = "send_now"
    CLOSE_CIRCUIT = "close_circuit"
    RETRY_BATCH = "retry_batch"
    BACK_OFF = "back_off"
    OPEN_CIRCUIT = "open_circuit"
    STAY_OPEN = "stay_open"
    PAUSE = "pause"


@dataclass(frozen=True)
class DestinationDecision:
    """`wait_until`: when the batch (`RETRY_BATCH`) or the destination (the others) may be
    tried again (None: at once)."""

    action: DestinationAction
    wait_until: float | None = None
    reason: str = ""

    @property
    def keeps_sending(self) -> bool:
        """The destination goes on with new batches (a failed batch may wait its turn)."""
        return self.action in (
            DestinationAction.SEND_NOW,
            DestinationAction.CLOSE_CIRCUIT,
            DestinationAction.RETRY_BATCH,
        )


@dataclass(frozen=True)
class WindowCounts:
    """The circuit's inputs, this batch's failure included: attempts and retryable
    failures within the window, and failed batches in a row."""

    attempts: int = 0
    failures: int = 0
    consecutive: int = 0


TRACE_MISSING = "trace expired from the store before it could be delivered"


def decide_item(
    result: DeliveryResult | None,
    *,
    age_seconds: float,
    attempts: int,
    policy: DeliveryPolicy,
) -> ItemDecision:
    """The fate of one trace after its batch. `result` None: its stored trace is gone.

    `attempts` counts failed attempts before this one.
    """
    if result is None:
        if age_seconds < policy.trace_grace_seconds:
            return ItemDecision(ItemAction.WAIT, "trace not stored yet")
        return ItemDecision(ItemAction.DEAD_LETTER, TRACE_MISSING)
    if result.outcome is Outcome.DELIVERED:
        return ItemDecision(ItemAction.DELIVERED)
    reason = result.error or result.outcome.value
    if result.outcome is Outcome.PERMANENT:
        return ItemDecision(ItemAction.DEAD_LETTER, reason)
    if age_seconds >= policy.retry_horizon_seconds:
        tried = attempts + (1 if result.attempted else 0)
        return ItemDecision(
            ItemAction.DEAD_LETTER,
            f"gave up after {_duration(age_seconds)} and {tried} attempt(s): {reason}",
        )
    return ItemDecision(ItemAction.WAIT, reason)


def batch_failure(results: Sequence[DeliveryResult]) -> DeliveryResult | None:
    """The request-level failure of a batch (an outage, credentials, a throttle), if any."""
    return next((r for r in results if r.attempted and r.concerns_destination), None)


def is_throttle(failure: DeliveryResult) -> bool:
    """The vendor asked the client to slow down (a 429, or any answer with Retry-After)."""
    return failure.status_code == THROTTLED_STATUS or failure.retry_after is not None


def circuit_rule_met(counts: WindowCounts, policy: DeliveryPolicy) -> bool:
    """Failures dominate: a failure rate at or over the threshold across at least the
    minimum number of attempts in the window, or enough failed batches in a row."""
    if counts.consecutive >= policy.circuit_consecutive_failures:
        return True
    if counts.attempts < max(policy.circuit_min_attempts, 1):
        return False
    return counts.failures / counts.attempts >= policy.circuit_failure_rate


def decide_destination(
    results: Sequence[DeliveryResult],
    *,
    now: float,
    circuit_open: bool,
    probe_step: int,
    counts: WindowCounts,
    batch_attempts: int,
    policy: DeliveryPolicy,
    rng: random.Random | None = None,
) -> DestinationDecision:
    """What the destination does next, from the batch's attempted results.

    `counts` include this batch's failure when it failed (an ordinary retryable one);
    `batch_attempts` counts the batch's failed attempts before this one (its backoff);
    `probe_step` counts failed probes since the circuit opened.
    """
    failure = batch_failure(results)
    if failure is None:
        if circuit_open:
            return DestinationDecision(DestinationAction.CLOSE_CIRCUIT)
        return DestinationDecision(DestinationAction.SEND_NOW)
    reason = failure.error or failure.outcome.value
    if failure.outcome is Outcome.AUTH_FAILED:
        return DestinationDecision(
            DestinationAction.PAUSE, now + policy.auth_recheck_seconds, reason
        )
    floor = failure.retry_after or 0.0
    if circuit_open:
        wait = max(probe_wait(policy, probe_step), floor)
        return DestinationDecision(DestinationAction.STAY_OPEN, now + wait, reason)
    if is_throttle(failure):
        wait = policy.backoff.delay(batch_attempts, retry_after=floor, rng=rng)
        if wait > policy.retry_cap_seconds:
            # A Retry-After longer than the short tier: wait it out as an open circuit does.
            return DestinationDecision(DestinationAction.OPEN_CIRCUIT, now + wait, reason)
        return DestinationDecision(DestinationAction.BACK_OFF, now + wait, reason)
    if circuit_rule_met(counts, policy):
        return DestinationDecision(
            DestinationAction.OPEN_CIRCUIT, now + probe_wait(policy, 0), reason
        )
    wait = policy.backoff.delay(batch_attempts, rng=rng)
    return DestinationDecision(DestinationAction.RETRY_BATCH, now + wait, reason)


def probe_wait(policy: DeliveryPolicy, step: int) -> float:
    """The wait before probe number `step` (0: the first); the schedule's last repeats."""
    schedule = policy.probe_schedule_seconds
    return schedule[min(step, len(schedule) - 1)]


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
