"""How long to wait before trying again: the one backoff every waiting place uses.

`Backoff.delay(attempt)` is exponential from `base_seconds` (attempt 0 waits up to the
base, each later attempt up to twice as long), capped at `cap_seconds`, with full jitter
(a uniform draw between 0 and that ceiling, so workers that failed together do not retry
together) unless `jitter` is off, and never shorter than a vendor's `Retry-After`.

(`RETRY_BASE`/`RETRY_CAP`: `BROADCAST_RETRY_BASE_SECONDS`/`BROADCAST_RETRY_CAP_SECONDS`)

| caller | base | cap | jitter |
| --- | --- | --- | --- |
| a destination's short backoff (`delivery_policy`) | `RETRY_BASE` (2) | `RETRY_CAP` (120) | full |
| an owner notification's retries (`RetryPolicy`) | the same | the same | full |
| a task whose store was unreachable (`STORE_RETRY`) | 1 | 30 | none |
| settling a batch while the store restarts (`SETTLE_RETRY`) | 0.1 | 0.5 | none |

`RetryPolicy` adds the short tier's rules for notifications: only `Outcome.RETRYABLE`
retries ("never" is checked first), a bounded number of times, and a `Retry-After` longer
than the cap ends the tier (no wait may approach the broker's visibility timeout, past
which Redis would deliver the waiting message twice).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from destinations.outcomes import Outcome


@dataclass(frozen=True)
class Backoff:
    base_seconds: float
    cap_seconds: float
    jitter: bool = True

    def ceiling(self, attempt: int) -> float:
        """The longest wait after `attempt` earlier failures (0: the first retry)."""
        factor: int = 2 ** max(attempt, 0)  # int ** int is typed Any (a negative power is a float)
        return min(self.cap_seconds, self.base_seconds * factor)

    def delay(
        self, attempt: int, *, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before the next try; `retry_after` (a vendor's) is a floor, so
        the result may exceed the cap only when the vendor asked for it."""
        ceiling = self.ceiling(attempt)
        wait = (rng or random).uniform(0.0, ceiling) if self.jitter else ceiling
        return max(wait, retry_after) if retry_after is not None else wait


# A task whose store (Redis) was unreachable retries after 1, 2, 4, 8, 16, then 30 s.
STORE_RETRY = Backoff(base_seconds=1.0, cap_seconds=30.0, jitter=False)
# A vendor answered but the store is restarting: settle again after 0.1, 0.2, 0.4, 0.5 s...
# (at most 0.5 s: once the store is back, settle before a sweep reclaims the batch).
SETTLE_RETRY = Backoff(base_seconds=0.1, cap_seconds=0.5, jitter=False)

NEVER_RETRY = frozenset({Outcome.PERMANENT, Outcome.AUTH_FAILED, Outcome.DELIVERED})
RETRY = frozenset({Outcome.RETRYABLE})


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float
    cap_seconds: float
    max_retries: int

    def next_delay(
        self,
        outcome: Outcome,
        retries_so_far: int,
        retry_after: float | None,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds until the next short retry, or None when this tier is done with it."""
        if outcome in NEVER_RETRY or outcome not in RETRY:
            return None
        if retries_so_far >= self.max_retries:
            return None
        if retry_after is not None and retry_after > self.cap_seconds:
            return None
        backoff = Backoff(self.base_seconds, self.cap_seconds)
        return backoff.delay(retries_so_far, retry_after=retry_after, rng=rng)
