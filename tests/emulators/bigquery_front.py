"""Google's front for the BigQuery API, on loopback: bearer tokens, scopes and IAM, with
every permitted request passed on to local-bigquery (which grants everyone everything).

| check | answer (as BigQuery documents) |
| --- | --- |
| no `Authorization: Bearer` | 401 UNAUTHENTICATED, reason `required` |
| a token the token endpoint did not issue, or expired / revoked | 401 UNAUTHENTICATED, |
|  | reason `authError` |
| a token whose scopes do not include one the method accepts (scopes per method from the | 403 |
| engine's own discovery document) | PERMISSION_DENIED "insufficient authentication scopes" |
| `tables.testIamPermissions` | 200, the subset of the asked permissions the account's |
|  | role holds (answered here: the engine would grant them all) |
| a method whose permission the role lacks (insertAll: `bigquery.tables.updateData`) | 403 |
|  | `accessDenied`, "Permission ... denied on table ... (or it may not exist)." |
| anything else | the engine's answer |

Roles are BigQuery's predefined ones, reduced to the permissions these methods need:
`dataEditor` (may insert), `dataViewer` (may read only), `admin` (anything, the tests'
own client that creates and alters tables and runs queries).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass

import requests

from harness.receiver import ReceivedRequest, Reply
from tests.emulators import Emulator, json_reply
from tests.emulators.google_oauth import GoogleTokenEndpoint

ROLES: dict[str, frozenset[str]] = {
    "dataViewer": frozenset({"bigquery.tables.get", "bigquery.tables.getData"}),
    "dataEditor": frozenset(
        {"bigquery.tables.get", "bigquery.tables.getData", "bigquery.tables.updateData"}
    ),
    "admin": frozenset({"*"}),
}
# The permission each table method needs; any other method needs the admin role.
_PERMISSION = {
    "bigquery.tables.get": "bigquery.tables.get",
    "bigquery.tabledata.insertAll": "bigquery.tables.updateData",
    "bigquery.tabledata.list": "bigquery.tables.getData",
}


@dataclass(frozen=True)
class Method:
    id: str
    http_method: str
    pattern: re.Pattern[str]
    scopes: frozenset[str]
    literal: int  # characters outside variables: the most specific template wins


def _methods(discovery: dict) -> list[Method]:
    """Every method of the discovery document, with a regex over the request path."""
    found: list[Method] = []
    base = "/" + discovery["servicePath"].strip("/") + "/"

    def walk(resource: dict) -> None:
        for method in resource.get("methods", {}).values():
            template = method.get("flatPath") or method["path"]
            parts = re.split(r"(\{\+?[^}]+\})", template)
            regex = "".join("[^/:]+" if part.startswith("{") else re.escape(part) for part in parts)
            found.append(
                Method(
                    method["id"],
                    method["httpMethod"],
                    re.compile("^" + re.escape(base) + regex + "$"),
                    frozenset(method.get("scopes", ())),
                    sum(len(p) for p in parts if not p.startswith("{")),
                )
            )
        for child in resource.get("resources", {}).values():
            walk(child)

    walk(discovery)
    return found


class BigQueryFront(Emulator):
    def __init__(self, tokens: GoogleTokenEndpoint, engine_url: str) -> None:
        super().__init__()
        self.tokens = tokens
        self.engine_url = engine_url
        discovery = requests.get(engine_url + "/discovery/v1/apis/bigquery/v2/rest", timeout=30)
        discovery.raise_for_status()
        self._methods = _methods(discovery.json())
        self._roles: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()
        self._session = requests.Session()

    def assign(self, email: str, role: str) -> None:
        """Grant `role` (a key of ROLES) on the project's datasets to the account."""
        with self._lock:
            self._roles[email] = ROLES[role]

    def _method(self, http_method: str, path: str) -> Method | None:
        matches = [
            m for m in self._methods if m.http_method == http_method and m.pattern.match(path)
        ]
        return max(matches, key=lambda m: m.literal, default=None)

    def _respond(self, request: ReceivedRequest) -> Reply:
        path = request.path.split("?", 1)[0]
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _error(
                401,
                "UNAUTHENTICATED",
                "required",
                "Request is missing required "
                "authentication credential. Expected OAuth 2 access token, login "
                "cookie or other valid authentication credential.",
            )
        grant = self.tokens.grant(token)
        if grant is None:
            return _error(
                401,
                "UNAUTHENTICATED",
                "authError",
                "Request had invalid "
                "authentication credentials. Expected OAuth 2 access token, login "
                "cookie or other valid authentication credential.",
            )
        method = self._method(request.method, path)
        if method is None:
            return self._forward(request)
        if method.scopes and not method.scopes & grant.scopes:
            return _error(
                403,
                "PERMISSION_DENIED",
                "insufficientPermissions",
                "Request had insufficient authentication scopes.",
            )
        with self._lock:
            held = self._roles.get(grant.email, frozenset())
        if method.id == "bigquery.tables.testIamPermissions":
            asked = _json(request.body).get("permissions") or []
            allowed = [p for p in asked if "*" in held or p in held]
            return json_reply(200, {"permissions": allowed} if allowed else {})
        needed = _PERMISSION.get(method.id, "*")
        if "*" not in held and needed not in held:
            table = _table(path)
            return _error(
                403,
                "PERMISSION_DENIED",
                "accessDenied",
                f"Access Denied: Table {table}: Permission {needed} denied on "
                f"table {table} (or it may not exist).",
            )
        return self._forward(request)

    def _forward(self, request: ReceivedRequest) -> Reply:
        headers = {
            name: value
            for name, value in request.headers.items()
            if name in ("content-type", "accept")
        }
        answer = self._session.request(
            request.method,
            self.engine_url + request.path,
            data=request.body,
            headers=headers,
            timeout=60,
        )
        kept = {"Content-Type": answer.headers.get("content-type", "application/json")}
        return Reply(answer.status_code, answer.content, kept)


def _json(body: bytes) -> dict:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _table(path: str) -> str:
    """`project:dataset.table`, as BigQuery names a table in its messages."""
    match = re.search(r"/projects/([^/]+)/datasets/([^/]+)/tables/([^/:]+)", path)
    return f"{match[1]}:{match[2]}.{match[3]}" if match else "?"


def _error(code: int, status: str, reason: str, message: str) -> Reply:
    return json_reply(
        code,
        {
            "error": {
                "code": code,
                "message": message,
                "errors": [{"message": message, "domain": "global", "reason": reason}],
                "status": status,
            }
        },
    )
