"""Who calls and on what: the dependencies every resource's routes share.

The key was checked by RequestGuard (broadcast_interfaces/api_guard.py) before the app
saw the request; `Caller` reads it back and `bearer` only documents the scheme. The
settings service is the app's (`create_app` puts it in `app.state`), so the routers are
plain module-level objects.
"""

# No `from __future__ import annotations`: FastAPI reads these annotations at run time.
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from broadcast_interfaces.api_guard import STATE_KEY
from broadcast_interfaces.http_api.errors import ApiError
from broadcast_interfaces.service import SettingsService
from settings.api_keys import ManagementKey

PREFIX = "/api/v1/observability"
SERVICE_STATE = "settings_service"

DestinationId = Annotated[str, Path(min_length=1, max_length=100)]
Limit = Annotated[int, Query(ge=1, le=500)]

bearer = HTTPBearer(auto_error=False, description="a management key (broadcast api-keys)")


def settings_service(request: Request) -> SettingsService:
    return getattr(request.app.state, SERVICE_STATE)


def caller(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ManagementKey:
    key = getattr(request.state, STATE_KEY, None)
    if key is None:
        raise ApiError(
            401, "unauthorized", "Authorization: a valid Bearer management key is required"
        )
    return key


Service = Annotated[SettingsService, Depends(settings_service)]
Caller = Annotated[ManagementKey, Depends(caller)]


def owned(service: SettingsService, destination_id: str, key: ManagementKey) -> str:
    """The id, if the destination exists and belongs to the caller; else a 404.

    Called in the route's body, not as a dependency: a request that is invalid too is
    answered 400 first, as FastAPI validates before the body runs."""
    record = service.store.get_destination(destination_id)
    if record is None or record.owner != key.owner:
        raise ApiError(404, "not_found", f"id: no destination {destination_id!r}")
    return record.id
