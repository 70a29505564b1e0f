"""The circuit's window: attempts and retryable failures of one destination over the
last `BROADCAST_CIRCUIT_WINDOW_SECONDS`, kept in Redis as one small hash per 5-second
bucket (`a` attempts, `f` failures) that expires on its own once it leaves the window.

A delivered attempt costs one `HINCRBY` inside the settle script (and a `PEXPIRE` for a
bucket's first attempt); a failure is counted by `HealthKeeper.failure`, which also reads
the window's totals.
"""

from __future__ import annotations

import math

from settings import keys

BUCKET_SECONDS = 5


def bucket(now: float) -> int:
    return int(now // BUCKET_SECONDS)


def current_key(destination_id: str, now: float) -> str:
    return keys.window_bucket(destination_id, bucket(now))


def bucket_keys(destination_id: str, now: float, window_seconds: float) -> list[str]:
    """The window's bucket keys, oldest first, the current one last."""
    count = max(1, math.ceil(window_seconds / BUCKET_SECONDS))
    last = bucket(now)
    return [keys.window_bucket(destination_id, b) for b in range(last - count + 1, last + 1)]


def ttl_ms(window_seconds: float) -> int:
    """How long a bucket lives: the window and one bucket more."""
    return int((window_seconds + BUCKET_SECONDS) * 1000)
