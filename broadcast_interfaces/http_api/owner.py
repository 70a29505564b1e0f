"""`/owner`: the key's owner and its on/off switch."""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations.
from typing import Any

from fastapi import APIRouter

from broadcast_interfaces.http_api.access import PREFIX, Caller, Service
from broadcast_interfaces.http_api.answers import OwnerAnswer
from broadcast_interfaces.http_api.bodies import OwnerUpdate
from broadcast_interfaces.http_api.errors import declared

router = APIRouter(prefix=f"{PREFIX}/owner", tags=["owner"])


@router.get("", response_model=OwnerAnswer, responses=declared())
def get_owner(key: Caller, service: Service) -> dict[str, Any]:
    return {"data": {"owner": key.owner, "enabled": service.store.is_enabled(key.owner)}}


@router.patch("", response_model=OwnerAnswer, responses=declared(400))
def update_owner(body: OwnerUpdate, key: Caller, service: Service) -> dict[str, Any]:
    """Turn Broadcast on or off for the key's owner."""
    service.set_enabled(key.owner, body.enabled)
    return {"data": {"owner": key.owner, "enabled": body.enabled}}
