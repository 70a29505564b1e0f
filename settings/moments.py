"""Moments as the store, the CLI and the API show them: unix seconds <-> ISO 8601, UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()


def iso_or_none(moment: float | None) -> str | None:
    return iso(moment) if moment else None


def unix(moment: str) -> float | None:
    return datetime.fromisoformat(moment).timestamp() if moment else None


def parse_moment(raw: str) -> float:
    """Unix seconds or ISO 8601 (UTC when no offset is given). Raises ValueError."""
    try:
        return float(raw)
    except ValueError:
        pass
    moment = datetime.fromisoformat(raw)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
