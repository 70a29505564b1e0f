"""Snowflake's SQL API v2 on loopback, the statements run on fakesnow (Snowflake on DuckDB).

Run from `.venv-warehouses` (see the Makefile):

    .venv-warehouses/bin/python -m tests.emulators.snowflake_sql_api --port P --tokens FILE

| request | answer |
| --- | --- |
| `POST /api/v2/statements` `{statement, bindings, database, schema, warehouse}` | the |
|  | statement run with its bindings (`"1": {"type", "value"}` -> qmark parameters) |
| `Authorization: Bearer <PAT>` + `X-Snowflake-Authorization-Token-Type: |  |
| PROGRAMMATIC_ACCESS_TOKEN` | checked against `--tokens` (`{"tok": {"role": "writer"}}`); |
|  | unknown or `"expired": true`: 401 with code 390303 |
| a `"role": "reader"` token's INSERT/MERGE/CREATE/... | 422, code 003001 (insufficient |
|  | privileges), as Snowflake answers |
| `requestId` seen before, with `retry=true` | the first answer again, not run twice |
| success | 200, a ResultSet (`resultSetMetaData`, `data` as strings) |
| a SQL error | 422, a QueryFailureStatus (`code`, `message`, `sqlState`) |

fakesnow does not reproduce every Snowflake refusal (it accepts `PARSE_JSON(?)` inside
`VALUES`, which Snowflake refuses): the writer avoids those forms by construction.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import fakesnow
import snowflake.connector

_WRITES = re.compile(r"^\s*(INSERT|MERGE|UPDATE|DELETE|CREATE|ALTER|DROP|TRUNCATE)\b", re.I)


class Engine:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.patch = fakesnow.patch()
        self.patch.__enter__()
        self.connections: dict[tuple[str, str], object] = {}
        self.answers: dict[str, tuple[int, dict]] = {}

    def run(self, body: dict) -> tuple[int, dict]:
        key = (body.get("database") or "DB", body.get("schema") or "PUBLIC")
        bindings = body.get("bindings") or {}
        params = [bindings[name]["value"] for name in sorted(bindings, key=int)]
        handle = str(uuid.uuid4())
        with self.lock:
            conn = self.connections.get(key)
            if conn is None:
                conn = snowflake.connector.connect(
                    database=key[0], schema=key[1], paramstyle="qmark"
                )
                self.connections[key] = conn
            cursor = conn.cursor()
            try:
                cursor.execute(body["statement"], params or None)
                rows = cursor.fetchall() if cursor.description else []
                names = [column[0] for column in cursor.description or ()]
            except snowflake.connector.errors.Error as exc:
                return 422, {
                    "code": f"{exc.errno or 0:06d}",
                    "message": exc.msg or str(exc),
                    "sqlState": exc.sqlstate or "",
                    "statementHandle": handle,
                }
        return 200, {
            "resultSetMetaData": {"numRows": len(rows), "rowType": [{"name": n} for n in names]},
            "data": [[None if v is None else str(v) for v in row] for row in rows],
            "code": "090001",
            "statementHandle": handle,
            "message": "Statement executed successfully.",
        }


def handler_for(engine: Engine, tokens: dict[str, dict]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args) -> None:
            pass

        def do_GET(self) -> None:
            self._answer(200, {"ok": True})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            if urlsplit(self.path).path != "/api/v2/statements":
                self._answer(404, {"code": "390404", "message": "not found"})
                return
            scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
            grant = tokens.get(token)
            kind = self.headers.get("X-Snowflake-Authorization-Token-Type")
            if (
                scheme != "Bearer"
                or kind != "PROGRAMMATIC_ACCESS_TOKEN"
                or grant is None
                or grant.get("expired")
            ):
                self._answer(
                    401,
                    {
                        "code": "390303",
                        "message": "Invalid OAuth access token. "
                        "[The programmatic access token is invalid or expired.]",
                    },
                )
                return
            if grant.get("role") == "reader" and _WRITES.match(body.get("statement", "")):
                self._answer(
                    422,
                    {
                        "code": "003001",
                        "sqlState": "42501",
                        "statementHandle": str(uuid.uuid4()),
                        "message": "SQL access control error:\nInsufficient privileges to operate "
                        "on table",
                    },
                )
                return
            query = dict(parse_qsl(urlsplit(self.path).query))
            request_id = query.get("requestId")
            if request_id and query.get("retry") == "true" and request_id in engine.answers:
                self._answer(*engine.answers[request_id])
                return
            status, answer = engine.run(body)
            if request_id:
                engine.answers[request_id] = (status, answer)
            self._answer(status, answer)

        def _answer(self, status: int, document: dict) -> None:
            data = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", required=True, help="JSON file of tokens")
    args = parser.parse_args()
    tokens = json.loads(Path(args.tokens).read_text())
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(Engine(), tokens))
    server.serve_forever()


if __name__ == "__main__":
    main()
