"""Datadog's LLM Observability intake and key validation on loopback.

`POST /api/intake/llm-obs/v1/trace/spans` checks `DD-API-KEY`, validates the body with the
JSON Schema in tests/schemas (written from Datadog's HTTP API reference), refuses spans
older than 24 hours, and answers 202 with an empty body as Datadog does.
`GET /api/v1/validate` answers `{"valid": true}` or 403 `{"errors": ["Forbidden"]}`.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema

from harness.receiver import ReceivedRequest, Reply
from tests.emulators import Emulator, json_reply

API_KEY = "dd-emulator-api-key"
SCHEMA_PATH = (
    Path(__file__).resolve().parent.parent / "schemas" / "datadog_llmobs_spans.schema.json"
)
SCHEMA = json.loads(SCHEMA_PATH.read_text())
MAX_AGE_NS = 24 * 3600 * 10**9


def spans_problems(payload: Any) -> list[str]:
    """Why the intake would refuse `payload` by the schema (empty when it conforms)."""
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path))
    ]


class DatadogEmulator(Emulator):
    """`with DatadogEmulator() as datadog:` serves on `datadog.url`.

    `scripted`: replies sent, in order, before any normal handling (for 429s and 5xx).
    `now_ns`: the intake's clock for the 24-hour rule (the real clock unless set).
    """

    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self._lock = threading.Lock()
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.scripted: list[Reply] = []
        self.now_ns: int | None = None
        self.payloads: list[dict[str, Any]] = []
        self.receiver.clear()

    def intake_requests(self) -> list[ReceivedRequest]:
        return self.receiver.requests("/api/intake/llm-obs/v1/trace/spans")

    def spans(self) -> list[dict[str, Any]]:
        with self._lock:
            return [span for p in self.payloads for span in p["data"]["attributes"]["spans"]]

    def _respond(self, request: ReceivedRequest) -> Reply:
        with self._lock:
            if self.scripted:
                return self.scripted.pop(0)
        if request.headers.get("dd-api-key") != self.api_key:
            return json_reply(403, {"errors": ["Forbidden"]})
        if request.method == "GET" and request.path == "/api/v1/validate":
            return json_reply(200, {"valid": True})
        if request.method == "POST" and request.path == "/api/intake/llm-obs/v1/trace/spans":
            return self._intake(request)
        return json_reply(404, {"errors": ["Not found"]})

    def _intake(self, request: ReceivedRequest) -> Reply:
        if request.headers.get("content-type") != "application/json":
            return json_reply(415, {"errors": ["Content-Type must be application/json"]})
        try:
            payload = json.loads(request.body)
        except ValueError:
            return json_reply(400, {"errors": ["invalid JSON"]})
        problems = spans_problems(payload)
        if problems:
            return json_reply(400, {"errors": problems})
        now_ns = self.now_ns if self.now_ns is not None else time.time_ns()
        if any(now_ns - s["start_ns"] > MAX_AGE_NS for s in payload["data"]["attributes"]["spans"]):
            return json_reply(400, {"errors": ["span timestamps must be within the last 24 hours"]})
        with self._lock:
            self.payloads.append(payload)
        return Reply(202, b"")
