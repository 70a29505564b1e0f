"""How large a request body each route of the management API takes, and reading one within it.

| route | limit |
| --- | --- |
| `POST /destinations`, `PATCH /destinations/{id}` | `BROADCAST_API_MAX_BODY_BYTES` (64 KiB) |
| `POST /destinations/{id}/dead-letters/replay` | the same |
| `PATCH /owner` | the same |
| anything else (routes that take no body) | 1 KiB |

A body is never read past its limit: a declared `Content-Length` above it is refused
before a byte is read, and a body sent without one (chunked) is read only until it passes
the limit (broadcast_interfaces/api_guard.py answers 413 either way).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

DEFAULT_CONFIGURATION_BYTES = 64 * 1024
NO_BODY_BYTES = 1024
_ID = r"[^/]+"


class BodyTooLarge(Exception):
    """The request's body is longer than its route takes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class BodyLimits:
    """`configuration`: the routes that carry a body; every other route takes at most
    `NO_BODY_BYTES`."""

    prefix: str
    configuration: int = DEFAULT_CONFIGURATION_BYTES

    def for_route(self, method: str, path: str) -> int:
        for route_method, pattern in self._configuration_routes:
            if method == route_method and pattern.fullmatch(path):
                return self.configuration
        return NO_BODY_BYTES

    @property
    def _configuration_routes(self) -> tuple[tuple[str, re.Pattern[str]], ...]:
        base = re.escape(self.prefix)
        return (
            ("POST", re.compile(f"{base}/destinations/?")),
            ("PATCH", re.compile(f"{base}/destinations/{_ID}/?")),
            ("POST", re.compile(f"{base}/destinations/{_ID}/dead-letters/replay/?")),
            ("PATCH", re.compile(f"{base}/owner/?")),
        )


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The request's `Content-Length`, or None when it sent none (or an unreadable one,
    which the server has refused already)."""
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_within(receive: Receive, limit: int) -> list[MutableMapping[str, Any]]:
    """The body's ASGI messages, read until the last one; raises `BodyTooLarge` as soon
    as more than `limit` bytes came, without reading the rest."""
    messages: list[MutableMapping[str, Any]] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages  # the client went away
        size += len(message.get("body", b""))
        if size > limit:
            raise BodyTooLarge(limit)
        if not message.get("more_body", False):
            return messages
