"""`GET /healthz` and `GET /readyz` for an orchestrator's HTTP probes of the management API.

Outside the API's prefix, so they answer without a management key (broadcast_interfaces/
api_guard.py checks keys under the prefix only) and count no failed key; and outside the
OpenAPI document, which describes the dashboard's API, not the orchestrator's probes:

- `/healthz`: the process serves requests (liveness): 200 `{"ok": true}`;
- `/readyz`: the settings store answers too (readiness): 200 with the ping's time, or
  503 `{"ok": false, "error": ...}` naming what is wrong. No route of the API can work
  without the store, so a load balancer should stop sending until it is back.

The metrics server answers the same two paths (broadcast_interfaces/metrics.py).
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations.
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from broadcast_interfaces.probes import Unhealthy, check_store
from settings.redis_commands import RedisClient


def health_router(client: RedisClient) -> APIRouter:
    """The two probe routes, reading the store through `client`."""
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness: the API process answers."""
        return {"ok": True}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: the settings store answers a PING."""
        try:
            answer = await run_in_threadpool(check_store, client)
        except Unhealthy as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=503)
        return JSONResponse(answer)

    return router
