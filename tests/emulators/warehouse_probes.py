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

from destinations.warehouse_schema import CLICKHOUSE, column_type, columns
from harness.receiver import ReceivedRequest, Reply


def probe_reply(request: ReceivedRequest) -> Reply | None:
    """The warehouse's answer to a Test Connection request, or None for any other request."""
    query = parse_qs(urlsplit(request.path).query).get("query", [""])[0]
    if b"system.columns" in request.body:
        rows = [
            json.dumps({"name": c.name, "type": column_type(CLICKHOUSE, c)})
            for c in columns(CLICKHOUSE)
        ]
        return Reply(200, "\n".join(rows).encode())
    if query.startswith("INSERT") and not request.body:
        return Reply(500, b"Code: 108. DB::Exception: No data to insert. (NO_DATA_TO_INSERT)",
                     {"X-ClickHouse-Exception-Code": "108"})
    return None
