"""The management HTTP API (`broadcast serve`): a dashboard's view of `SettingsService`.

Resources mirror OpenRouter's observability destinations API under
`/api/v1/observability/`: destinations (create, list, get, update, delete, test, resume), plus
what the CLI can read: status, deliveries, dead letters and replay, health events,
rejected events, and the owner's on/off switch. The OpenAPI document is `/openapi.json`.

Auth: `Authorization: Bearer <management key>` (`broadcast api-keys create`). A key acts
as its owner; another owner's destination is a 404, exactly like one that does not exist.
The key is checked before any of the body is read, repeated failed keys from one address
are answered 429 with `Retry-After`, and each route bounds its body (64 KiB for
configuration, 413 beyond it): broadcast_interfaces/api_guard.py.

Every error is `{"error": {"code", "message"}}` with the message naming the field; bad
input is a 4xx, never a 500. Secrets are masked in every answer.
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations
# at run time, and `Caller` is local to `create_app`.
import logging
from typing import Annotated, Any

import redis
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from broadcast_engine.dead_letters import DeadLetter
from broadcast_interfaces.api_guard import STATE_KEY, RequestGuard
from broadcast_interfaces.auth_throttle import AuthThrottle
from broadcast_interfaces.body_limits import BodyLimits
from broadcast_interfaces.health_routes import health_router
from broadcast_interfaces.http_schemas import (
    DestinationCreate,
    DestinationUpdate,
    OwnerUpdate,
    Replay,
)
from broadcast_interfaces.service import (
    ConnectionTestFailed,
    LimitReached,
    SettingsError,
    SettingsService,
)
from destinations.registry import describe, known_types
from settings.api_keys import ManagementKey, ManagementKeys
from settings.config import BroadcastConfig
from settings.moments import checked_moment, iso, parse_moment

logger = logging.getLogger("broadcast.api")

PREFIX = "/api/v1/observability"
DestinationId = Annotated[str, Path(min_length=1, max_length=100)]
Limit = Annotated[int, Query(ge=1, le=500)]
Name = Annotated[str | None, Query(min_length=1, max_length=255)]

_STATUS_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_app(
    service: SettingsService,
    management_keys: ManagementKeys,
    *,
    throttle: AuthThrottle | None = None,
    limits: BodyLimits | None = None,
) -> FastAPI:
    """The API on `service`. `throttle` and `limits` default to their documented values
    (`serve` passes the configured ones)."""
    app = FastAPI(
        title="Broadcast management API",
        version="1",
        description=__doc__,
    )
    _install_error_handlers(app)
    app.include_router(health_router(service.store.redis))
    app.add_middleware(
        RequestGuard,
        prefix=PREFIX,
        authenticate=management_keys.authenticate,
        throttle=throttle or AuthThrottle(service.store.redis),
        limits=limits or BodyLimits(PREFIX),
    )
    bearer = HTTPBearer(auto_error=False, description="a management key (broadcast api-keys)")

    def caller(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> ManagementKey:
        # Checked by RequestGuard before the body was read; `bearer` documents the scheme.
        key = getattr(request.state, STATE_KEY, None)
        if key is None:
            raise ApiError(
                401, "unauthorized", "Authorization: a valid Bearer management key is required"
            )
        return key

    Caller = Annotated[ManagementKey, Depends(caller)]

    def owned(destination_id: str, key: ManagementKey) -> str:
        """The id, if the destination exists and belongs to the caller; else a 404."""
        record = service.store.get_destination(destination_id)
        if record is None or record.owner != key.owner:
            raise ApiError(404, "not_found", f"id: no destination {destination_id!r}")
        return record.id

    @app.post(f"{PREFIX}/destinations", status_code=201, tags=["destinations"])
    def create_destination(body: DestinationCreate, key: Caller) -> dict[str, Any]:
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

    @app.get(f"{PREFIX}/destinations", tags=["destinations"])
    def list_destinations(
        key: Caller,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=100)] = 50,
    ) -> dict[str, Any]:
        views = service.list_destinations(key.owner)
        return {
            "data": [destination_out(v) for v in views[offset : offset + limit]],
            "totalCount": len(views),
        }

    @app.get(f"{PREFIX}/destinations/{{destination_id}}", tags=["destinations"])
    def get_destination(destination_id: DestinationId, key: Caller) -> dict[str, Any]:
        return {"data": destination_out(service.show_destination(owned(destination_id, key)))}

    @app.patch(f"{PREFIX}/destinations/{{destination_id}}", tags=["destinations"])
    def update_destination(
        destination_id: DestinationId, body: DestinationUpdate, key: Caller
    ) -> dict[str, Any]:
        """Omitted fields keep their value; a config change must pass Test Connection."""
        given = body.model_fields_set
        rules = body.filterRules.model_dump() if body.filterRules else {}
        view = service.update_destination(
            owned(destination_id, key),
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

    @app.delete(f"{PREFIX}/destinations/{{destination_id}}", tags=["destinations"])
    def delete_destination(destination_id: DestinationId, key: Caller) -> dict[str, Any]:
        service.remove_destination(owned(destination_id, key))
        return {"deleted": True}

    @app.post(f"{PREFIX}/destinations/{{destination_id}}/test", tags=["destinations"])
    def test_destination(destination_id: DestinationId, key: Caller) -> dict[str, Any]:
        """Run Test Connection on the saved destination; the result becomes its health."""
        result = service.test_destination(owned(destination_id, key))
        return {
            "data": {
                "ok": result["ok"],
                "message": result["message"],
                "statusCode": result["status_code"],
            }
        }

    @app.post(f"{PREFIX}/destinations/{{destination_id}}/resume", tags=["destinations"])
    def resume_destination(destination_id: DestinationId, key: Caller) -> dict[str, Any]:
        """Close the circuit, end a backoff and drain the backlog now (the vendor is back)."""
        result = service.resume_destination(owned(destination_id, key))
        return {
            "data": {
                "circuitWasOpen": result["circuit_was_open"],
                "circuit": result["circuit"],
                "health": result["health"],
            }
        }

    @app.get(f"{PREFIX}/destinations/{{destination_id}}/deliveries", tags=["inspection"])
    def deliveries(destination_id: DestinationId, key: Caller, limit: Limit = 20) -> dict:
        """The latest delivery attempts, newest first (vendor answers redacted)."""
        return {"data": service.deliveries(owned(destination_id, key), limit=limit)}

    @app.get(f"{PREFIX}/destinations/{{destination_id}}/dead-letters", tags=["inspection"])
    def dead_letters(
        destination_id: DestinationId,
        key: Caller,
        since: str | None = None,
        until: str | None = None,
        limit: Limit = 100,
    ) -> dict[str, Any]:
        """Deliveries given up on, with the reason. `since`/`until`: unix seconds or ISO."""
        letters = service.dead_letters(
            owned(destination_id, key),
            since=parse_time(since, "since"),
            until=parse_time(until, "until"),
            limit=limit,
        )
        return {"data": [letter_out(letter) for letter in letters]}

    @app.post(f"{PREFIX}/destinations/{{destination_id}}/dead-letters/replay", tags=["inspection"])
    def replay(destination_id: DestinationId, body: Replay, key: Caller) -> dict[str, Any]:
        """Send dead letters again, skipping a request whose replay was delivered unless
        `again` (vendor ids are derived, so a replay never duplicates)."""
        checked = owned(destination_id, key)
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

    @app.get(f"{PREFIX}/types", tags=["destinations"])
    def destination_types(key: Caller) -> dict[str, Any]:
        """Every destination type of this installation, with its config fields."""
        return {"data": [describe(slug) for slug in known_types()]}

    @app.get(f"{PREFIX}/types/{{type_name}}/schema", tags=["destinations"])
    def table_schema(
        type_name: Annotated[str, Path(min_length=1, max_length=64)],
        key: Caller,
        table: Name = None,
        database: Name = None,
        schema: Name = None,
        dataset: Name = None,
    ) -> dict[str, Any]:
        """The CREATE TABLE statement of a warehouse type (clickhouse, snowflake, bigquery),
        the same as `broadcast destination schema`: run it once, then add the destination."""
        from destinations.warehouse_schema import WAREHOUSES, create_table

        if type_name not in WAREHOUSES:
            raise ApiError(404, "not_found", f"type: {type_name!r} has no table schema")
        try:
            statement = create_table(
                type_name, table=table, database=database, schema=schema, dataset=dataset
            )
        except ValueError as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None
        return {"data": {"type": type_name, "statement": statement + ";"}}

    @app.get(f"{PREFIX}/status", tags=["inspection"])
    def status(key: Caller) -> dict[str, Any]:
        """Per destination: health, circuit, counters, parked and dead-letter counts."""
        return {
            "data": {
                "owner": key.owner,
                "enabled": service.store.is_enabled(key.owner),
                "destinations": service.status(key.owner),
            }
        }

    @app.get(f"{PREFIX}/events", tags=["inspection"])
    def events(key: Caller, limit: Limit = 50) -> dict[str, Any]:
        """Health events: credentials rejected, recovered, disabled, dead letters piling up."""
        return {"data": service.events(key.owner, limit=limit)}

    @app.get(f"{PREFIX}/rejected", tags=["inspection"])
    def rejected(key: Caller, limit: Limit = 20) -> dict[str, Any]:
        """The owner's latest events that failed validation, with the field."""
        return {"data": service.rejected_events(key.owner, limit=limit)}

    @app.get(f"{PREFIX}/owner", tags=["owner"])
    def get_owner(key: Caller) -> dict[str, Any]:
        return {"data": {"owner": key.owner, "enabled": service.store.is_enabled(key.owner)}}

    @app.patch(f"{PREFIX}/owner", tags=["owner"])
    def update_owner(body: OwnerUpdate, key: Caller) -> dict[str, Any]:
        """Turn Broadcast on or off for the key's owner."""
        service.set_enabled(key.owner, body.enabled)
        return {"data": {"owner": key.owner, "enabled": body.enabled}}

    return app


def destination_out(view: dict[str, Any]) -> dict[str, Any]:
    """`SettingsService.view` (secrets already masked) in the API's camelCase shape."""
    return {
        "id": view["id"],
        "name": view["name"],
        "type": view["type"],
        "enabled": view["enabled"],
        "config": view["config"],
        "apiKeys": list(view["api_keys"]) or None,
        "excludedApiKeys": list(view["exclude_api_keys"]),
        "filterRules": view.get("filter_rules"),
        "samplingRate": view["sampling_rate"],
        "privacyMode": view["privacy"],
        "health": view["health"],
        "createdAt": view["created_at"],
        "updatedAt": view["updated_at"],
    }


def letter_out(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "requestId": letter.request_id,
        "at": iso(letter.at),
        "reason": letter.reason,
        "replayedAt": iso(letter.replayed_at) if letter.replayed_at else None,
    }


def parse_time(raw: str | float | None, name: str) -> float | None:
    """Unix seconds or ISO 8601 (UTC when no offset is given), from 1970 to 9999."""
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


def _install_error_handlers(app: FastAPI) -> None:
    handle = app.exception_handler

    @handle(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        response = error_response(exc.status, exc.code, exc.message)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @handle(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "invalid_request", describe_validation(exc.errors()))

    @handle(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail))

    @handle(SettingsError)
    async def refused(_request: Request, exc: SettingsError) -> JSONResponse:
        if isinstance(exc, ConnectionTestFailed):
            return error_response(400, "test_connection_failed", str(exc))
        if isinstance(exc, LimitReached):
            return error_response(409, "limit_reached", str(exc))
        return error_response(400, "invalid_request", str(exc))

    @handle(redis.ConnectionError)
    async def store_down(_request: Request, _exc: redis.ConnectionError) -> JSONResponse:
        logger.error("broadcast.api.store_unreachable")
        return error_response(503, "store_unavailable", "the settings store is unreachable")

    @handle(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: logged with its type only (an exception text could carry
        # a decrypted value), answered without details.
        logger.error("broadcast.api.internal_error type=%s", type(exc).__name__)
        return error_response(500, "internal_error", "internal error")


def describe_validation(errors: Any) -> str:
    """The first problem, led by the field's path: `samplingRate: Input should be ...`."""
    if not errors:
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"body: not valid JSON ({first.get('ctx', {}).get('error', 'cannot parse')})"
    location = [str(part) for part in first.get("loc", ())]
    if location and location[0] == "body":
        location = location[1:]
    field = ".".join(location) or "body"
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{field}: {message}"


def serve(service: SettingsService, host: str, port: int, config: BroadcastConfig) -> None:
    """Run the API on `service` (the same store the CLI uses) until interrupted, with the
    body limit and key throttling of `config`."""
    import uvicorn

    from broadcast_interfaces.log_format import api_log_config

    log_config = api_log_config(config.log_format)  # BROADCAST_LOG_FORMAT, from the first line
    client = service.store.redis
    app = create_app(
        service,
        ManagementKeys(client),
        throttle=AuthThrottle(
            client,
            failures=config.api_auth_failures,
            window_seconds=config.api_auth_window_seconds,
        ),
        limits=BodyLimits(PREFIX, configuration=config.api_max_body_bytes),
    )
    logger.info("broadcast.api.starting host=%s port=%d", host, port)
    uvicorn.run(app, host=host, port=port, log_level="info", log_config=log_config)
