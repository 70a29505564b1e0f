"""The management API's front door: nothing is read before the caller is known.

An ASGI middleware in front of the FastAPI app (FastAPI reads a body before any
dependency runs: an unauthenticated 200 MiB POST cost the API process 549 MiB before its
401). For every request, in order, before the app sees it:

1. under the API's prefix, an address that failed too many keys is answered 429 with
   `Retry-After` (broadcast_interfaces/auth_throttle.py), and a missing or wrong key 401 (counted);
2. a declared `Content-Length` above the route's limit is answered 413
   (broadcast_interfaces/body_limits.py);
3. the body is read up to that limit (a chunked one is cut off the moment it passes it,
   413) and handed to the app from memory.

Refusals say `Connection: close`, so the server drops the rest of an unread body with the
connection instead of reading it. The authenticated key is left in the request's state
(`request.state.management_key`) for the routes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio.to_thread
import redis

from broadcast_interfaces.auth_throttle import AuthThrottle
from broadcast_interfaces.body_limits import BodyLimits, BodyTooLarge, declared_length, read_within
from settings.api_keys import ManagementKey

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

STATE_KEY = "management_key"


class RequestGuard:
    def __init__(
        self,
        app: App,
        *,
        prefix: str,
        authenticate: Callable[[str], ManagementKey | None],
        throttle: AuthThrottle,
        limits: BodyLimits,
    ) -> None:
        self.app = app
        self.prefix = prefix
        self.authenticate = authenticate
        self.throttle = throttle
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self._guarded(scope, receive, send)
        except redis.ConnectionError:
            await _refuse(send, 503, "store_unavailable", "the settings store is unreachable")

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, headers = scope["path"], scope.get("headers") or []
        if path.startswith(self.prefix):
            address = (scope.get("client") or ("unknown", 0))[0]
            wait = await anyio.to_thread.run_sync(self.throttle.wait_seconds, address)
            if wait > 0:
                await _refuse(send, 429, "rate_limited", _throttled_message(wait),
                              {"retry-after": str(int(wait) + 1)})  # fmt: skip
                return
            key = await anyio.to_thread.run_sync(self._key_of, headers)
            if key is None:
                await anyio.to_thread.run_sync(self.throttle.failed, address)
                await _refuse(send, 401, "unauthorized",
                              "Authorization: a valid Bearer management key is required",
                              {"www-authenticate": "Bearer"})  # fmt: skip
                return
            scope.setdefault("state", {})[STATE_KEY] = key
        limit = self.limits.for_route(scope["method"], path)
        declared = declared_length(headers)
        if declared is not None and declared > limit:
            await _refuse(send, 413, "payload_too_large", str(BodyTooLarge(limit)))
            return
        try:
            messages = await read_within(receive, limit)
        except BodyTooLarge as exc:
            await _refuse(send, 413, "payload_too_large", str(exc))
            return
        await self.app(scope, _replay(messages, receive), send)

    def _key_of(self, headers: list[tuple[bytes, bytes]]) -> ManagementKey | None:
        for name, value in headers:
            if name.lower() == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    return self.authenticate(token.strip())
                return None
        return None


def _throttled_message(wait: float) -> str:
    return f"too many failed keys from this address: try again in {int(wait) + 1} s"


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that gives the body read already, then waits on the real one (for the
    client's disconnect)."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


async def _refuse(
    send: Send, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *((name.encode(), value.encode()) for name, value in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
