"""Destination health: credentials, circuits, re-validation schedule, dead letters, events.

Every health transition goes through `HealthKeeper`, so each one has the same effects
wherever it is noticed (a delivery, a beat re-validation, an owner's update):

| transition | effects |
| --- | --- |
| credentials rejected | health `auth_failed`; deliveries park; event `destination.auth_failed` |
| check passed after a failure | `healthy`; parked deliveries released; `destination.recovered` |
| rejected past the window | disabled; parked -> dead letters; `destination.disabled` |
| failures within the window | circuit open: deliveries park, one probe per interval |
| probe delivered | circuit closed; parked deliveries released (drained at the sweep's rate) |
| dead letters over the threshold | `destination.dead_letters` |

Times are unix seconds (`now`), injected so beat jobs can be driven by a test clock.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import redis

from destinations.base import ConnectionCheck
from destinations.outcomes import Outcome
from settings.config import BroadcastConfig
from settings.dead_letters import DeadLetters
from settings.models import Circuit, DestinationRecord, Health
from settings.notifications import Notifications
from settings.parking import ParkingLot
from settings.store import PREFIX, SettingsStore, destination_key

CHECKS_DUE_KEY = f"{PREFIX}checks:due"
# Checks of healthy destinations are spread over +-10 % of the interval, so destinations
# added together are not all checked in the same second ever after.
CHECK_SPREAD = 0.1


def iso(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat()


def unix(moment: str) -> float | None:
    return datetime.fromisoformat(moment).timestamp() if moment else None


class HealthKeeper:
    def __init__(
        self,
        store: SettingsStore,
        parking: ParkingLot,
        dead_letters: DeadLetters,
        notifications: Notifications,
        config: BroadcastConfig,
    ) -> None:
        self.store = store
        self.parking = parking
        self.dead_letters = dead_letters
        self.notifications = notifications
        self.config = config

    # Credentials and Test Connection results

    def credentials_rejected(self, record: DestinationRecord, reason: str, now: float) -> None:
        update: dict[str, Any] = {"status": Health.AUTH_FAILED, "reason": reason}
        before = self.store.health(record.id)
        if before.status is not Health.AUTH_FAILED:
            update["changed_at"] = iso(now)
        self.store.set_health(record, update)
        if before.status is not Health.AUTH_FAILED:
            self._event(record, "destination.auth_failed", now, reason=reason)

    def record_check(self, record: DestinationRecord, check: ConnectionCheck, now: float) -> None:
        """Apply a Test Connection result: healthy, credentials rejected, or unreachable."""
        self.store.set_health(record, {"checked_at": iso(now)})
        if check.ok:
            self.check_passed(record, now)
        elif check.outcome is Outcome.AUTH_FAILED:
            self.credentials_rejected(record, check.message, now)
        else:
            before = self.store.health(record.id)
            update: dict[str, Any] = {"status": Health.UNREACHABLE, "reason": check.message}
            if before.status is not Health.UNREACHABLE:
                update["changed_at"] = iso(now)
            self.store.set_health(record, update)

    def check_passed(self, record: DestinationRecord, now: float) -> None:
        before = self.store.set_health(record, {"status": Health.HEALTHY, "reason": ""})
        if before.status is Health.HEALTHY:
            return
        self.store.set_health(record, {"changed_at": iso(now)})
        released = self.parking.release_destination(record.id, now)
        self._event(
            record,
            "destination.recovered",
            now,
            previous=before.status.value,
            released_deliveries=released,
        )

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
        """Disable the destination; its parked deliveries become dead letters."""
        self.store.replace_destination(replace(record, enabled=False, updated_at=iso(now)))
        self.store.set_health(record, {"reason": reason})
        self.redis.zrem(CHECKS_DUE_KEY, record.id)
        moved = 0
        for entry in self.parking.for_destination(record.id):
            self.dead_letter(
                record,
                entry.trace,
                entry.accepted_at,
                f"destination disabled: {reason}",
                now,
                notify=False,
            )
            self.parking.remove(entry)
            moved += 1
        self._event(record, "destination.disabled", now, reason=reason, dead_lettered=moved)

    # Circuit

    def delivery_failed(self, record: DestinationRecord, now: float) -> bool:
        """Count a retryable failure; True when this one opened the circuit."""
        key = f"{destination_key(record.id)}:failures"
        window = self.config.circuit_window_seconds
        with self.redis.pipeline() as pipe:
            pipe.zadd(key, {f"{now!r}:{secrets.token_hex(4)}": now})
            pipe.zremrangebyscore(key, "-inf", now - window)
            pipe.zcard(key)
            pipe.expire(key, int(window) + 60)
            _, _, failures, _ = pipe.execute()
        if failures < self.config.circuit_failures:
            return False
        before = self.store.health(record.id)
        if before.circuit is Circuit.OPEN:
            return False
        self.store.set_health(
            record,
            {
                "circuit": Circuit.OPEN,
                "circuit_opened_at": now,
                "probe_at": now + self.config.circuit_probe_seconds,
            },
        )
        return True

    def take_probe(self, record: DestinationRecord, now: float) -> bool:
        """True (once per probe interval) when an open circuit may let one delivery through."""
        health = self.store.health(record.id)
        if health.circuit is not Circuit.OPEN or health.probe_at > now:
            return False
        self.store.set_health(record, {"probe_at": now + self.config.circuit_probe_seconds})
        return True

    def delivery_succeeded(self, record: DestinationRecord, now: float) -> None:
        """A delivery got through: an open circuit closes and parked deliveries are released."""
        if self.store.health(record.id).circuit is not Circuit.OPEN:
            return
        self.store.set_health(record, {"circuit": Circuit.CLOSED, "circuit_opened_at": 0.0})
        self.redis.delete(f"{destination_key(record.id)}:failures")
        self.parking.release_destination(record.id, now)

    # Dead letters

    def dead_letter(
        self,
        record: DestinationRecord,
        trace: dict[str, Any],
        accepted_at: float,
        reason: str,
        now: float,
        *,
        notify: bool = True,
    ) -> None:
        self.dead_letters.add(
            record.id, trace=trace, accepted_at=accepted_at, reason=reason, now=now
        )
        if not notify:
            return
        key = f"{destination_key(record.id)}:dead_since_notice"
        pending = self.redis.incr(key)
        if pending >= self.config.dead_letter_notify_threshold:
            self.redis.delete(key)
            self._event(
                record,
                "destination.dead_letters",
                now,
                count=pending,
                total=self.dead_letters.count(record.id),
                last_reason=reason,
            )

    # Re-validation schedule

    def schedule_check(self, destination_id: str, at: float) -> None:
        self.redis.zadd(CHECKS_DUE_KEY, {destination_id: at})

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
        self.redis.zrem(CHECKS_DUE_KEY, destination_id)

    def due_checks(self, now: float, limit: int, lease_seconds: float) -> list[str]:
        """Destination ids whose check is due, each leased so that it is taken only once."""
        due = [i.decode() for i in self.redis.zrangebyscore(CHECKS_DUE_KEY, "-inf", now, 0, limit)]
        if due:
            self.redis.zadd(CHECKS_DUE_KEY, {i: now + lease_seconds for i in due}, xx=True)
        return due

    def next_check(self, destination_id: str) -> float | None:
        return self.redis.zscore(CHECKS_DUE_KEY, destination_id)

    # Internals

    @property
    def redis(self) -> redis.Redis:
        return self.store.redis

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
