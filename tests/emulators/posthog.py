"""PostHog's capture and flags endpoints on loopback, as PostHog documents them.

`POST /batch/` (also the SDK's AI lane `/i/v0/ai/batch/`): the envelope `{"api_key",
"batch": [...]}` must be JSON with every event carrying `event`, `distinct_id` (non-empty),
`properties` (an object) and a `uuid`; a body over 20 MiB is 413. Capture answers
200 `{"status": "Ok"}` for any key, as PostHog's does (keys are only checked by the flags
endpoint). Events are kept by `uuid`: PostHog de-duplicates a re-sent event.
`POST /flags/?v=2` answers 401 for a key it does not know, else `{"flags": {}}`.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

from harness.receiver import ReceivedRequest, Reply
from tests.emulators import Emulator, json_reply

API_KEY = "phc_emulator0123456789"
MAX_BODY_BYTES = 20 * 1024 * 1024
CAPTURE_PATHS = ("/batch/", "/i/v0/ai/batch/")


def envelope_problems(payload: Any) -> list[str]:
    """Why PostHog's capture would refuse `payload` (empty when it would take it)."""
    if not isinstance(payload, dict):
        return ["body is not an object"]
    problems = []
    if not isinstance(payload.get("api_key"), str) or not payload["api_key"]:
        problems.append("api_key: missing")
    batch = payload.get("batch")
    if not isinstance(batch, list):
        return [*problems, "batch: not a list"]
    for index, event in enumerate(batch):
        if not isinstance(event, dict):
            problems.append(f"batch/{index}: not an object")
            continue
        if not isinstance(event.get("event"), str) or not event["event"]:
            problems.append(f"batch/{index}/event: missing")
        if not isinstance(event.get("distinct_id"), str) or not event["distinct_id"]:
            problems.append(f"batch/{index}/distinct_id: missing")
        if not isinstance(event.get("properties"), dict):
            problems.append(f"batch/{index}/properties: not an object")
        try:
            uuid.UUID(str(event.get("uuid")))
        except ValueError:
            problems.append(f"batch/{index}/uuid: not a UUID")
    return problems


class PosthogEmulator(Emulator):
    """`with PosthogEmulator() as posthog:` serves on `posthog.url`.

    `scripted`: replies sent, in order, before any normal handling (for 429s and 5xx).
    """

    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self._lock = threading.Lock()
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.scripted: list[Reply] = []
        self.events: dict[str, dict[str, Any]] = {}
        self.envelopes: list[dict[str, Any]] = []
        self.receiver.clear()

    def capture_requests(self) -> list[ReceivedRequest]:
        return [r for r in self.receiver.requests() if r.path in CAPTURE_PATHS]

    def _respond(self, request: ReceivedRequest) -> Reply:
        with self._lock:
            if self.scripted:
                return self.scripted.pop(0)
        if request.method == "POST" and request.path.startswith("/flags/"):
            try:
                key = json.loads(request.body).get("api_key")
            except (ValueError, AttributeError):
                key = None
            if key != self.api_key:
                return json_reply(
                    401,
                    {
                        "type": "authentication_error",
                        "code": "invalid_api_key",
                        "detail": "Project API key invalid. You can find your project API key "
                        "in PostHog project settings.",
                    },
                )
            return json_reply(200, {"flags": {}, "errorsWhileComputingFlags": False})
        if request.method == "POST" and request.path in CAPTURE_PATHS:
            return self._capture(request.body)
        return json_reply(404, {"detail": "not found"})

    def _capture(self, body: bytes) -> Reply:
        if len(body) > MAX_BODY_BYTES:
            return json_reply(413, {"detail": "payload too large"})
        try:
            payload = json.loads(body)
        except ValueError:
            return json_reply(400, {"detail": "invalid JSON"})
        problems = envelope_problems(payload)
        if problems:
            return json_reply(400, {"detail": "; ".join(problems)})
        with self._lock:
            self.envelopes.append(payload)
            for event in payload["batch"]:
                self.events[event["uuid"]] = event
        return json_reply(200, {"status": "Ok"})
