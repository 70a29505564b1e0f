"""A Langfuse ingestion API on loopback.

`POST /api/public/ingestion` checks HTTP Basic auth, validates every event with Langfuse's
own pydantic models (`langfuse.api.IngestionEvent`, pinned in tests/requirements-native.txt)
plus an unknown-field check (the models allow extra fields, Langfuse ignores them), and
answers 207 with `successes`/`errors` per event, as Langfuse does. Events are kept by
envelope id, so a re-sent event replaces itself like Langfuse's de-duplication.
`GET /api/public/projects` answers the Test Connection.
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import pydantic
from langfuse.api import IngestionEvent
from langfuse.api.core.pydantic_utilities import parse_obj_as

from harness.receiver import ReceivedRequest, Reply
from tests.emulators import Emulator, json_reply

PUBLIC_KEY = "pk-lf-emulator"
SECRET_KEY = "sk-lf-emulator"


def event_problems(event: Any) -> list[str]:
    """Why Langfuse would refuse `event` (empty when it is a valid ingestion event)."""
    try:
        parsed = parse_obj_as(IngestionEvent, event)  # type: ignore[arg-type]
    except pydantic.ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    problems = [f"unknown envelope field {name!r}" for name in parsed.model_extra or {}]
    problems += [f"unknown body field {name!r}" for name in parsed.body.model_extra or {}]
    return problems


def batch_problems(payload: Any) -> list[str]:
    """Problems of a whole `{"batch": [...]}` body, each prefixed with the event's index."""
    if not isinstance(payload, dict) or set(payload) - {"batch", "metadata"}:
        return ["the body must be an object with 'batch' (and optionally 'metadata')"]
    return [
        f"batch.{index}: {problem}"
        for index, event in enumerate(payload["batch"])
        for problem in event_problems(event)
    ]


class LangfuseEmulator(Emulator):
    """`with LangfuseEmulator() as langfuse:` serves on `langfuse.url`.

    `reject_types`: event types answered with a 400 item inside the 207.
    `scripted`: replies sent, in order, before any normal handling (for 429s and 5xx).
    `projects`: what `GET /api/public/projects` lists.
    """

    def __init__(self, public_key: str = PUBLIC_KEY, secret_key: str = SECRET_KEY) -> None:
        token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode("ascii")
        self.expected_auth = f"Basic {token}"
        self._lock = threading.Lock()
        super().__init__()
        self.reset()

    def reset(self) -> None:
        """Forget requests, events and per-test behaviour (one server can serve many tests)."""
        self.reject_types: set[str] = set()
        self.scripted: list[Reply] = []
        self.projects: list[dict[str, str]] = [{"id": "proj-1", "name": "Broadcast demo"}]
        self.events: dict[str, dict[str, Any]] = {}
        self.receiver.clear()

    def ingestion_requests(self) -> list[ReceivedRequest]:
        return self.receiver.requests("/api/public/ingestion")

    def stored(self, event_type: str) -> list[dict[str, Any]]:
        with self._lock:
            return [event for event in self.events.values() if event["type"] == event_type]

    def _respond(self, request: ReceivedRequest) -> Reply:
        with self._lock:
            if self.scripted:
                return self.scripted.pop(0)
        if request.headers.get("authorization") != self.expected_auth:
            return json_reply(
                401, {"message": "Invalid credentials. Confirm the keys and the host."}
            )
        if request.method == "GET" and request.path == "/api/public/projects":
            return json_reply(200, {"data": self.projects})
        if request.method == "POST" and request.path == "/api/public/ingestion":
            return self._ingest(request.body)
        return json_reply(404, {"message": "not found"})

    def _ingest(self, body: bytes) -> Reply:
        try:
            payload = json.loads(body)
        except ValueError:
            return json_reply(400, {"message": "invalid JSON"})
        if not isinstance(payload, dict) or not isinstance(payload.get("batch"), list):
            return json_reply(
                400, {"message": "Invalid request data", "error": "batch is required"}
            )
        successes, errors = [], []
        for event in payload["batch"]:
            event_id = str(event.get("id")) if isinstance(event, dict) else "?"
            problems = event_problems(event)
            if not problems and event["type"] in self.reject_types:
                problems = [f"{event['type']} refused by the emulator"]
            if problems:
                errors.append(
                    {
                        "id": event_id,
                        "status": 400,
                        "message": "Invalid request data",
                        "error": problems,
                    }
                )
                continue
            with self._lock:
                self.events[event_id] = event
            successes.append({"id": event_id, "status": 201})
        return json_reply(207, {"successes": successes, "errors": errors})
