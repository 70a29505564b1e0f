"""Deterministic vendor-side ids.

Every id sent to a vendor is derived from (request id, destination id, role), so a retry,
a re-delivery after a worker loss, or an operator's replay overwrites or is de-duplicated
at the vendor instead of duplicating (ARCHITECTURE.md, "Idempotency").
"""

from __future__ import annotations

import hashlib
import uuid

_SEPARATOR = "\x1f"


def derived_hex(*parts: str, nbytes: int) -> str:
    """`nbytes` bytes of SHA-256 over the parts, as lowercase hex (never all zeros)."""
    digest = hashlib.sha256(_SEPARATOR.join(parts).encode("utf-8")).digest()[:nbytes]
    if not any(digest):  # OTLP treats an all-zero id as invalid
        digest = digest[:-1] + b"\x01"
    return digest.hex()


def derived_uuid(*parts: str) -> str:
    """A version-4-shaped UUID string derived from the parts."""
    raw = bytearray(hashlib.sha256(_SEPARATOR.join(parts).encode("utf-8")).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))
