"""ClickHouse: one row per observation in the user's table, through the HTTP interface.

| what | wire |
| --- | --- |
| request | `POST {host}/?query=INSERT INTO db.table (columns) FORMAT JSONEachRow` + settings |
| body | one JSON object per row (`warehouse_schema.observation_rows`), newline separated |
| auth | `X-ClickHouse-User` / `X-ClickHouse-Key` (never in the URL) |
| timestamps | `YYYY-MM-DD hh:mm:ss.fff` UTC (DateTime64(3)); JSON columns as JSON text |
| `insert_deduplication_token` | hash of (destination id, the batch's sorted request ids) |
| `async_insert=1`, `wait_for_async_insert=1` | light traffic is buffered server-side into |
|  | few parts, and the answer still comes after the rows are written |
| `async_insert_deduplicate=1` | the token de-duplicates async inserts too |
| `input_format_skip_unknown_fields=0` | a column the table lost is an error, never a |
|  | silently dropped value |

Exactly once: a batch sent again (a retry after a timeout, a batch reclaimed from a dead
worker: both re-send the same request ids) carries the same token, and a MergeTree with
`non_replicated_deduplication_window` (in the DDL `broadcast destination schema` prints)
drops it. A batch formed differently (a replay of some of its traces with others) has a
different token and is not de-duplicated: its rows are written again only if the first
insert had in fact succeeded while its answer was lost.

Errors (`X-ClickHouse-Exception-Code`, which ClickHouse also sends when it answers 200
after the body started): authentication and access codes (516, 192-194, 497, and 164
READONLY, which ClickHouse answers with a 500) are `auth_failed`; a table that does not
fit (a missing column, a wrong type, a missing table) is permanent for the batch and a
configuration error (the destination is marked failing); too many parts, memory, quota
and timeouts are retryable.

Test Connection: the table's columns from `system.columns` (bound query parameters): a
missing table, a missing or mistyped column is named; then an empty INSERT, which
ClickHouse answers with code 108 (NO_DATA_TO_INSERT) when the user may insert and with
an access error when not.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
from marshmallow import ValidationError, fields, validate, validates

from destinations.base import (
    TRANSPORT_HEADERS,
    BatchLimits,
    ConfigSchema,
    ConnectionCheck,
    DeliveryContext,
    DeliveryResult,
    EncodedItem,
    HttpDestination,
    describe_response,
    result_from_transport,
)
from destinations.config_fields import custom_headers_field, url_field
from destinations.ids import derived_hex
from destinations.json_body import json_text
from destinations.outcomes import Outcome
from destinations.registry import register
from destinations.trace import Trace
from destinations.transport import HttpRequest, TransportResult
from destinations.warehouse_schema import (
    CLICKHOUSE,
    DEFAULT_TABLE,
    Column,
    Kind,
    check_name,
    clickhouse_table,
    column_type,
    columns,
    observation_rows,
    utc_text,
)

MAX_ROWS_PER_INSERT = 1000
MAX_INSERT_BYTES = 16 * 1024 * 1024
RESERVED_HEADERS = TRANSPORT_HEADERS | {"authorization", "x-clickhouse-user", "x-clickhouse-key"}
# Settings every insert carries (see the module table).
INSERT_SETTINGS = {
    "async_insert": "1",
    "wait_for_async_insert": "1",
    "async_insert_deduplicate": "1",
    "input_format_skip_unknown_fields": "0",
}

NO_DATA_TO_INSERT = 108
AUTH_CODES = frozenset({164, 192, 193, 194, 497, 516})
# The table does not fit the rows: no such column, unknown table or database, a value the
# column's type cannot hold, NULL into a non-Nullable column.
SCHEMA_CODES = frozenset({6, 8, 10, 16, 26, 27, 38, 41, 47, 53, 60, 70, 72, 81, 117, 349})
RETRYABLE_CODES = frozenset({159, 201, 202, 209, 210, 236, 241, 242, 252, 319, 394, 425, 439, 999})
_EXCEPTION_NAME = re.compile(r"\(([A-Z_]+)\)\s*(?:\(version [^)]*\))?\s*$")


class ClickHouseConfig(ConfigSchema):
    host = url_field(required=True)
    database = fields.String(load_default="default", validate=validate.Length(min=1, max=255))
    table = fields.String(load_default=DEFAULT_TABLE, validate=validate.Length(min=1, max=255))
    username = fields.String(load_default="default", validate=validate.Length(min=1, max=255))
    password = fields.String(
        load_default="", validate=validate.Length(max=1024), metadata={"secret": True}
    )
    headers = custom_headers_field(RESERVED_HEADERS)

    @validates("host")
    def _host_without_query(self, value: str, **_: Any) -> None:
        if urlsplit(value).query:
            raise ValidationError(
                "Must not carry a query string (credentials go in username and password)."
            )

    @validates("database")
    def _database_name(self, value: str, **_: Any) -> None:
        _checked(value, "database")

    @validates("table")
    def _table_name(self, value: str, **_: Any) -> None:
        _checked(value, "table")


def _checked(value: str, field: str) -> None:
    try:
        check_name(field, value)
    except ValueError as exc:
        raise ValidationError(str(exc).split(": ", 1)[1]) from None


def encode_value(column: Column, value: Any) -> Any:
    """One row value as JSONEachRow wants it for the column's type."""
    if value is None:
        return None
    if column.kind is Kind.TIMESTAMP:
        return utc_text(value)
    if column.kind is Kind.JSON:
        return json_text(value)
    return value


def row_lines(trace: Trace, destination_id: str) -> bytes:
    """Pure: this trace's rows as JSONEachRow lines."""
    table_columns = columns(CLICKHOUSE)
    lines = []
    for row in observation_rows(trace, destination_id):
        values = {column.name: encode_value(column, row[column.name]) for column in table_columns}
        lines.append(orjson.dumps(values) + b"\n")
    return b"".join(lines)


def deduplication_token(destination_id: str, request_ids: Sequence[str]) -> str:
    """The same for the same batch, whatever order its traces came in."""
    return derived_hex("clickhouse-insert", destination_id, *sorted(request_ids), nbytes=16)


@register
class ClickHouseDestination(HttpDestination):
    slug = "clickhouse"
    display_name = "ClickHouse"
    config_schema = ClickHouseConfig
    batch_limits = BatchLimits(max_items=MAX_ROWS_PER_INSERT // 2, max_bytes=MAX_INSERT_BYTES)

    # Requests

    def _headers(self) -> dict[str, str]:
        headers = dict(self.config.get("headers") or {})
        headers["X-ClickHouse-User"] = self.config.get("username") or "default"
        if self.config.get("password"):
            headers["X-ClickHouse-Key"] = self.config["password"]
        return headers

    def _url(self, params: Mapping[str, str]) -> str:
        host: str = self.config["host"]
        return host.rstrip("/") + "/?" + urlencode(params)

    def _table(self) -> str:
        return clickhouse_table(self.config["table"], self.config["database"])

    def _insert_query(self) -> str:
        names = ", ".join(f"`{column.name}`" for column in columns(CLICKHOUSE))
        return f"INSERT INTO {self._table()} ({names}) FORMAT JSONEachRow"

    def build_request(self, trace: Trace, context: DeliveryContext) -> HttpRequest:
        return self.batch_request([self.encode_item(trace, context).payload], context)

    def encode_item(self, trace: Trace, context: DeliveryContext) -> EncodedItem:
        lines = row_lines(trace, context.destination_id)
        return EncodedItem((trace.request_id, lines), len(lines))

    def batch_request(self, payloads: Sequence[Any], context: DeliveryContext) -> HttpRequest:
        request_ids = [request_id for request_id, _ in payloads]
        params = {
            "query": self._insert_query(),
            "insert_deduplication_token": deduplication_token(context.destination_id, request_ids),
            **INSERT_SETTINGS,
        }
        return HttpRequest(
            "POST",
            self._url(params),
            {**self._headers(), "Content-Type": "application/x-ndjson"},
            b"".join(lines for _, lines in payloads),
        )

    # Answers

    def interpret(self, result: TransportResult) -> DeliveryResult:
        code = exception_code(result)
        if code is None:
            return result_from_transport(result)
        error = describe_exception(result, code)
        if code in AUTH_CODES:
            return result_from_transport(result, Outcome.AUTH_FAILED, error)
        if code in RETRYABLE_CODES:
            return result_from_transport(result, Outcome.RETRYABLE, error)
        if code in SCHEMA_CODES:
            answer = result_from_transport(result, Outcome.PERMANENT, error)
            return dataclasses.replace(answer, config_error=True)
        return result_from_transport(result, error=error)

    # Test Connection

    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        found = self._table_columns()
        if isinstance(found, ConnectionCheck):
            return found
        table = f"{self.config['database']}.{self.config['table']}"
        problem = table_problem(table, found)
        if problem:
            return ConnectionCheck(Outcome.PERMANENT, problem)
        return self._may_insert(table)

    def _table_columns(self) -> dict[str, str] | ConnectionCheck:
        query = (
            "SELECT name, type FROM system.columns "
            "WHERE database = {db:String} AND table = {tbl:String} FORMAT JSONEachRow"
        )
        params = {"param_db": self.config["database"], "param_tbl": self.config["table"]}
        request = HttpRequest(
            "POST", self._url(params), self._headers(), query.encode(), response_limit=1 << 20
        )
        result = self.transport.send(request)
        failed = self._check_failure(result)
        if failed is not None:
            return failed
        found: dict[str, str] = {}
        try:
            for line in result.body.splitlines():
                if line.strip():
                    item = orjson.loads(line)
                    found[str(item["name"])] = str(item["type"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return ConnectionCheck(
                Outcome.PERMANENT,
                f"not a ClickHouse answer to a system.columns query ({describe_response(result)})",
                result.status_code,
            )
        return found

    def _may_insert(self, table: str) -> ConnectionCheck:
        request = HttpRequest(
            "POST", self._url({"query": self._insert_query()}), self._headers(), b""
        )
        result = self.transport.send(request)
        if exception_code(result) == NO_DATA_TO_INSERT:
            return ConnectionCheck(
                Outcome.DELIVERED, f"table {table} fits and the user may insert", 200
            )
        failed = self._check_failure(result)
        if failed is not None:
            if failed.outcome is Outcome.AUTH_FAILED:
                return ConnectionCheck(
                    Outcome.AUTH_FAILED,
                    f"the user may not insert into {table}: {failed.message}",
                    failed.status_code,
                )
            return failed
        return ConnectionCheck(
            Outcome.PERMANENT,
            f"an empty INSERT into {table} did not answer NO_DATA_TO_INSERT "
            f"({describe_response(result)})",
            result.status_code,
        )

    def _check_failure(self, result: TransportResult) -> ConnectionCheck | None:
        """None when the request got a clean 2xx; else what Test Connection reports."""
        if result.status_code is None:
            prefix = "refused" if result.refused else "unreachable"
            outcome = Outcome.PERMANENT if result.refused else Outcome.RETRYABLE
            return ConnectionCheck(outcome, f"{prefix}: {result.error}")
        answer = self.interpret(result)
        if answer.outcome is Outcome.DELIVERED:
            return None
        message = answer.error or describe_response(result)
        if answer.outcome is Outcome.AUTH_FAILED:
            message = f"credentials rejected ({message})"
        return ConnectionCheck(answer.outcome, message, result.status_code)


def exception_code(result: TransportResult) -> int | None:
    """ClickHouse's exception code, from its header (also sent with a late 200)."""
    raw = result.headers.get("x-clickhouse-exception-code")
    if raw is None:
        match = re.match(rb"\s*Code: (\d+)\.", result.body or b"")
        if match is None or result.ok:
            return None
        raw = match.group(1).decode()
    try:
        return int(raw)
    except ValueError:
        return None


def describe_exception(result: TransportResult, code: int) -> str:
    """`ClickHouse code 16 (NO_SUCH_COLUMN_IN_TABLE): No such column ...` (first 300 chars)."""
    text = result.body.decode("utf-8", "replace").strip()
    match = _EXCEPTION_NAME.search(text)
    name = f" ({match.group(1)})" if match else ""
    text = re.sub(r"^(Code: \d+\. DB::Exception: )+", "", text)
    return f"ClickHouse code {code}{name}: {text[:300]}"


# Columns a table may have for each kind of ours (ClickHouse type families; Nullable and
# LowCardinality wrappers are looked through).
_COMPATIBLE = {
    Kind.ID: ("String", "FixedString"),
    Kind.TEXT: ("String",),
    Kind.CODE: ("String", "FixedString", "Enum8", "Enum16"),
    Kind.JSON: ("String", "JSON", "Object"),
    Kind.TIMESTAMP: ("DateTime64", "DateTime"),
    Kind.DURATION: ("Float64", "Float32", "Decimal"),
    Kind.COST: ("Float64", "Decimal"),
    Kind.COUNT: ("Int", "UInt"),
}


def table_problem(table: str, found: Mapping[str, str]) -> str | None:
    """What makes the table unfit for the rows, naming the column; None when it fits."""
    if not found:
        return (
            f"table {table} does not exist (create it with "
            "`broadcast destination schema --type clickhouse`)"
        )
    for column in columns(CLICKHOUSE):
        actual = found.get(column.name)
        if actual is None:
            return f"table {table} has no column {column.name} (expected {_expected(column)})"
        family = re.sub(r"^(Nullable|LowCardinality)\(|\)$", "", actual)
        family = re.sub(r"^(Nullable|LowCardinality)\(|\)$", "", family)
        if not family.startswith(_COMPATIBLE[column.kind]):
            return f"column {column.name} of {table} is {actual}, expected {_expected(column)}"
    # A column that is not Nullable still takes our NULLs: JSONEachRow writes the type's
    # default for them (`input_format_null_as_default`, on by default).
    return None


def _expected(column: Column) -> str:
    return column_type(CLICKHOUSE, column)
