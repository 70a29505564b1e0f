"""The short retry tier: which outcomes retry, how long to wait, when to stop.

Only `Outcome.RETRYABLE` retries ("never" is checked first: permanent and auth outcomes
never retry here). Waits are exponential with full jitter, capped, and a vendor's
`Retry-After` is honoured as a floor. No wait may exceed the cap: the cap stays far below
the broker's visibility timeout, past which Redis would deliver the waiting message twice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from destinations.outcomes import Outcome

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
        ceiling = min(self.cap_seconds, self.base_seconds * (2**retries_so_far))
        delay = (rng or random).uniform(0.0, ceiling)
        if retry_after is not None:
            if retry_after > self.cap_seconds:
                return None
            delay = max(delay, retry_after)
        return delay
