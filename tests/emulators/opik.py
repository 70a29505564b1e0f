"""Opik's REST batch API on loopback, validating with the `opik` package's own models.

`POST /v1/private/traces/batch` and `/v1/private/spans/batch` need `Authorization: <key>`
(no `Bearer`) and `Comet-Workspace` (401 / 403 otherwise); each item must validate as the
generated `TraceWrite` / `SpanWrite` (and the body as `TraceBatch` / `SpanBatch`), name no
field those models lack (they allow extras, which would hide a misspelt field), and carry a
UUIDv7 `id` (Opik refuses other versions); items are kept by id (a re-sent id replaces
the item). Answers 204. `POST /v1/private/auth` answers 204 or 401, as the SDK's
`check.access` expects.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pydantic
from opik.rest_api.types import SpanBatch, SpanWrite, TraceBatch, TraceWrite

from harness.receiver import ReceivedRequest, Reply
from tests.emulators import Emulator, json_reply

API_KEY = "opik_emulator_key"
WORKSPACE = "acme"
_MODELS: dict[str, tuple[str, type[pydantic.BaseModel], type[pydantic.BaseModel]]] = {
    "/v1/private/traces/batch": ("traces", TraceWrite, TraceBatch),
    "/v1/private/spans/batch": ("spans", SpanWrite, SpanBatch),
}


def item_problems(kind: str, payload: Any) -> list[str]:
    """Why Opik would refuse a `{"traces": [...]}` / `{"spans": [...]}` body (empty: none)."""
    path = next(p for p, (name, _, _) in _MODELS.items() if name == kind)
    _, model, batch_model = _MODELS[path]
    if not isinstance(payload, dict) or not isinstance(payload.get(kind), list):
        return [f"{kind}: not a list"]
    problems: list[str] = []
    try:
        batch_model.model_validate(payload)
    except pydantic.ValidationError as exc:
        problems.append(f"{kind} batch: {exc}")
    for index, item in enumerate(payload[kind]):
        try:
            model.model_validate(item)
        except pydantic.ValidationError as exc:
            problems.append(f"{kind}/{index}: {exc}")
            continue
        unknown = set(item) - set(model.model_fields)
        if unknown:
            problems.append(f"{kind}/{index}: unknown fields {sorted(unknown)}")
        for field in ("id", "trace_id", "parent_span_id"):
            if field in item and not _is_uuid7(item[field]):
                problems.append(f"{kind}/{index}/{field}: not a UUID v7")
    return problems


def _is_uuid7(value: Any) -> bool:
    try:
        return uuid.UUID(str(value)).version == 7
    except ValueError:
        return False


class OpikEmulator(Emulator):
    """`with OpikEmulator() as opik:` serves on `opik.url` (the config's `base_url`).

    `scripted`: replies sent, in order, before any normal handling (for 429s and 5xx).
    """

    def __init__(self, api_key: str = API_KEY, workspace: str = WORKSPACE) -> None:
        self.api_key = api_key
        self.workspace = workspace
        self._lock = threading.Lock()
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.scripted: list[Reply] = []
        self.traces: dict[str, dict[str, Any]] = {}
        self.spans: dict[str, dict[str, Any]] = {}
        self.receiver.clear()

    def _respond(self, request: ReceivedRequest) -> Reply:
        with self._lock:
            if self.scripted:
                return self.scripted.pop(0)
        if request.headers.get("authorization") != self.api_key:
            return json_reply(401, {"code": 401, "message": "User not allowed to access workspace"})
        if request.headers.get("comet-workspace") != self.workspace:
            return json_reply(403, {"code": 403, "message": "User has no access to the workspace"})
        if request.method == "POST" and request.path == "/v1/private/auth":
            return Reply(204)
        if request.method == "POST" and request.path in _MODELS:
            kind = _MODELS[request.path][0]
            try:
                payload = json.loads(request.body)
            except ValueError:
                return json_reply(400, {"code": 400, "message": "invalid JSON"})
            problems = item_problems(kind, payload)
            if problems:
                return json_reply(400, {"code": 400, "message": "; ".join(problems)[:2000]})
            store = self.traces if kind == "traces" else self.spans
            with self._lock:
                for item in payload[kind]:
                    store[item["id"]] = item
            return Reply(204)
        return json_reply(404, {"code": 404, "message": "not found"})
