"""The management API's errors: one body, `{"error": {"code", "message"}}`, for every
refusal, whichever layer answers it (broadcast_interfaces/api_guard.py before the app,
the handlers below inside it), and the table that declares them in the OpenAPI document.

`ERRORS` is the one place that says what each status means and which codes it carries;
each route declares the statuses it can answer with `declared(...)`, and FastAPI's own
422 is taken out of the document because validation errors are answered 400 here.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations.
import logging
from dataclasses import dataclass
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from broadcast_interfaces.service import ConnectionTestFailed, LimitReached, SettingsError

logger = logging.getLogger("broadcast.api")

# Codes of the errors Starlette raises itself (an unknown path, a wrong method).
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


class ErrorDetail(BaseModel):
    code: str = Field(
        description="stable and machine-readable; each status lists the codes it carries"
    )
    message: str = Field(description="for people; a bad field's path comes first")


class ErrorBody(BaseModel):
    """Every error the API answers."""

    error: ErrorDetail


@dataclass(frozen=True)
class DeclaredError:
    """What a status means for a route that declares it, the codes its body carries and
    the headers it comes with."""

    meaning: str
    codes: tuple[str, ...]
    headers: tuple[tuple[str, str], ...] = ()

    def openapi(self) -> dict[str, Any]:
        listed = ", ".join(f"`{code}`" for code in self.codes)
        response: dict[str, Any] = {
            "model": ErrorBody,
            "description": f"{self.meaning} (code: {listed})",
            "content": {
                "application/json": {
                    "example": {"error": {"code": self.codes[0], "message": "..."}}
                }
            },
        }
        if self.headers:
            response["headers"] = {
                name: {"description": description, "schema": {"type": "string"}}
                for name, description in self.headers
            }
        return response


ERRORS: dict[int, DeclaredError] = {
    400: DeclaredError(
        "The request is invalid: the message names the field first. `test_connection_failed`:"
        " the vendor refused Test Connection and nothing was saved",
        ("invalid_request", "test_connection_failed"),
    ),
    401: DeclaredError(
        "No valid management key in `Authorization: Bearer ...`",
        ("unauthorized",),
        (("WWW-Authenticate", "`Bearer`"),),
    ),
    404: DeclaredError(
        "No such destination (another owner's is not found either), dead letter or type",
        ("not_found",),
    ),
    409: DeclaredError("The owner has 5 destinations of this type already", ("limit_reached",)),
    413: DeclaredError(
        "The body is larger than the route takes (BROADCAST_API_MAX_BODY_BYTES for "
        "configuration, 1 KiB for routes without a body); it was not read",
        ("payload_too_large",),
    ),
    429: DeclaredError(
        "Too many missing or wrong keys from this address lately",
        ("rate_limited",),
        (("Retry-After", "seconds to wait before a key from this address is checked again"),),
    ),
    503: DeclaredError("The settings store is unreachable", ("store_unavailable",)),
}

# What every route under the prefix can answer: the guard checks the key (401, 429) and
# bounds the body (413) before the app; no route works without the store (503).
GUARDED = (401, 413, 429, 503)


def declared(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route under the prefix that can also answer `statuses`."""
    return {status: ERRORS[status].openapi() for status in sorted({*GUARDED, *statuses})}


class ApiError(Exception):
    """A refusal a route decides itself: answered `status` with `code` and `message`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
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


# FastAPI declares 422 with its own body on every route that takes input; this API
# answers those requests 400 with `ErrorBody` (the handler above), so the document must
# not promise a 422.
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def without_fastapi_422(document: dict[str, Any]) -> dict[str, Any]:
    """`document` with FastAPI's 422 responses and their schemas removed (in place)."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    return document
