"""Braintrust's project-logs API on loopback.

`POST /v1/project_logs/{project_id}/insert` checks the Bearer key and the project,
validates the body against Braintrust's own OpenAPI schema (`InsertProjectLogsEventRequest`,
shipped in tests/schemas) plus an unknown-field check, keeps rows by `id` (inserting an
existing id replaces the row, as Braintrust does) and answers `{"row_ids": [...]}`.
`GET /v1/project/{project_id}` answers the Test Connection: 401 for a bad key, 404 for a
project it does not know.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from openapi_schema_validator import OAS30Validator

from harness.receiver import ReceivedRequest, Reply
from tests.emulators import Emulator, json_reply

API_KEY = "bt-emulator-key"
PROJECT_ID = "6ae68365-7620-4630-921b-bac416634fc8"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "braintrust_openapi_subset.json"
SPEC = json.loads(SCHEMA_PATH.read_text())
SCHEMAS = SPEC["components"]["schemas"]
_INSERT = re.compile(r"^/v1/project_logs/([^/]+)/insert$")
_PROJECT = re.compile(r"^/v1/project/([^/]+)$")


def insert_problems(payload: Any) -> list[str]:
    """Why Braintrust would refuse `payload` (empty when it is a valid insert request)."""
    schema = {"$ref": "#/components/schemas/InsertProjectLogsEventRequest", **SPEC}
    validator = OAS30Validator(schema)
    problems = [
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator.iter_errors(payload)
    ]
    # The schema leaves rows open; Braintrust ignores fields it does not know, which would
    # hide a misspelt field, so the emulator refuses them.
    known = set(SCHEMAS["InsertProjectLogsEvent"]["properties"])
    for index, row in enumerate(payload.get("events", []) if isinstance(payload, dict) else []):
        if isinstance(row, dict):
            problems += [f"events/{index}: unknown field {name!r}" for name in set(row) - known]
    return problems


class BraintrustEmulator(Emulator):
    """`with BraintrustEmulator() as braintrust:` serves on `braintrust.url`.

    `scripted`: replies sent, in order, before any normal handling (for 429s and 5xx).
    """

    def __init__(self, api_key: str = API_KEY, project_id: str = PROJECT_ID) -> None:
        self.api_key = api_key
        self.project_id = project_id
        self._lock = threading.Lock()
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.scripted: list[Reply] = []
        self.rows: dict[str, dict[str, Any]] = {}
        self.receiver.clear()

    def insert_requests(self) -> list[ReceivedRequest]:
        return self.receiver.requests("/v1/project_logs/")

    def _respond(self, request: ReceivedRequest) -> Reply:
        with self._lock:
            if self.scripted:
                return self.scripted.pop(0)
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return Reply(401, b"No valid API key provided", {"Content-Type": "text/plain"})
        project = _PROJECT.match(request.path)
        if request.method == "GET" and project:
            if project.group(1) != self.project_id:
                return json_reply(404, {"error": "Project not found"})
            return json_reply(200, {"id": self.project_id, "org_id": "org", "name": "demo"})
        insert = _INSERT.match(request.path)
        if request.method == "POST" and insert:
            if insert.group(1) != self.project_id:
                return json_reply(404, {"error": "Project not found"})
            return self._insert(request.body)
        return json_reply(404, {"error": "not found"})

    def _insert(self, body: bytes) -> Reply:
        try:
            payload = json.loads(body)
        except ValueError:
            return json_reply(400, {"error": "invalid JSON"})
        problems = insert_problems(payload)
        if problems:
            return json_reply(400, {"error": "; ".join(problems)})
        with self._lock:
            for row in payload["events"]:
                self.rows[row["id"]] = row
        return json_reply(200, {"row_ids": [row["id"] for row in payload["events"]]})
