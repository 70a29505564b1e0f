"""Management API keys: per-owner bearer tokens for the HTTP management API.

A key is `bmk_` followed by 256 random bits. It is shown once, at creation; Redis keeps
only its SHA-256 (a fast hash is right for a high-entropy token: there is nothing to
brute-force), indexed so that authenticating costs two small reads. A key acts as its
owner, an organization's key as one of the organization's admins.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from settings import keys
from settings.models import OWNER_PATTERN
from settings.redis_commands import RedisClient

TOKEN_PREFIX = "bmk_"
MAX_NAME_LENGTH = 100


class ApiKeyError(ValueError):
    """A refused key operation; the message names the problem."""


@dataclass(frozen=True)
class ManagementKey:
    id: str
    owner: str
    name: str
    created_at: str


@dataclass(frozen=True)
class CreatedKey:
    """A new key: `token` is the only copy of the secret and is never stored."""

    key: ManagementKey
    token: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ManagementKeys:
    def __init__(self, client: RedisClient) -> None:
        self.redis = client

    def create(self, owner: str, name: str = "") -> CreatedKey:
        if not OWNER_PATTERN.match(owner):
            raise ApiKeyError(f"owner must be user:ID or org:ID, not {owner!r}")
        name = name.strip()
        if len(name) > MAX_NAME_LENGTH:
            raise ApiKeyError(f"name must be at most {MAX_NAME_LENGTH} characters")
        key = ManagementKey(
            id=f"mk_{secrets.token_hex(8)}",
            owner=owner,
            name=name,
            created_at=datetime.now(UTC).isoformat(),
        )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_hash(token)
        with self.redis.pipeline() as pipe:
            pipe.hset(
                keys.management_key(key.id),
                mapping={
                    "owner": owner,
                    "name": name,
                    "created_at": key.created_at,
                    "hash": digest,
                },
            )
            pipe.hset(keys.MANAGEMENT_KEYS_BY_HASH, digest, key.id)
            pipe.sadd(keys.management_keys_of(owner), key.id)
            pipe.execute()
        return CreatedKey(key, token)

    def list(self, owner: str) -> list[ManagementKey]:
        ids = sorted(m.decode() for m in self.redis.smembers(keys.management_keys_of(owner)))
        found = [self.get(key_id) for key_id in ids]
        return [key for key in found if key is not None]

    def get(self, key_id: str) -> ManagementKey | None:
        return _key_from(key_id, self.redis.hgetall(keys.management_key(key_id)))

    def revoke(self, key_id: str) -> ManagementKey:
        """Delete the key; it stops working at once. Raises `ApiKeyError` if unknown."""
        raw = self.redis.hgetall(keys.management_key(key_id))
        key = _key_from(key_id, raw)
        if key is None:
            raise ApiKeyError(f"no management key {key_id!r}")
        with self.redis.pipeline() as pipe:
            pipe.hdel(keys.MANAGEMENT_KEYS_BY_HASH, raw[b"hash"].decode())
            pipe.delete(keys.management_key(key_id))
            pipe.srem(keys.management_keys_of(key.owner), key_id)
            pipe.execute()
        return key

    def authenticate(self, token: str) -> ManagementKey | None:
        """The key `token` belongs to, or None (unknown, revoked, malformed)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = token_hash(token)
        key_id = self.redis.hget(keys.MANAGEMENT_KEYS_BY_HASH, digest)
        if key_id is None:
            return None
        raw = self.redis.hgetall(keys.management_key(key_id.decode()))
        # A revoke between the two reads leaves no record: the key no longer works.
        if not raw or not hmac.compare_digest(raw[b"hash"].decode(), digest):
            return None
        return _key_from(key_id.decode(), raw)


def _key_from(key_id: str, raw: dict[bytes, bytes]) -> ManagementKey | None:
    if not raw:
        return None
    return ManagementKey(
        id=key_id,
        owner=raw[b"owner"].decode(),
        name=raw.get(b"name", b"").decode(),
        created_at=raw.get(b"created_at", b"").decode(),
    )
