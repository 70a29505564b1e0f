"""`broadcast keys rotate`: re-seal every stored secret with the first encryption key.

What is sealed: each destination's secret config (`sealed_secrets` in its record) and
each owner's notification signing secret (`sealed_secret` in the owner's notify hash).

Safe while workers and the settings API run: each record is re-sealed with an optimistic
update (WATCH the key, read, re-seal, write in MULTI; start over if anything changed the
key meanwhile), so a concurrent update is never overwritten with an older record, and the
rest of the record is written back exactly as read. Idempotent: a secret already sealed
with the first key is left alone, so a second run reports nothing to do.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Protocol

import redis

from settings import keys
from settings.crypto import SecretBox
from settings.redis_commands import RedisClient, RedisPipeline
from settings.store import SettingsStore

logger = logging.getLogger("broadcast.keys")


@dataclass(frozen=True)
class RotationReport:
    destinations: int  # re-sealed now
    notification_secrets: int  # re-sealed now
    already_current: int  # sealed with the first key before this run

    def as_dict(self) -> dict[str, int]:
        return {
            "destinations": self.destinations,
            "notification_secrets": self.notification_secrets,
            "already_current": self.already_current,
        }


def rotate_all(store: SettingsStore, box: SecretBox) -> RotationReport:
    """Re-seal every stored secret not yet sealed with the first key.

    Raises `SecretsCorrupted` when a stored secret decrypts with none of the configured
    keys (an old key was dropped too early): nothing after it is changed, nothing before
    it is lost, and the run can be repeated once the key is back.
    """
    destinations = notifications = current = 0
    for owner in store.owners():
        for record in store.list_destinations(owner):
            changed = _reseal(store.redis, keys.destination(record.id), box, _destination_token)
            destinations += changed is True
            current += changed is False
        changed = _reseal(store.redis, keys.owner_part(owner, "notify"), box, _notification_token)
        notifications += changed is True
        current += changed is False
    report = RotationReport(destinations, notifications, current)
    logger.info(
        "broadcast.keys.rotated destinations=%d notification_secrets=%d already_current=%d",
        report.destinations,
        report.notification_secrets,
        report.already_current,
    )
    return report


class _Token(Protocol):
    """How to find and replace the sealed token in one kind of record. `read` runs after
    the WATCH (through any connection: a write after the WATCH fails the EXEC all the
    same); `write` is queued in the transaction."""

    def read(self, client: RedisClient, key: str) -> tuple[object, str] | None: ...

    def write(self, pipe: RedisPipeline, key: str, record: object, token: str) -> None: ...


class _DestinationToken:
    """The destination record is a JSON string; only `sealed_secrets` changes."""

    def read(self, client: RedisClient, key: str) -> tuple[object, str] | None:
        raw = client.get(key)
        if raw is None:
            return None
        data = json.loads(raw)
        return data, data.get("sealed_secrets") or ""

    def write(self, pipe: RedisPipeline, key: str, record: object, token: str) -> None:
        data = dict(record)  # type: ignore[call-overload]
        data["sealed_secrets"] = token
        pipe.set(key, json.dumps(data, sort_keys=True))


class _NotificationToken:
    """The notify hash's `sealed_secret` field (empty when the owner set no secret)."""

    def read(self, client: RedisClient, key: str) -> tuple[object, str] | None:
        raw = client.hget(key, "sealed_secret")
        return (None, raw.decode()) if raw else None

    def write(self, pipe: RedisPipeline, key: str, record: object, token: str) -> None:
        pipe.hset(key, "sealed_secret", token)


_destination_token = _DestinationToken()
_notification_token = _NotificationToken()


def _reseal(client: RedisClient, key: str, box: SecretBox, kind: _Token) -> bool | None:
    """Re-seal the token at `key`: True if re-sealed, False if already current, None if
    there is nothing sealed there (or the record was removed meanwhile)."""
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                found = kind.read(client, key)
                if found is None or not found[1]:
                    return None
                record, token = found
                if box.is_current(token):
                    return False
                resealed = box.rotate(token)
                pipe.multi()
                kind.write(pipe, key, record, resealed)
                pipe.execute()
                return True
            except redis.WatchError:
                continue
