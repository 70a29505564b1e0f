"""Destination health: credentials, circuit, backoff, re-validation schedule, owner events.

Every transition goes through `HealthKeeper`, so each has the same effects wherever it is
noticed (a delivery, a beat re-validation, an owner's update). A transition is a
compare-and-set in one Lua script and reports whether it changed anything, so its owner
event fires once even when several workers notice the same outage at the same moment.

| transition | effects |
| --- | --- |
| credentials rejected | `auth_failed`; nothing sent; re-check 15 min; `destination.auth_failed` |
| check passed after a failure | `healthy`; the backlog is kicked; `destination.recovered` |
| rejected past the window | disabled; its backlog becomes dead letters; `destination.disabled` |
| failures dominate (circuit rule) | circuit open; probes on schedule; `.circuit_opened` |
| a probe, Test Connection, `resume` | circuit closed; the backlog drains; `.circuit_closed` |
| dead letters over the threshold | `destination.dead_letters` |
| backlog over its cap or the budget | `destination.dropped` |

Times are unix seconds (`now`), injected so beat jobs can be driven by a test clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol

from broadcast_engine import circuit_window
from broadcast_engine.delivery_policy import WindowCounts
from broadcast_engine.notifications import Notifications
from destinations.base import ConnectionCheck
from destinations.outcomes import Outcome
from settings import keys
from settings.config import BroadcastConfig
from settings.models import Circuit, DestinationRecord, Health, HealthRecord
from settings.moments import iso, unix
from settings.redis_commands import RedisClient
from settings.store import SettingsStore

# Checks of healthy destinations are spread over +-10 % of the interval, so destinations
# added together are not all checked in the same second ever after.
CHECK_SPREAD = 0.1

# KEYS: health hash, owner hash. ARGV: field, default, new value, then field/value pairs
# written only on a change. Returns 1 when the field changed (and bumps the owner's
# routing version: fan-out routes on status and circuit).
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ARGV[2]
if current == ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HINCRBY', KEYS[2], 'version', 1)
return 1
"""

# KEYS: health, then the window's bucket keys (oldest first, the current one last).
# ARGV: bucket TTL ms, "1" when the failure counts toward failures in a row, reason, at.
# Counts one attempt and one failure in the current bucket; returns the window's attempts,
# failures and the failed batches in a row.
_FAILURE = """
local now_key = KEYS[#KEYS]
if redis.call('HINCRBY', now_key, 'a', 1) == 1 then
  redis.call('PEXPIRE', now_key, ARGV[1])  -- once per bucket: it expires past the window
end
redis.call('HINCRBY', now_key, 'f', 1)
local consecutive
if ARGV[2] == '1' then
  consecutive = redis.call('HINCRBY', KEYS[1], 'consecutive_failures', 1)
else
  consecutive = tonumber(redis.call('HGET', KEYS[1], 'consecutive_failures') or '0')
end
redis.call('HSET', KEYS[1], 'last_error', ARGV[3], 'last_error_at', ARGV[4])
local attempts, failures = 0, 0
for i = 2, #KEYS do
  local counts = redis.call('HMGET', KEYS[i], 'a', 'f')
  attempts = attempts + tonumber(counts[1] or '0')
  failures = failures + tonumber(counts[2] or '0')
end
return {attempts, failures, consecutive}
"""


class Kick(Protocol):
    def __call__(self, destination_id: str, *, force: bool = False) -> None: ...


class HealthKeeper:
    def __init__(
        self,
        store: SettingsStore,
        notifications: Notifications,
        config: BroadcastConfig,
        *,
        kick: Kick,
        make_due: Callable[[str, float], None],
    ) -> None:
        self.store = store
        self.make_due = make_due
        self.notifications = notifications
        self.config = config
        self.kick = kick
        self._transition = store.redis.register_script(_TRANSITION)
        self._failure = store.redis.register_script(_FAILURE)

    # Credentials and Test Connection results

    def credentials_rejected(self, record: DestinationRecord, reason: str, now: float) -> bool:
        """Pause the destination; True when this call made the change (event sent once)."""
        changed = self._set(
            record, "status", Health.HEALTHY, Health.AUTH_FAILED, now, reason=reason
        )
        self.store.set_health(record, {"reason": reason})
        if changed:
            self._event(record, "destination.auth_failed", now, reason=reason)
        # Rejected credentials are re-checked soon, not at the next ordinary check.
        self.schedule_check(record.id, now + self.config.auth_failed_recheck_seconds)
        return changed

    def record_check(self, record: DestinationRecord, check: ConnectionCheck, now: float) -> None:
        """Apply a Test Connection result: healthy, credentials rejected, or unreachable."""
        self.store.set_health(record, {"checked_at": iso(now)})
        if check.ok:
            self.check_passed(record, now)
        elif check.outcome is Outcome.AUTH_FAILED:
            self.credentials_rejected(record, check.message, now)
        else:
            self._set(record, "status", Health.HEALTHY, Health.UNREACHABLE, now)
            self.store.set_health(record, {"reason": check.message})

    def check_passed(self, record: DestinationRecord, now: float) -> bool:
        """Healthy again: an open circuit closes and the backlog is kicked. True when this
        call changed the status."""
        before = self.store.health(record.id)
        changed = self._set(record, "status", Health.HEALTHY, Health.HEALTHY, now, reason="")
        if not self.resume_if_waiting(record, now, why="Test Connection passed") and changed:
            self.kick(record.id, force=True)  # the flag may still say "paused"
        if changed:
            self._event(record, "destination.recovered", now, previous=before.status.value)
        return changed

    def disable_if_rejected_too_long(self, record: DestinationRecord, now: float) -> bool:
        health = self.store.health(record.id)
        since = unix(health.changed_at)
        if health.status is not Health.AUTH_FAILED or since is None:
            return False
        if now - since < self.config.auth_failed_disable_seconds:
            return False
        days = self.config.auth_failed_disable_seconds / 86400
        self.disable(record, f"credentials rejected for {days:g} days: {health.reason}", now)
        return True

    def disable(self, record: DestinationRecord, reason: str, now: float) -> None:
        """Disable the destination; beat's sweep turns its backlog into dead letters."""
        self.store.set_enabled_flag(record, False, iso(now))
        self.store.set_health(record, {"reason": reason})
        self.unschedule_check(record.id)
        self._event(record, "destination.disabled", now, reason=reason)

    # Circuit and backoff

    def failure(
        self, record: DestinationRecord, reason: str, now: float, *, counts_in_a_row: bool
    ) -> WindowCounts:
        """Count a retryable failure in the circuit's window (and, with `counts_in_a_row`,
        in the failed batches in a row: a batch's retries count once); returns the
        window's totals, this failure included."""
        window = self.config.circuit_window_seconds
        bucket_keys = circuit_window.bucket_keys(record.id, now, window)
        attempts, failures, consecutive = self._failure(
            keys=[keys.destination_part(record.id, "health"), *bucket_keys],
            args=[
                circuit_window.ttl_ms(window),
                "1" if counts_in_a_row else "0",
                reason,
                iso(now),
            ],
        )
        return WindowCounts(int(attempts), int(failures), int(consecutive))

    def back_off(self, record: DestinationRecord, until: float) -> None:
        self.store.set_health(record, {"backoff_until": repr(until)})

    def open_circuit(
        self, record: DestinationRecord, probe_at: float, reason: str, now: float
    ) -> bool:
        changed = self._set(
            record,
            "circuit",
            Circuit.CLOSED,
            Circuit.OPEN,
            now,
            circuit_opened_at=repr(now),
            probe_at=repr(probe_at),
            probe_step="0",
        )
        if changed:
            self._event(
                record, "destination.circuit_opened", now, reason=reason, next_probe=iso(probe_at)
            )
        return changed

    def probe_failed(self, record: DestinationRecord, probe_at: float) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            key = keys.destination_part(record.id, "health")
            pipe.hset(key, "probe_at", repr(probe_at))
            pipe.hincrby(key, "probe_step", 1)
            pipe.execute()

    def delivered(self, record: DestinationRecord, health: HealthRecord, now: float) -> bool:
        """A batch got through: reset backoff; an open circuit closes (True when it did)."""
        if health.circuit is Circuit.OPEN:
            return self.close_circuit(record, now, why="a probe got through")
        if health.consecutive_failures or health.backoff_until:
            self._reset_failures(record, now)
        return False

    def close_circuit(self, record: DestinationRecord, now: float, *, why: str) -> bool:
        """Close the circuit and forget the failures (a probe passed, a Test Connection
        passed, the destination was updated or resumed); True when it was open. The
        caller sends the backlog on (`kick`)."""
        health = self.store.health(record.id)
        changed = self._set(record, "circuit", Circuit.CLOSED, Circuit.CLOSED, now)
        self._reset_failures(record, now)
        if changed:
            opened = health.circuit_opened_at
            self._event(
                record,
                "destination.circuit_closed",
                now,
                reason=why,
                open_for_seconds=round(now - opened, 1) if opened else None,
            )
        return changed

    def resume_if_waiting(self, record: DestinationRecord, now: float, *, why: str) -> bool:
        """`resume` when the circuit is open or the destination backs off; True when it
        did (the backlog was kicked)."""
        health = self.store.health(record.id)
        if health.circuit is not Circuit.OPEN and health.backoff_until <= now:
            return False
        self.resume(record, now, why=why)
        return True

    def resume(self, record: DestinationRecord, now: float, *, why: str) -> bool:
        """An operator or a passing check says the vendor works: close the circuit, end any
        backoff, and drain the backlog at once. True when the circuit was open."""
        changed = self.close_circuit(record, now, why=why)
        self.make_due(record.id, now)  # retries waiting for their backoff go now too
        self.kick(record.id, force=True)  # the flag may still say "waiting"
        return changed

    def _reset_failures(self, record: DestinationRecord, now: float) -> None:
        window = circuit_window.bucket_keys(record.id, now, self.config.circuit_window_seconds)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(
                keys.destination_part(record.id, "health"),
                mapping={"consecutive_failures": "0", "backoff_until": "0", "probe_step": "0"},
            )
            pipe.delete(*window)
            pipe.execute()

    # Dead letters and drops

    def dead_lettered(self, record: DestinationRecord, count: int, reason: str, now: float) -> None:
        """Tell the owner every `dead_letter_notify_threshold` dead letters."""
        if count <= 0:
            return
        key = keys.destination_part(record.id, "dead_since_notice")
        pending = self.redis.incrby(key, count)
        if pending >= self.config.dead_letter_notify_threshold:
            self.redis.delete(key)
            self._event(
                record,
                "destination.dead_letters",
                now,
                count=pending,
                total=int(self.redis.xlen(keys.destination_part(record.id, "dead"))),
                last_reason=reason,
            )

    def dropped(self, record: DestinationRecord, count: int, reason: str, now: float) -> None:
        self.store.count(record.id, "dropped_overflow", count)
        self._event(record, "destination.dropped", now, count=count, reason=reason)

    # Re-validation schedule

    def schedule_check(self, destination_id: str, at: float) -> None:
        self.redis.zadd(keys.CHECKS_DUE, {destination_id: at})

    def schedule_first_check(self, destination_id: str, now: float) -> None:
        """A new destination's first re-validation, anywhere in the next interval."""
        self.schedule_check(destination_id, now + self.config.revalidate_seconds * random.random())

    def schedule_next_check(self, record: DestinationRecord, now: float) -> float:
        if self.store.health(record.id).status is Health.AUTH_FAILED:
            at = now + self.config.auth_failed_recheck_seconds
        else:
            spread = random.uniform(1 - CHECK_SPREAD, 1 + CHECK_SPREAD)
            at = now + self.config.revalidate_seconds * spread
        self.schedule_check(record.id, at)
        return at

    def unschedule_check(self, destination_id: str) -> None:
        self.redis.zrem(keys.CHECKS_DUE, destination_id)

    def due_checks(self, now: float, limit: int, lease_seconds: float) -> list[str]:
        """Destination ids whose check is due, each leased so that it is taken only once."""
        due = [i.decode() for i in self.redis.zrangebyscore(keys.CHECKS_DUE, "-inf", now, 0, limit)]
        if due:
            self.redis.zadd(keys.CHECKS_DUE, {i: now + lease_seconds for i in due}, xx=True)
        return due

    def next_check(self, destination_id: str) -> float | None:
        return self.redis.zscore(keys.CHECKS_DUE, destination_id)

    # Internals

    @property
    def redis(self) -> RedisClient:
        return self.store.redis

    def _set(
        self,
        record: DestinationRecord,
        field: str,
        default: str,
        value: str,
        now: float,
        **on_change: str,
    ) -> bool:
        args: list[str] = [field, default, value]
        for name, extra in {"changed_at": iso(now), **on_change}.items():
            args += [name, extra]
        return bool(
            self._transition(
                keys=[keys.destination_part(record.id, "health"), keys.owner(record.owner)],
                args=args,
            )
        )

    def _event(self, record: DestinationRecord, kind: str, now: float, **details: Any) -> None:
        self.notifications.record(
            record.owner,
            kind,
            {
                "destination_id": record.id,
                "destination_name": record.name,
                "destination_type": record.type,
                **details,
            },
            now,
        )
