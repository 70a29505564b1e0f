"""The one table that turns a transport result into a delivery outcome.

ARCHITECTURE.md, "Outcomes and retries". Every destination classifies through here; a
vendor module only adds what its API documents on top (a 207 read per item, a 409 that
means "already have it").
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from enum import StrEnum


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRYABLE = "retryable"
    AUTH_FAILED = "auth_failed"
    PERMANENT = "permanent"


# The OTLP exporter spec's retryable set, plus 408 and 500: a vendor mid-incident answers
# 500 as often as 503, and every id we send is deterministic, so a retry that turns out to
# be a duplicate is de-duplicated by the vendor instead of losing a trace. 501 and 505
# are answers about the request itself and never get better.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
AUTH_STATUS = frozenset({401, 403})
NEVER_RETRY_5XX = frozenset({501, 505})

# Longer Retry-After values are read as this: a vendor asking for more than a day is
# treated like one asking for a day. (Waits longer than the short tier's cap are never
# spent in a worker; the delivery is parked in Redis until then.)
MAX_RETRY_AFTER_SECONDS = 86400.0


def classify_status(status_code: int) -> Outcome:
    """Map an HTTP status code to an outcome. Never raises."""
    if 200 <= status_code < 300:
        return Outcome.DELIVERED
    if status_code in AUTH_STATUS:
        return Outcome.AUTH_FAILED
    if status_code in RETRYABLE_STATUS:
        return Outcome.RETRYABLE
    if status_code >= 500 and status_code not in NEVER_RETRY_5XX:
        return Outcome.RETRYABLE
    return Outcome.PERMANENT


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)
