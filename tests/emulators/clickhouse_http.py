"""ClickHouse's HTTP interface on loopback, answered by the real ClickHouse engine (chdb).

Run from the warehouse emulators' own virtualenv (`.venv-warehouses`, see the Makefile):

    .venv-warehouses/bin/python -m tests.emulators.clickhouse_http --port P --users FILE

Only the standard library and `chdb` are imported, so it needs nothing of Broadcast's.
What it does as a ClickHouse server does:

| request | answer |
| --- | --- |
| `GET /ping` | `Ok.` |
| `?query=...` (+ POST body appended, as for INSERT data) | the engine's result |
| `param_<name>` | bound `{name:Type}` query parameters |
| other URL parameters (`async_insert`, `insert_deduplication_token`, ...) | settings of an |
|  | INSERT (`INSERT ... SETTINGS ... FORMAT`); ignored for other statements |
| `X-ClickHouse-User` / `X-ClickHouse-Key` (or Basic) | checked against `--users` |
|  | (`{"name": {"password": "...", "readonly": false}}`); unknown: code 516 |
| a read-only user's INSERT | runs with `readonly=1`: the engine answers code 164 (an |
|  | empty one too, as a server checks access before it looks for data) |
| `database` / `X-ClickHouse-Database` | `USE` it first |
| an exception | `X-ClickHouse-Exception-Code`, the text body, and ClickHouse's own status |
|  | for the code (`src/Server/HTTP/exceptionCodeToHTTPStatus.cpp`) |

Queries run one at a time (one chdb session).
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from chdb import session as chdb_session

# exceptionCodeToHTTPStatus.cpp, by exception name (codes are looked up in the engine with
# `errorCodeToName`, so the numbers are the engine's own); every other code answers 500.
_STATUS_BY_NAME = {
    **dict.fromkeys(("REQUIRED_PASSWORD",), 401),
    **dict.fromkeys(
        (
            "UNKNOWN_USER",
            "WRONG_PASSWORD",
            "AUTHENTICATION_FAILED",
            "SET_NON_GRANTED_ROLE",
            "ACCESS_DENIED",
        ),
        403,
    ),
    **dict.fromkeys(
        (
            "BAD_ARGUMENTS",
            "CANNOT_COMPILE_REGEXP",
            "CANNOT_PARSE_TEXT",
            "CANNOT_PARSE_ESCAPE_SEQUENCE",
            "CANNOT_PARSE_QUOTED_STRING",
            "CANNOT_PARSE_DATE",
            "CANNOT_PARSE_DATETIME",
            "CANNOT_PARSE_NUMBER",
            "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
            "CANNOT_PARSE_IPV4",
            "CANNOT_PARSE_IPV6",
            "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
            "CANNOT_PARSE_UUID",
            "DUPLICATE_COLUMN",
            "ILLEGAL_COLUMN",
            "UNKNOWN_ELEMENT_IN_AST",
            "UNKNOWN_TYPE_OF_AST_NODE",
            "THERE_IS_NO_COLUMN",
            "TOO_DEEP_AST",
            "TOO_BIG_AST",
            "UNEXPECTED_AST_STRUCTURE",
            "SYNTAX_ERROR",
            "INCORRECT_DATA",
            "TYPE_MISMATCH",
            "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
        ),
        400,
    ),
    **dict.fromkeys(
        (
            "UNKNOWN_TABLE",
            "UNKNOWN_FUNCTION",
            "UNKNOWN_IDENTIFIER",
            "UNKNOWN_TYPE",
            "UNKNOWN_STORAGE",
            "UNKNOWN_DATABASE",
            "UNKNOWN_SETTING",
            "UNKNOWN_DIRECTION_OF_SORTING",
            "UNKNOWN_AGGREGATE_FUNCTION",
            "UNKNOWN_FORMAT",
            "UNKNOWN_DATABASE_ENGINE",
            "UNKNOWN_TYPE_OF_QUERY",
            "UNKNOWN_ROLE",
        ),
        404,
    ),
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    "SOCKET_TIMEOUT": 503,
    "CANNOT_OPEN_FILE": 503,
    "HTTP_LENGTH_REQUIRED": 411,
    "TIMEOUT_EXCEEDED": 408,
    "CANNOT_SCHEDULE_TASK": 503,
    "UNSUPPORTED_MEDIA_TYPE": 415,
}
_NOT_SETTINGS = {"query", "database", "user", "password", "default_format", "query_id"}
_INSERT_HEADER = re.compile(r"^(\s*INSERT\s+INTO\s+.*?)\s+(FORMAT\s+\w+)", re.I | re.S)
_CODE = re.compile(r"Code: (\d+)\.")
_READ_ONLY_STATEMENT = re.compile(r"^\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXISTS)\b", re.I)


class Engine:
    def __init__(self, path: str, users: dict[str, dict]) -> None:
        self.session = chdb_session.Session(path)
        self.users = users
        self.lock = threading.Lock()
        names = self.session.query(
            "SELECT number, errorCodeToName(number) FROM numbers(2000)", "JSONCompactEachRow"
        )
        self.status = {
            code: _STATUS_BY_NAME[name]
            for code, name in map(json.loads, names.bytes().decode().splitlines())
            if name in _STATUS_BY_NAME
        }

    def run(
        self, query: str, params: dict[str, str], settings: dict[str, str], database: str | None
    ) -> bytes:
        header = _INSERT_HEADER.match(query)
        if header and settings:
            clause = ", ".join(f"{k} = {_literal(v)}" for k, v in settings.items())
            query = f"{header.group(1)} SETTINGS {clause} {header.group(2)}" + query[header.end() :]
        with self.lock:
            if database:
                self.session.query(f"USE `{database.replace('`', '')}`")
            result = self.session.query(query, "TabSeparated", params=params or None)
        return result.bytes()


def _literal(value: str) -> str:
    return value if re.fullmatch(r"-?\d+(\.\d+)?", value) else "'" + value.replace("'", "\\'") + "'"


def _exception_code(text: str) -> int:
    match = _CODE.search(text)
    return int(match.group(1)) if match else 1001


def handler_for(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            if urlsplit(self.path).path == "/ping":
                self._answer(200, b"Ok.\n")
                return
            self._query(b"")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._query(self.rfile.read(length))

        def _query(self, body: bytes) -> None:
            params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
            user, key = self._credentials(params)
            known = engine.users.get(user)
            if known is None or known.get("password", "") != key:
                self._exception(
                    f"Code: 516. DB::Exception: {user}: Authentication failed: password is "
                    "incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)"
                )
                return
            query = params.get("query", "")
            if body:
                query = f"{query}\n{body.decode('utf-8')}" if query else body.decode("utf-8")
            settings = {
                k: v
                for k, v in params.items()
                if k not in _NOT_SETTINGS and not k.startswith("param_")
            }
            if known.get("readonly"):
                if not _READ_ONLY_STATEMENT.match(query) and not _INSERT_HEADER.match(query):
                    self._exception(
                        f"Code: 164. DB::Exception: {user}: Cannot execute query in readonly "
                        "mode. (READONLY)"
                    )
                    return
                settings["readonly"] = "1"
                if _INSERT_HEADER.match(query) and not body.strip():
                    # chdb checks for data before it applies settings (a client-side check
                    # of clickhouse-local); a server checks access first. One empty object
                    # lets the engine reach its own readonly check (it can never insert).
                    query += "\n{}"
            bound = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
            database = params.get("database") or self.headers.get("X-ClickHouse-Database")
            try:
                output = engine.run(query, bound, settings, database)
            except Exception as exc:  # the engine's exception is the server's answer
                text = str(exc)
                text = re.sub(r"^(Code: \d+\. DB::Exception: )(?=Code: \d+\.)", "", text)
                self._exception(text)
                return
            self._answer(200, output, {"X-ClickHouse-Summary": "{}"})

        def _credentials(self, params: dict[str, str]) -> tuple[str, str]:
            auth = self.headers.get("Authorization", "")
            if auth.lower().startswith("basic "):
                user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
                return user or "default", key
            user = self.headers.get("X-ClickHouse-User") or params.get("user") or "default"
            key = self.headers.get("X-ClickHouse-Key") or params.get("password") or ""
            return user, key

        def _exception(self, text: str) -> None:
            code = _exception_code(text)
            self._answer(
                engine.status.get(code, 500),
                (text.strip() + "\n").encode(),
                {"X-ClickHouse-Exception-Code": str(code)},
            )

        def _answer(self, status: int, body: bytes, headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--users", required=True, help="JSON file of users")
    parser.add_argument("--data", required=True, help="chdb data directory")
    args = parser.parse_args()
    users = json.loads(Path(args.users).read_text())
    engine = Engine(args.data, users)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(engine))
    server.serve_forever()


if __name__ == "__main__":
    main()
