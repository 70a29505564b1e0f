"""How secrets look on the way out: `****` and, for long values, their last four characters.

A mask sent back on update means "keep the stored secret", so a dashboard can round-trip
a config it was shown without ever holding the secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MASK_PREFIX = "****"
# Below this length the last four characters would give away too much of the secret.
SHOW_TAIL_FROM = 16


def mask(value: str) -> str:
    return MASK_PREFIX + (value[-4:] if len(value) >= SHOW_TAIL_FROM else "")


def is_mask_of(candidate: str, secret: str) -> bool:
    return candidate == mask(secret)


def mask_secrets(secrets: Mapping[str, Any], names: frozenset[str]) -> dict[str, Any]:
    """Mask each secret field; a mapping (e.g. custom headers) keeps its keys, values masked."""
    masked: dict[str, Any] = {}
    for name in names & set(secrets):
        value = secrets[name]
        if isinstance(value, Mapping):
            masked[name] = {key: mask(str(item)) for key, item in value.items()}
        elif value is None:
            masked[name] = None
        else:
            masked[name] = mask(str(value))
    return masked
