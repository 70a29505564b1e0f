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
| failures reach circuit rule | circuit open; long-schedule probes; `destination.circuit_opened` |
| a probe gets through | circuit closed; the backlog drains; `destination.circuit_closed` |
| dead letters over the threshold | `destination.dead_letters` |
| backlog over its cap or the budget | `destination.dropped` |

Times are unix seconds (`now`), injected so beat jobs can be driven by a test clock.
"""

from __future__ import annotations

import random
import secrets
from typing import Any, Protocol

import redis

from broadcast_engine.notifications import Notifications
from destinations.base import ConnectionCheck
from destinations.outcomes import Outcome
from settings import keys
from settings.config import BroadcastConfig
from settings.models import Circuit, DestinationRecord, Health, HealthRecord
from settings.moments import iso, unix
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
    ) -> None:
        self.store = store
        self.notifications = notifications
        self.config = config
        self.kick = kick
        self._transition = store.redis.register_script(_TRANSITION)

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
        """Healthy again: the backlog is kicked. True when this call made the change."""
        before = self.store.health(record.id).status
        changed = self._set(record, "status", Health.HEALTHY, Health.HEALTHY, now, reason="")
        if changed:
            self.kick(record.id, force=True)  # the flag may still say "paused"
            self._event(record, "destination.recovered", now, previous=before.value)
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

    def failure(self, record: DestinationRecord, reason: str, now: float) -> tuple[int, int]:
        """Count a retryable failure: (consecutive failures, failures within the window)."""
        window_key = keys.destination_part(record.id, "failures")
        window = self.config.circuit_window_seconds
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(window_key, {f"{now!r}:{secrets.token_hex(4)}": now})
            pipe.zremrangebyscore(window_key, "-inf", now - window)
            pipe.zcard(window_key)
            pipe.expire(window_key, int(window) + 60)
            pipe.hincrby(keys.destination_part(record.id, "health"), "consecutive_failures", 1)
            pipe.hset(
                keys.destination_part(record.id, "health"),
                mapping={"last_error": reason, "last_error_at": iso(now)},
            )
            _, _, in_window, _, consecutive, _ = pipe.execute()
        return int(consecutive), int(in_window)

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
            changed = self._set(record, "circuit", Circuit.CLOSED, Circuit.CLOSED, now)
            self._reset_failures(record)
            if changed:
                opened = health.circuit_opened_at
                self._event(
                    record,
                    "destination.circuit_closed",
                    now,
                    open_for_seconds=round(now - opened, 1) if opened else None,
                )
            return changed
        if health.consecutive_failures or health.backoff_until:
            self._reset_failures(record)
        return False

    def _reset_failures(self, record: DestinationRecord) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(
                keys.destination_part(record.id, "health"),
                mapping={"consecutive_failures": "0", "backoff_until": "0", "probe_step": "0"},
            )
            pipe.delete(keys.destination_part(record.id, "failures"))
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
    def redis(self) -> redis.Redis:
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
