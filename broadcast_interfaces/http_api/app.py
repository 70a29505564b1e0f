"""The app: the resources' routers behind the request guard, the probes, the offline
docs pages and the OpenAPI document; and `serve`, which runs it."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

from broadcast_interfaces.api_guard import RequestGuard
from broadcast_interfaces.auth_throttle import AuthThrottle
from broadcast_interfaces.body_limits import BodyLimits
from broadcast_interfaces.health_routes import health_router
from broadcast_interfaces.http_api.access import PREFIX, SERVICE_STATE
from broadcast_interfaces.http_api.destination_types import router as types_router
from broadcast_interfaces.http_api.destinations import router as destinations_router
from broadcast_interfaces.http_api.docs_pages import install_docs_pages
from broadcast_interfaces.http_api.errors import install_error_handlers, without_fastapi_422
from broadcast_interfaces.http_api.inspection import router as inspection_router
from broadcast_interfaces.http_api.owner import router as owner_router
from broadcast_interfaces.service import SettingsService
from settings.api_keys import ManagementKeys
from settings.config import BroadcastConfig

logger = logging.getLogger("broadcast.api")

DESCRIPTION = """A dashboard's view of Broadcast's settings, shaped like OpenRouter's
observability destinations API: destinations (create, list, get, update, delete, test,
resume), what the CLI can read (status, deliveries, dead letters and replay, health
events, rejected events) and the owner's on/off switch.

Auth: `Authorization: Bearer <management key>` (`broadcast api-keys create`). A key acts
as its owner; another owner's destination is a 404, exactly like one that does not exist.
The key is checked before any of the body is read, repeated failed keys from one address
are answered 429 with `Retry-After`, and each route bounds its body (64 KiB for
configuration, 413 beyond it).

Every error is `{"error": {"code", "message"}}` with the message naming the field, and
each route lists the statuses it answers; bad input is a 400, never a 500. Secrets are
masked in every answer.
"""


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
        description=DESCRIPTION,
        docs_url=None,  # served from the package, not a CDN: docs_pages.py
        redoc_url=None,
    )
    setattr(app.state, SERVICE_STATE, service)
    install_error_handlers(app)
    app.include_router(health_router(service.store.redis))
    for router in (destinations_router, inspection_router, types_router, owner_router):
        app.include_router(router)
    install_docs_pages(app)
    _document_declared_errors_only(app)
    app.add_middleware(
        RequestGuard,
        prefix=PREFIX,
        authenticate=management_keys.authenticate,
        throttle=throttle or AuthThrottle(service.store.redis),
        limits=limits or BodyLimits(PREFIX),
    )
    return app


def _document_declared_errors_only(app: FastAPI) -> None:
    """The OpenAPI document without FastAPI's 422 (errors.without_fastapi_422)."""
    generate = app.openapi

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = without_fastapi_422(generate())
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]


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
