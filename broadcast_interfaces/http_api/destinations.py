"""`/destinations`: create, list, get, update, delete, Test Connection and resume."""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations.
from typing import Annotated, Any

from fastapi import APIRouter, Query

from broadcast_interfaces.http_api.access import (
    PREFIX,
    Caller,
    DestinationId,
    Service,
    owned,
)
from broadcast_interfaces.http_api.answers import (
    ConnectionAnswer,
    Deleted,
    DestinationAnswer,
    DestinationPage,
    ResumeAnswer,
    destination_out,
)
from broadcast_interfaces.http_api.bodies import DestinationCreate, DestinationUpdate
from broadcast_interfaces.http_api.errors import declared

router = APIRouter(prefix=f"{PREFIX}/destinations", tags=["destinations"])
ONE = "/{destination_id}"


@router.post("", status_code=201, response_model=DestinationAnswer, responses=declared(400, 409))
def create_destination(body: DestinationCreate, key: Caller, service: Service) -> dict[str, Any]:
    """Validate, run Test Connection, save only if it passes (at most 5 per type)."""
    view = service.add_destination(
        key.owner,
        body.type,
        body.name,
        body.config,
        api_keys=body.apiKeys or (),
        exclude_api_keys=body.excludedApiKeys or (),
        sampling_rate=body.samplingRate,
        privacy=body.privacyMode,
        filter_rules=body.filterRules.model_dump() if body.filterRules else None,
        enabled=body.enabled,
    )
    return {"data": destination_out(view)}


@router.get("", response_model=DestinationPage, responses=declared(400))
def list_destinations(
    key: Caller,
    service: Service,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> dict[str, Any]:
    views = service.list_destinations(key.owner)
    return {
        "data": [destination_out(v) for v in views[offset : offset + limit]],
        "totalCount": len(views),
    }


@router.get(ONE, response_model=DestinationAnswer, responses=declared(400, 404))
def get_destination(destination_id: DestinationId, key: Caller, service: Service) -> dict[str, Any]:
    return {"data": destination_out(service.show_destination(owned(service, destination_id, key)))}


@router.patch(ONE, response_model=DestinationAnswer, responses=declared(400, 404))
def update_destination(
    destination_id: DestinationId, body: DestinationUpdate, key: Caller, service: Service
) -> dict[str, Any]:
    """Omitted fields keep their value; a config change must pass Test Connection."""
    given = body.model_fields_set
    rules = body.filterRules.model_dump() if body.filterRules else {}
    view = service.update_destination(
        owned(service, destination_id, key),
        name=body.name,
        config=body.config,
        api_keys=(body.apiKeys or []) if "apiKeys" in given else None,
        exclude_api_keys=((body.excludedApiKeys or []) if "excludedApiKeys" in given else None),
        sampling_rate=body.samplingRate,
        privacy=body.privacyMode,
        enabled=body.enabled,
        filter_rules=rules if "filterRules" in given else None,
    )
    return {"data": destination_out(view)}


@router.delete(ONE, response_model=Deleted, responses=declared(400, 404))
def delete_destination(
    destination_id: DestinationId, key: Caller, service: Service
) -> dict[str, Any]:
    service.remove_destination(owned(service, destination_id, key))
    return {"deleted": True}


@router.post(f"{ONE}/test", response_model=ConnectionAnswer, responses=declared(400, 404))
def test_destination(
    destination_id: DestinationId, key: Caller, service: Service
) -> dict[str, Any]:
    """Run Test Connection on the saved destination; the result becomes its health."""
    result = service.test_destination(owned(service, destination_id, key))
    return {
        "data": {
            "ok": result["ok"],
            "message": result["message"],
            "statusCode": result["status_code"],
        }
    }


@router.post(f"{ONE}/resume", response_model=ResumeAnswer, responses=declared(400, 404))
def resume_destination(
    destination_id: DestinationId, key: Caller, service: Service
) -> dict[str, Any]:
    """Close the circuit, end a backoff and drain the backlog now (the vendor is back)."""
    result = service.resume_destination(owned(service, destination_id, key))
    return {
        "data": {
            "circuitWasOpen": result["circuit_was_open"],
            "circuit": result["circuit"],
            "health": result["health"],
        }
    }
