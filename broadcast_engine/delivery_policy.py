"""What follows a delivery attempt: the one place that decides; tasks carry it out.

Pure functions of (results, ages, attempts, health, clock, random), tested as tables
without Redis or a worker. Two decisions follow every batch:

Per trace (`decide_item`):

| result | decision |
| --- | --- |
| delivered (2xx, or the vendor already had it) | `DELIVERED` |
| permanent (other 4xx, item refused, too large) | `DEAD_LETTER`, the vendor's reason |
| retryable or credentials, within the horizon | `WAIT`: back in the backlog |
| retryable or credentials, past the horizon | `DEAD_LETTER`: how long, how often tried |
| stored trace gone, entry younger than the grace | `WAIT` (fan-out may be writing it) |
| stored trace gone, older | `DEAD_LETTER`: trace expired |

Per destination (`decide_destination`), from the batch's request-level results:

| batch | circuit | decision |
| --- | --- | --- |
| got through | closed | `SEND_NOW` |
| got through | open | `CLOSE_CIRCUIT`: the probe passed; send now |
| credentials rejected | any | `PAUSE`: nothing sent until credentials work |
| retryable, under the circuit rule | closed | `BACK_OFF`: full-jitter exponential wait |
| retryable, circuit rule reached | closed | `OPEN_CIRCUIT`: wait for the first probe |
| retryable | open | `STAY_OPEN`: the probe failed; the next waits longer |

A vendor's Retry-After is a floor of every wait; one longer than the short tier's cap
opens the circuit for that long. Waits on the long schedule never happen in a worker or
the broker: the backlog waits in Redis and beat's sweep kicks the destination when due.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from broadcast_engine.backoff import Backoff
from destinations.base import DeliveryResult
from destinations.outcomes import Outcome


@dataclass(frozen=True)
class DeliveryPolicy:
    """The numbers behind the decisions (all seconds), from `BroadcastConfig`, whose
    fields say what each means (`tasks.deliver.delivery_policy` builds it)."""

    retry_base_seconds: float
    retry_cap_seconds: float
    circuit_failures: int
    probe_schedule_seconds: tuple[float, ...]
    retry_horizon_seconds: float
    auth_recheck_seconds: float
    # A backlog entry may be read a moment before fan-out finished writing its trace.
    trace_grace_seconds: float = 30.0


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
    BACK_OFF = "back_off"
    OPEN_CIRCUIT = "open_circuit"
    STAY_OPEN = "stay_open"
    PAUSE = "pause"


@dataclass(frozen=True)
class DestinationDecision:
    """`wait_until`: when the destination may be tried again (None: at once)."""

    action: DestinationAction
    wait_until: float | None = None
    reason: str = ""

    @property
    def keeps_sending(self) -> bool:
        return self.action in (DestinationAction.SEND_NOW, DestinationAction.CLOSE_CIRCUIT)


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


def decide_destination(
    results: Sequence[DeliveryResult],
    *,
    now: float,
    circuit_open: bool,
    probe_step: int,
    consecutive_failures: int,
    failures_in_window: int,
    policy: DeliveryPolicy,
    rng: random.Random | None = None,
) -> DestinationDecision:
    """What the destination does next, from the batch's attempted results.

    `consecutive_failures` and `failures_in_window` already include this batch's failure
    when it failed; `probe_step` counts failed probes since the circuit opened.
    """
    attempted = [r for r in results if r.attempted]
    failure = next((r for r in attempted if r.concerns_destination), None)
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
        wait = max(_probe_wait(policy, probe_step), floor)
        return DestinationDecision(DestinationAction.STAY_OPEN, now + wait, reason)
    if failures_in_window >= policy.circuit_failures:
        wait = max(_probe_wait(policy, 0), floor)
        return DestinationDecision(DestinationAction.OPEN_CIRCUIT, now + wait, reason)
    backoff = Backoff(policy.retry_base_seconds, policy.retry_cap_seconds)
    wait = backoff.delay(consecutive_failures - 1, retry_after=floor, rng=rng)
    if wait > policy.retry_cap_seconds:
        # A Retry-After longer than the short tier: wait it out as an open circuit does.
        return DestinationDecision(DestinationAction.OPEN_CIRCUIT, now + wait, reason)
    return DestinationDecision(DestinationAction.BACK_OFF, now + wait, reason)


def _probe_wait(policy: DeliveryPolicy, step: int) -> float:
    schedule = policy.probe_schedule_seconds
    return schedule[min(step, len(schedule) - 1)]


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
