"""What the CLI can read, for a dashboard: status, the delivery log, dead letters and their
replay, health events and rejected events."""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations.
from typing import Any

from fastapi import APIRouter

from broadcast_interfaces.http_api.access import (
    PREFIX,
    Caller,
    DestinationId,
    Limit,
    Service,
    owned,
)
from broadcast_interfaces.http_api.answers import (
    DeadLetterList,
    RecordList,
    ReplayAnswer,
    StatusAnswer,
    letter_out,
)
from broadcast_interfaces.http_api.bodies import Replay
from broadcast_interfaces.http_api.errors import ApiError, declared
from settings.moments import checked_moment, parse_moment

router = APIRouter(prefix=PREFIX, tags=["inspection"])
ONE = "/destinations/{destination_id}"


@router.get(f"{ONE}/deliveries", response_model=RecordList, responses=declared(400, 404))
def deliveries(
    destination_id: DestinationId, key: Caller, service: Service, limit: Limit = 20
) -> dict:
    """The latest delivery attempts, newest first (vendor answers redacted)."""
    return {"data": service.deliveries(owned(service, destination_id, key), limit=limit)}


@router.get(f"{ONE}/dead-letters", response_model=DeadLetterList, responses=declared(400, 404))
def dead_letters(
    destination_id: DestinationId,
    key: Caller,
    service: Service,
    since: str | None = None,
    until: str | None = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    """Deliveries given up on, with the reason. `since`/`until`: unix seconds or ISO."""
    letters = service.dead_letters(
        owned(service, destination_id, key),
        since=parse_time(since, "since"),
        until=parse_time(until, "until"),
        limit=limit,
    )
    return {"data": [letter_out(letter) for letter in letters]}


@router.post(
    f"{ONE}/dead-letters/replay", response_model=ReplayAnswer, responses=declared(400, 404)
)
def replay(
    destination_id: DestinationId, body: Replay, key: Caller, service: Service
) -> dict[str, Any]:
    """Send dead letters again, skipping a request whose replay was delivered unless
    `again` (vendor ids are derived, so a replay never duplicates)."""
    checked = owned(service, destination_id, key)
    wanted = [*(body.ids or ()), *(body.requestIds or ())] or None
    letters = service.dead_letters(
        checked,
        since=parse_time(body.since, "since"),
        until=parse_time(body.until, "until"),
        ids=wanted,
    )
    missing = service.unmatched_letter_ids(wanted or (), letters)
    if missing:
        raise ApiError(
            404,
            "not_found",
            f"ids: no dead letter has the id {', '.join(missing)} (a request id or a "
            "dead-letter id)",
        )
    return {"data": service.replay(checked, letters, again=body.again).as_json()}


@router.get("/status", response_model=StatusAnswer, responses=declared())
def status(key: Caller, service: Service) -> dict[str, Any]:
    """Per destination: health, circuit, counters, parked and dead-letter counts."""
    return {
        "data": {
            "owner": key.owner,
            "enabled": service.store.is_enabled(key.owner),
            "destinations": service.status(key.owner),
        }
    }


@router.get("/events", response_model=RecordList, responses=declared(400))
def events(key: Caller, service: Service, limit: Limit = 50) -> dict[str, Any]:
    """Health events: credentials rejected, recovered, disabled, dead letters piling up."""
    return {"data": service.events(key.owner, limit=limit)}


@router.get("/rejected", response_model=RecordList, responses=declared(400))
def rejected(key: Caller, service: Service, limit: Limit = 20) -> dict[str, Any]:
    """The owner's latest events that failed validation, with the field."""
    return {"data": service.rejected_events(key.owner, limit=limit)}


def parse_time(raw: str | float | None, name: str) -> float | None:
    """Unix seconds or ISO 8601 (UTC when no offset is given), from 1970 to 9999; a 400
    naming `name` otherwise."""
    if raw is None:
        return None
    try:
        if isinstance(raw, int | float):
            return checked_moment(float(raw))
        return parse_moment(raw)
    except (ValueError, OverflowError):
        shown = repr(raw)[:100]
        raise ApiError(
            400,
            "invalid_request",
            f"{name}: not a time {shown} (ISO 8601 or unix seconds, from 1970 to 9999)",
        ) from None
