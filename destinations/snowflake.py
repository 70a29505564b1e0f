"""Snowflake: one row per observation, merged through the SQL API v2 with bound values.

| what | wire |
| --- | --- |
| request | `POST {endpoint}/api/v2/statements?requestId=<uuid>&retry=true` |
| endpoint | `https://{account}.snowflakecomputing.com` unless `endpoint` is set |
| auth | `Authorization: Bearer <programmatic access token>`, |
|  | `X-Snowflake-Authorization-Token-Type: PROGRAMMATIC_ACCESS_TOKEN` |
| body | `{statement, bindings, database, schema, warehouse, timeout}` |
| statement | one `MERGE` per batch: `USING (SELECT ... FROM (VALUES (?, ...), ...) AS v(...))` |
|  | `ON (TRACE_ID, SPAN_ID) WHEN NOT MATCHED THEN INSERT` |
| values | every value a `TEXT` binding; the SELECT casts (`TO_TIMESTAMP_NTZ`, `::FLOAT`, |
|  | `PARSE_JSON` for VARIANT): Snowflake refuses `PARSE_JSON(?)` inside `VALUES` |
| `requestId` | a UUID derived from (destination id, the batch's sorted request ids) |

No trace data is ever put into the SQL text: names come from the checked config, values
are bindings.

Exactly once: the MERGE inserts only (TRACE_ID, SPAN_ID) pairs the table does not hold,
so a retried, reclaimed, replayed or re-formed batch adds nothing twice (two MERGEs of
the same rows at the same moment are serialised by Snowflake's table lock); a resubmitted
`requestId` with `retry=true` is also answered from the first execution.

Errors: 401 (an expired or revoked token) is `auth_failed`; 429, 503 and a statement still
running (202) or timed out (408) are retryable, as is a 422 that says the warehouse is
suspended or a resource monitor's quota is used up; a 422 about the table (an invalid
identifier, an object that does not exist, a value that does not fit) is permanent and a
configuration error (the destination is marked failing); a 422 for missing privileges is
`auth_failed`.

Test Connection: the table's columns from `INFORMATION_SCHEMA.COLUMNS` (bound), a missing
table or a missing or mistyped column named; then an INSERT that selects no row, which
Snowflake compiles (and refuses without the INSERT privilege) but which writes nothing.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import orjson
from marshmallow import ValidationError, fields, validate, validates

from destinations.base import (
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
from destinations.config_fields import secret_field, url_field
from destinations.ids import derived_uuid
from destinations.json_body import compact_json, json_text
from destinations.outcomes import Outcome
from destinations.registry import register
from destinations.trace import Trace
from destinations.transport import HttpRequest, TransportResult, join_url
from destinations.warehouse_schema import (
    DEFAULT_TABLE,
    SNOWFLAKE,
    Column,
    Kind,
    check_name,
    column_type,
    columns,
    observation_rows,
    snowflake_table,
    utc_text,
)

ACCOUNT = re.compile(r"^[a-zA-Z0-9_]+(?:[.-][a-zA-Z0-9_]+)*$")
# One statement per batch; 200 traces are at most 400 rows x 29 bindings.
MAX_TRACES_PER_STATEMENT = 200
MAX_STATEMENT_BYTES = 8 * 1024 * 1024
STATEMENT_TIMEOUT_SECONDS = 60
USER_AGENT = "broadcast/1.0"
_RETRYABLE_MESSAGE = re.compile(r"suspend|resource monitor|quota|is being resumed|overloaded", re.I)
_PRIVILEGE_CODES = frozenset({"003001", "003003"})


class SnowflakeConfig(ConfigSchema):
    account = fields.String(
        required=True, validate=[validate.Length(min=1, max=255), validate.Regexp(ACCOUNT)]
    )
    token = secret_field()
    database = fields.String(load_default="SNOWFLAKE_LEARNING_DB")
    schema = fields.String(load_default="PUBLIC")
    table = fields.String(load_default=DEFAULT_TABLE)
    warehouse = fields.String(load_default="COMPUTE_WH")
    # Where the SQL API is, for private links and tests; default from the account.
    endpoint = url_field(load_default=None, allow_none=True)

    @validates("database")
    def _database(self, value: str, **_: Any) -> None:
        _checked("database", value)

    @validates("schema")
    def _schema(self, value: str, **_: Any) -> None:
        _checked("schema", value)

    @validates("table")
    def _table(self, value: str, **_: Any) -> None:
        _checked("table", value)

    @validates("warehouse")
    def _warehouse(self, value: str, **_: Any) -> None:
        _checked("warehouse", value)


def _checked(field: str, value: str) -> None:
    try:
        check_name(field, value)
    except ValueError as exc:
        raise ValidationError(str(exc).split(": ", 1)[1]) from None


def _cast(column: Column, placeholder: str) -> str:
    """The SELECT expression turning a TEXT binding into the column's type."""
    if column.kind is Kind.TIMESTAMP:
        return f"TO_TIMESTAMP_NTZ({placeholder})"
    if column.kind is Kind.JSON:
        return f"PARSE_JSON({placeholder})"
    if column.kind in (Kind.DURATION, Kind.COUNT, Kind.COST):
        return f"{placeholder}::{column_type(SNOWFLAKE, column).replace(' ', '')}"
    return placeholder


def merge_statement(table: str, row_count: int) -> str:
    """Pure: the MERGE of `row_count` rows into `table` (a checked, quoted name)."""
    table_columns = columns(SNOWFLAKE)
    names = [f'"{column.name}"' for column in table_columns]
    row = "(" + ", ".join("?" for _ in table_columns) + ")"
    selected = ", ".join(
        f"{_cast(column, f'v.{name}')} AS {name}"
        for column, name in zip(table_columns, names, strict=True)
    )
    return (
        f"MERGE INTO {table} AS t USING (SELECT {selected} FROM (VALUES "
        + ", ".join([row] * row_count)
        + f") AS v ({', '.join(names)})) AS s "
        + 'ON t."TRACE_ID" = s."TRACE_ID" AND t."SPAN_ID" = s."SPAN_ID" '
        + f"WHEN NOT MATCHED THEN INSERT ({', '.join(names)}) "
        + f"VALUES ({', '.join(f's.{name}' for name in names)})"
    )


def binding_values(trace: Trace, destination_id: str) -> list[list[str | None]]:
    """Pure: this trace's rows, each a list of TEXT binding values in column order."""
    table_columns = columns(SNOWFLAKE)
    return [
        [_text(column, row[column.name]) for column in table_columns]
        for row in observation_rows(trace, destination_id)
    ]


def _text(column: Column, value: Any) -> str | None:
    if value is None:
        return None
    if column.kind is Kind.TIMESTAMP:
        return utc_text(value, digits=6)
    if column.kind is Kind.JSON:
        return json_text(value)
    return str(value)


@register
class SnowflakeDestination(HttpDestination):
    slug = "snowflake"
    display_name = "Snowflake"
    config_schema = SnowflakeConfig
    batch_limits = BatchLimits(max_items=MAX_TRACES_PER_STATEMENT, max_bytes=MAX_STATEMENT_BYTES)

    def _url(self, request_id: str) -> str:
        base = self.config.get("endpoint") or (
            f"https://{self.config['account']}.snowflakecomputing.com"
        )
        query = urlencode({"requestId": request_id, "retry": "true"})
        return join_url(base, f"/api/v2/statements?{query}")

    def _table(self) -> str:
        return snowflake_table(self.config["table"], self.config["database"], self.config["schema"])

    def _request(
        self, statement: str, values: Sequence[str | None], request_id: str
    ) -> HttpRequest:
        body = {
            "statement": statement,
            "timeout": STATEMENT_TIMEOUT_SECONDS,
            "database": self.config["database"],
            "schema": self.config["schema"],
            "warehouse": self.config["warehouse"],
            "bindings": {
                str(index): {"type": "TEXT", "value": value}
                for index, value in enumerate(values, start=1)
            },
        }
        headers = {
            "Authorization": f"Bearer {self.config['token']}",
            "X-Snowflake-Authorization-Token-Type": "PROGRAMMATIC_ACCESS_TOKEN",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        return HttpRequest(
            "POST", self._url(request_id), headers, compact_json(body), response_limit=1 << 20
        )

    def build_request(self, trace: Trace, context: DeliveryContext) -> HttpRequest:
        return self.batch_request([self.encode_item(trace, context).payload], context)

    def encode_item(self, trace: Trace, context: DeliveryContext) -> EncodedItem:
        rows = binding_values(trace, context.destination_id)
        size = sum(len(value or "") + 16 for row in rows for value in row)
        return EncodedItem((trace.request_id, rows), size)

    def batch_request(self, payloads: Sequence[Any], context: DeliveryContext) -> HttpRequest:
        request_ids = sorted(request_id for request_id, _ in payloads)
        rows = [row for _, trace_rows in payloads for row in trace_rows]
        values = [value for row in rows for value in row]
        request_id = derived_uuid("snowflake-merge", context.destination_id, *request_ids)
        return self._request(merge_statement(self._table(), len(rows)), values, request_id)

    def interpret(self, result: TransportResult) -> DeliveryResult:
        if result.status_code == 202:
            return result_from_transport(
                result, Outcome.RETRYABLE, "Snowflake: the statement is still running"
            )
        if result.status_code != 422:
            return result_from_transport(result)
        failure = _failure(result)
        code, message = failure.get("code", ""), failure.get("message", "")
        error = f"Snowflake {code}: {message}"[:400]
        if code in _PRIVILEGE_CODES:
            return result_from_transport(result, Outcome.AUTH_FAILED, error)
        if _RETRYABLE_MESSAGE.search(message):
            return result_from_transport(result, Outcome.RETRYABLE, error)
        answer = result_from_transport(result, Outcome.PERMANENT, error)
        return dataclasses.replace(answer, config_error=True)

    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        table = f"{self.config['database']}.{self.config['schema']}.{self.config['table']}"
        statement = (
            f'SELECT column_name, data_type FROM "{self.config["database"]}".'
            "INFORMATION_SCHEMA.COLUMNS WHERE table_schema = ? AND table_name = ?"
        )
        moment = context.now.isoformat()
        request_id = derived_uuid("snowflake-check", context.destination_id, moment)
        result = self.transport.send(
            self._request(statement, [self.config["schema"], self.config["table"]], request_id)
        )
        failed = self._failure_check(result)
        if failed is not None:
            return failed
        try:
            found = {str(name): str(kind) for name, kind in orjson.loads(result.body)["data"]}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return ConnectionCheck(
                Outcome.PERMANENT, f"not a SQL API answer ({describe_response(result)})"
            )
        problem = table_problem(table, found)
        if problem:
            return ConnectionCheck(Outcome.PERMANENT, problem)
        probe = f'INSERT INTO {self._table()} ("TRACE_ID") SELECT ? WHERE 1 = 0'
        request_id = derived_uuid("snowflake-probe", context.destination_id, moment)
        result = self.transport.send(self._request(probe, ["connection-test"], request_id))
        failed = self._failure_check(result)
        if failed is not None:
            if failed.outcome is Outcome.AUTH_FAILED:
                return ConnectionCheck(
                    Outcome.AUTH_FAILED, f"may not insert into {table}: {failed.message}"
                )
            return failed
        return ConnectionCheck(Outcome.DELIVERED, f"table {table} fits and may be written", 200)

    def _failure_check(self, result: TransportResult) -> ConnectionCheck | None:
        if result.status_code is None:
            prefix = "refused" if result.refused else "unreachable"
            outcome = Outcome.PERMANENT if result.refused else Outcome.RETRYABLE
            return ConnectionCheck(outcome, f"{prefix}: {result.error}")
        answer = self.interpret(result)
        if answer.outcome is Outcome.DELIVERED:
            return None
        message = answer.error or describe_response(result)
        if answer.outcome is Outcome.AUTH_FAILED and result.status_code == 401:
            message = f"token rejected ({message})"
        return ConnectionCheck(answer.outcome, message, result.status_code)


def _failure(result: TransportResult) -> Mapping[str, str]:
    try:
        document = orjson.loads(result.body)
    except orjson.JSONDecodeError:
        return {"message": result.body.decode("utf-8", "replace")[:300]}
    return document if isinstance(document, dict) else {}


# INFORMATION_SCHEMA data types each of our kinds accepts.
_COMPATIBLE = {
    Kind.ID: ("TEXT",),
    Kind.TEXT: ("TEXT",),
    Kind.CODE: ("TEXT",),
    Kind.TIMESTAMP: ("TIMESTAMP_NTZ", "TIMESTAMP_LTZ", "TIMESTAMP_TZ"),
    Kind.DURATION: ("NUMBER", "FLOAT"),
    Kind.COUNT: ("NUMBER",),
    Kind.COST: ("FLOAT", "NUMBER"),
    Kind.JSON: ("VARIANT", "OBJECT"),
}


def table_problem(table: str, found: Mapping[str, str]) -> str | None:
    """What makes the table unfit for the rows, naming the column; None when it fits."""
    if not found:
        return (
            f"table {table} does not exist or is not visible to this token (create it with "
            "`broadcast destination schema --type snowflake`)"
        )
    for column in columns(SNOWFLAKE):
        actual = found.get(column.name)
        expected = column_type(SNOWFLAKE, column)
        if actual is None:
            return f"table {table} has no column {column.name} (expected {expected})"
        if actual.upper() not in _COMPATIBLE[column.kind]:
            return f"column {column.name} of {table} is {actual}, expected {expected}"
    return None
