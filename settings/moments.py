"""Moments as the store, the CLI and the API show them: unix seconds <-> ISO 8601, UTC."""

from __future__ import annotations

import math
from datetime import UTC, datetime

# The moments a store, an API or a CLI can be asked about: from the unix epoch to the end
# of year 9999 (the last second `datetime` can show). Anything else is refused where it is
# read, not met as an OverflowError when a stream id or an ISO text is made of it.
LATEST_MOMENT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()


def iso_or_none(moment: float | None) -> str | None:
    return iso(moment) if moment else None


def unix(moment: str) -> float | None:
    return datetime.fromisoformat(moment).timestamp() if moment else None


def parse_moment(raw: str) -> float:
    """Unix seconds or ISO 8601 (UTC when no offset is given), within `checked_moment`'s
    range. Raises ValueError."""
    try:
        return checked_moment(float(raw))
    except ValueError as exc:
        if "not a moment" in str(exc):
            raise
    moment = datetime.fromisoformat(raw)
    try:
        stamp = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    except (OverflowError, OSError):
        raise ValueError(f"not a moment from 1970 to 9999: {raw!r}") from None
    return checked_moment(stamp)


def checked_moment(seconds: float) -> float:
    """`seconds` if it is a finite unix time from 1970 to 9999. Raises ValueError."""
    if not (math.isfinite(seconds) and 0 <= seconds <= LATEST_MOMENT):
        raise ValueError(f"not a moment from 1970 to 9999: {seconds!r}")
    return seconds
