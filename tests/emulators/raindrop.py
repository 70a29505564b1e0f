"""Raindrop's track API on loopback, validating with the `raindrop-ai` SDK's own models.

`POST /v1/events/track` takes a JSON array of events with `Authorization: Bearer
<write key>` (401 otherwise); every event must validate as `raindrop.models.TrackAIEvent`
(which forbids unknown fields, needs a non-empty `user_id` and `event`, and an `ai_data`
with `model`, `input`, `output`, `convo_id` and input or output non-empty); an event over
1 MB is 413. Events are kept by `event_id`. Answers 204, as Raindrop does.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pydantic
from raindrop.models import TrackAIEvent

from harness.receiver import ReceivedRequest, Reply
from tests.emulators import Emulator, json_reply

WRITE_KEY = "rd_emulator_write_key"
MAX_EVENT_BYTES = 1024 * 1024


def event_problems(event: Any) -> list[str]:
    """Why Raindrop's SDK models refuse `event` (empty when they take it)."""
    try:
        TrackAIEvent.model_validate(event)
    except pydantic.ValidationError as exc:
        return [str(exc)]
    return []


class RaindropEmulator(Emulator):
    """`with RaindropEmulator() as raindrop:` serves on `raindrop.url`.

    `scripted`: replies sent, in order, before any normal handling (for 429s and 5xx).
    """

    def __init__(self, write_key: str = WRITE_KEY) -> None:
        self.write_key = write_key
        self._lock = threading.Lock()
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.scripted: list[Reply] = []
        self.events: dict[str, dict[str, Any]] = {}
        self.receiver.clear()

    def _respond(self, request: ReceivedRequest) -> Reply:
        with self._lock:
            if self.scripted:
                return self.scripted.pop(0)
        if request.path != "/v1/events/track" or request.method != "POST":
            return json_reply(404, {"error": "not found"})
        if request.headers.get("authorization") != f"Bearer {self.write_key}":
            return json_reply(401, {"error": "invalid write key"})
        try:
            batch = json.loads(request.body)
        except ValueError:
            return json_reply(400, {"error": "invalid JSON"})
        if not isinstance(batch, list):
            return json_reply(400, {"error": "expected an array of events"})
        problems = []
        for index, event in enumerate(batch):
            if len(json.dumps(event).encode()) > MAX_EVENT_BYTES:
                return json_reply(413, {"error": f"event {index} is larger than 1 MB"})
            problems += [f"{index}: {p}" for p in event_problems(event)]
        if problems:
            return json_reply(400, {"error": "; ".join(problems)[:2000]})
        with self._lock:
            for event in batch:
                self.events[event["event_id"]] = event
        return Reply(204)
