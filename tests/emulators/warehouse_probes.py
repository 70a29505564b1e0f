"""Answers to the warehouse destinations' Test Connection probes, for generic receivers.

Tests that run every destination type against one local receiver (the secrets tests) need
each type's Test Connection to pass there; for the warehouses that means answering the
table and permission checks the way the warehouse would for a table made from
`broadcast destination schema`. The real engines are exercised in the warehouses' own
integration tests; this only lets a receiver stand in for them.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

from destinations.warehouse_schema import BIGQUERY, CLICKHOUSE, SNOWFLAKE, Kind, columns
from harness.receiver import ReceivedRequest, Reply


def probe_reply(request: ReceivedRequest) -> Reply | None:
    """The warehouse's answer to a Test Connection request, or None for any other request."""
    query = parse_qs(urlsplit(request.path).query).get("query", [""])[0]
    if b"system.columns" in request.body:
        rows = [
            json.dumps({"name": c.name, "type": _clickhouse_type(c)}) for c in columns(CLICKHOUSE)
        ]
        return Reply(200, "\n".join(rows).encode())
    if query.startswith("INSERT") and not request.body:
        return Reply(
            500,
            b"Code: 108. DB::Exception: No data to insert. (NO_DATA_TO_INSERT)",
            {"X-ClickHouse-Exception-Code": "108"},
        )
    if urlsplit(request.path).path == "/api/v2/statements" and b"INFORMATION_SCHEMA" in (
        request.body
    ):
        rows = [[c.name, _SNOWFLAKE_INFO[c.kind]] for c in columns(SNOWFLAKE)]
        return Reply(200, json.dumps({"data": rows}).encode())
    path = urlsplit(request.path).path
    if path == "/token":
        return Reply(
            200,
            json.dumps(
                {"access_token": "ya29.probe", "expires_in": 3600, "token_type": "Bearer"}
            ).encode(),
        )
    if path.endswith(":testIamPermissions"):
        return Reply(200, request.body)  # every permission asked for
    if "/bigquery/v2/" in path and request.method == "GET":
        fields = [
            {
                "name": c.name.lower(),
                "type": _BIGQUERY_INFO[c.kind],
                "mode": "REPEATED" if c.kind is Kind.TAGS else "NULLABLE",
            }
            for c in columns(BIGQUERY)
        ]
        return Reply(200, json.dumps({"schema": {"fields": fields}}).encode())
    return None


_BIGQUERY_INFO = {
    Kind.ID: "STRING",
    Kind.TEXT: "STRING",
    Kind.CODE: "STRING",
    Kind.TIMESTAMP: "TIMESTAMP",
    Kind.DURATION: "FLOAT",
    Kind.COUNT: "INTEGER",
    Kind.COST: "FLOAT",
    Kind.JSON: "JSON",
    Kind.TAGS: "STRING",
}
_SNOWFLAKE_INFO = {
    Kind.ID: "TEXT",
    Kind.TEXT: "TEXT",
    Kind.CODE: "TEXT",
    Kind.TIMESTAMP: "TIMESTAMP_NTZ",
    Kind.DURATION: "NUMBER",
    Kind.COUNT: "NUMBER",
    Kind.COST: "FLOAT",
    Kind.JSON: "VARIANT",
}


def _clickhouse_type(column) -> str:
    from destinations.warehouse_schema import column_type

    return column_type(CLICKHOUSE, column)
