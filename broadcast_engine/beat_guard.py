"""Exactly one beat sends, however many run: a lock in the settings store.

Two beats would double every sweep, re-validation and notification flush. An
orchestrator's `replicas: 1` is the first guard, but a rolling update, a second compose
project on the same Redis or an operator's test run can still start a second one. So
beat's scheduler (`celeryconfig.beat_scheduler`) sends only while it holds `bc:beat:lock`:
a token of its own with a `LOCK_SECONDS` lifetime, renewed every `RENEW_SECONDS`. A beat
that finds the lock held stands by, asking again every `RENEW_SECONDS`; it takes over
within `LOCK_SECONDS` + `RENEW_SECONDS` when the active beat dies, at once when the active
beat stops cleanly (it gives the lock back).

A beat that cannot reach the store does not send: its sweep could not run anyway, and
the lock may have passed to another beat meanwhile.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any

import redis
from celery.beat import PersistentScheduler

from broadcast_engine.runtime import runtime
from settings import keys
from settings.redis_commands import RedisClient

logger = logging.getLogger("broadcast.beat")

LOCK_SECONDS = 30.0
RENEW_SECONDS = 10.0

# KEYS: the lock. ARGV: token, lifetime ms. Takes the lock when it is free, renews it when
# this token holds it. Returns 1 when the token holds it now, else 0.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: the lock. ARGV: token. Deletes the lock only when this token holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class BeatLock:
    """The lock that lets one beat send. `token` names this beat (host, pid, a random part)."""

    def __init__(self, client: RedisClient, *, lock_seconds: float = LOCK_SECONDS) -> None:
        self.redis = client
        self.lock_seconds = lock_seconds
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)

    def hold(self) -> bool:
        """Take or renew the lock; True while this beat holds it. False, never raised,
        when the store cannot be reached."""
        try:
            return bool(
                self._hold(keys=[keys.BEAT_LOCK], args=[self.token, int(self.lock_seconds * 1000)])
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning("broadcast.beat.store_unreachable error=%s", type(exc).__name__)
            return False

    def holder(self) -> str | None:
        """The token of the beat that holds the lock now (None: nobody)."""
        raw = self.redis.get(keys.BEAT_LOCK)
        return raw.decode() if raw is not None else None

    def release(self) -> None:
        """Give the lock back, if this beat holds it (a clean stop: the standby takes over
        at its next try instead of after the lock's lifetime)."""
        try:
            self._release(keys=[keys.BEAT_LOCK], args=[self.token])
        except (redis.ConnectionError, redis.TimeoutError):
            pass  # the lock expires on its own


class GuardedScheduler(PersistentScheduler):
    """Celery's persistent scheduler (`-s FILE` as before), sending only while this beat
    holds the `BeatLock`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lock = BeatLock(runtime().store.redis)
        self._active: bool | None = None
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Send what is due when this beat holds the lock; returns the seconds to sleep,
        never more than `RENEW_SECONDS` so the lock is renewed (or asked for) in time."""
        active = self.lock.hold()
        if active != self._active:
            self._active = active
            if active:
                logger.info("broadcast.beat.active token=%s", self.lock.token)
            else:
                logger.warning(
                    "broadcast.beat.standby token=%s holder=%s: another beat sends the "
                    "periodic tasks; this one takes over if it stops",
                    self.lock.token,
                    self._holder(),
                )
        if not active:
            return RENEW_SECONDS
        return min(super().tick(*args, **kwargs), RENEW_SECONDS)

    def close(self) -> None:
        super().close()
        self.lock.release()

    def _holder(self) -> str:
        try:
            return self.lock.holder() or "-"
        except redis.RedisError:
            return "?"
