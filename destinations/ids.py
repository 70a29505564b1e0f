"""Deterministic vendor-side ids.

Every id sent to a vendor is derived from (request id, destination id, role), so a retry,
a re-delivery after a worker loss, or an operator's replay overwrites or is de-duplicated
at the vendor instead of duplicating (ARCHITECTURE.md, "Idempotency").
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import datetime

_SEPARATOR = "\x1f"
_SPAN_ID = re.compile(r"^[0-9a-f]{16}$")


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


def derived_uuid7(moment: datetime, *parts: str) -> str:
    """A UUID version 7 (RFC 9562) whose 48-bit time is `moment` in unix milliseconds and
    whose other 74 bits come from SHA-256 over the parts: time-ordered, as vendors that
    require v7 ids expect (Opik), and the same on every retry."""
    millis = int(moment.timestamp() * 1000) & 0xFFFF_FFFF_FFFF
    raw = bytearray(millis.to_bytes(6, "big"))
    raw += hashlib.sha256(_SEPARATOR.join(parts).encode("utf-8")).digest()[:10]
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


def otlp_span_id(value: str | None) -> str | None:
    """A caller's span id as an OTLP span id (16 lowercase hex, not all zeros), or None when
    it is not one (a UUID, another vendor's observation id): then it cannot point at a span."""
    if value is None:
        return None
    lowered = value.strip().lower()
    return lowered if _SPAN_ID.match(lowered) and lowered != "0" * 16 else None


def mapped_span_id(value: str) -> str:
    """Any caller span id as 16 hex: itself when it is one, else derived from it, so every
    request naming the same parent names the same 8-byte id."""
    return otlp_span_id(value) or derived_hex("parent", value, nbytes=8)
