"""Owners' notifications: a per-owner event log, and an outbox for the signed POSTs.

Every health event (credentials rejected, destination disabled, recovered, dead letters
over a threshold) is recorded in the owner's event log, always. When the owner registered
a notification URL, the event also goes into the outbox, which the maintenance sweep
turns into `broadcast.maintenance.notify` tasks (Standard Webhooks-signed POSTs).

Keys (`settings.keys`): the owner's `notify` hash (`url`, `sealed_secret`, the signing
secret encrypted), the owner's `events` list (newest first, capped), and the global
outbox of events waiting to be posted.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from settings import keys
from settings.crypto import SecretBox
from settings.redis_commands import RedisClient

EVENT_LOG_SIZE = 500


class Notifications:
    def __init__(self, client: RedisClient, box: SecretBox) -> None:
        self.redis = client
        self.box = box

    def set_target(self, owner: str, url: str, signing_secret: str | None) -> None:
        sealed = self.box.seal({"signing_secret": signing_secret}) if signing_secret else ""
        self.redis.hset(
            keys.owner_part(owner, "notify"), mapping={"url": url, "sealed_secret": sealed}
        )
        self.redis.sadd(keys.OWNERS, owner)

    def target(self, owner: str) -> tuple[str, str | None] | None:
        """(url, signing secret or None), decrypted; None when the owner registered none."""
        raw = self.redis.hgetall(keys.owner_part(owner, "notify"))
        if not raw:
            return None
        sealed = raw.get(b"sealed_secret", b"").decode()
        secret = self.box.open(sealed)["signing_secret"] if sealed else None
        return raw[b"url"].decode(), secret

    def record(self, owner: str, kind: str, details: dict[str, Any], now: float) -> dict[str, Any]:
        event = {
            "id": f"evt_{secrets.token_hex(12)}",
            "owner": owner,
            "type": kind,
            "at": now,
            "data": details,
        }
        body = json.dumps(event, sort_keys=True)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(keys.owner_part(owner, "events"), body)
            pipe.ltrim(keys.owner_part(owner, "events"), 0, EVENT_LOG_SIZE - 1)
            pipe.exists(keys.owner_part(owner, "notify"))
            *_, has_target = pipe.execute()
        if has_target:
            self.redis.rpush(keys.NOTIFY_OUTBOX, body)
        return event

    def events(self, owner: str, limit: int = 50) -> list[dict[str, Any]]:
        raw = self.redis.lrange(keys.owner_part(owner, "events"), 0, max(limit, 1) - 1)
        return [json.loads(item) for item in raw]

    def take_outbox(self, limit: int) -> list[dict[str, Any]]:
        """Remove and return up to `limit` events waiting to be posted, oldest first."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(keys.NOTIFY_OUTBOX, 0, limit - 1)
            pipe.ltrim(keys.NOTIFY_OUTBOX, limit, -1)
            raw, _ = pipe.execute()
        return [json.loads(item) for item in raw]
