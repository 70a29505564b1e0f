"""Encryption of destination secrets at rest (MultiFernet, so keys rotate).

`BROADCAST_ENCRYPTION_KEYS` holds comma-separated Fernet keys; the first encrypts, all
decrypt. To rotate: put a new key first, keep the old ones until `broadcast keys rotate`
(settings/key_rotation.py) re-encrypted every stored secret, then drop them. There is
no plaintext fallback: no keys, no start.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from settings.config import ConfigurationError


class SecretsCorrupted(RuntimeError):
    """A stored secret does not decrypt with any configured key."""


class SecretBox:
    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigurationError(
                "BROADCAST_ENCRYPTION_KEYS is not set: destination secrets cannot be encrypted. "
                "Generate a key with `broadcast keys generate` and set it in the environment."
            )
        try:
            fernets = [Fernet(key.encode("ascii")) for key in keys]
            self._primary = fernets[0]
            self._fernet = MultiFernet(fernets)
        except (ValueError, UnicodeEncodeError):
            raise ConfigurationError(
                "BROADCAST_ENCRYPTION_KEYS holds a value that is not a Fernet key"
            ) from None

    def seal(self, secrets: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(secrets, sort_keys=True).encode()).decode("ascii")

    def open(self, token: str) -> dict[str, Any]:
        """Raises `SecretsCorrupted` (without the token) when no key decrypts it."""
        try:
            return json.loads(self._fernet.decrypt(token.encode("ascii")))
        except InvalidToken:
            raise SecretsCorrupted(
                "stored secrets do not decrypt with any configured key"
            ) from None

    def rotate(self, token: str) -> str:
        """`token` re-encrypted with the first key. Raises `SecretsCorrupted` when no
        configured key decrypts it."""
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except InvalidToken:
            raise SecretsCorrupted(
                "stored secrets do not decrypt with any configured key"
            ) from None

    def is_current(self, token: str) -> bool:
        """Whether `token` is encrypted with the first key (nothing to rotate)."""
        try:
            self._primary.decrypt(token.encode("ascii"))
        except InvalidToken:
            return False
        return True


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")
