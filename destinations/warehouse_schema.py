"""The one definition of the warehouse table: columns, their DDL per warehouse, the rows.

`broadcast destination schema --type T` prints `create_table(T, ...)`, and the ClickHouse,
Snowflake and BigQuery writers build their rows from `observation_rows` / `request_row`
keyed by the same `COLUMNS`, so the table a user creates and the rows Broadcast writes
cannot drift apart. Names, order and types follow OpenRouter's DDL (upper case for
ClickHouse and Snowflake, lower case for BigQuery).

| column | value (per observation row) |
| --- | --- |
| TRACE_ID | the caller's `trace_id`, else the request id |
| SPAN_ID | derived from (request id, destination id, `span` / `generation`) |
| PARENT_SPAN_ID | the span row's id for the generation when `span_name` is set, else the |
|  | caller's `parent_span_id` |
| USER_ID / SESSION_ID | `user` / `session_id` |
| ORGANIZATION_ID / ENTITY_ID | the organization (when the owner is one) / the owner's id |
| API_KEY_NAME | the key's name, else its id |
| TIMESTAMP, START_TIME / END_TIME, DURATION_MS | request start, start / end, end - start |
| MODEL, PROVIDER_NAME, PROVIDER_SLUG (BigQuery) | model slug, provider name, provider slug |
| STATUS / LEVEL | `ok` or `error` / `DEFAULT` or `ERROR` |
| FINISH_REASON | the first finish reason |
| SPAN_TYPE (ClickHouse, Snowflake) | `SPAN` or `GENERATION` |
| PROMPT_, COMPLETION_, TOTAL_, CACHED_, REASONING_TOKENS | usage (0 on span rows) |
| TOTAL_COST | USD, full precision (null on span rows) |
| ATTRIBUTES | the OpenTelemetry GenAI attributes (`gen_ai.request.model`, ...), content left out |
| INPUT | `{"messages": [...]}` (chat format); null in privacy mode and on span rows |
| OUTPUT | `{"choices": [{"index", "message", "finish_reason"}]}`; null likewise |
| METADATA | every `trace` key, the reserved ones (`trace_name`, `span_name`, ...) included |
| MODEL_PARAMETERS | the request's sampling parameters |
| RESOURCE_ATTRIBUTES, TAGS (BigQuery) | `{"service.name": "broadcast"}`, `trace.tags` (strings) |

ClickHouse and Snowflake get one row per observation (the span, only when `span_name` is
given, then the generation); BigQuery one row per request (the generation's values).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from destinations.chat_format import chat_message
from destinations.ids import derived_hex
from destinations.otlp.genai import (
    INPUT_MESSAGES,
    OUTPUT_MESSAGES,
    common_attributes,
    generation_attributes,
)
from destinations.otlp.spans import SERVICE_NAME
from destinations.trace import Trace

CLICKHOUSE, SNOWFLAKE, BIGQUERY = "clickhouse", "snowflake", "bigquery"
WAREHOUSES = (CLICKHOUSE, SNOWFLAKE, BIGQUERY)
DEFAULT_TABLE = "OPENROUTER_TRACES"
DEFAULT_BIGQUERY_TABLE = "openrouter_traces"
# Blocks (inserts) a plain MergeTree remembers for `insert_deduplication_token`: without
# the setting the token is ignored and a retried insert doubles its rows.
CLICKHOUSE_DEDUPLICATION_WINDOW = 10_000

# A row: column name (upper case) -> Python value (str, int, float, datetime, a JSON-able
# dict or list, None). Each writer encodes it for its wire.
Row = dict[str, Any]


class Kind(StrEnum):
    ID = "id"  # identifiers and names, at most 256 characters (the event's limits)
    TEXT = "text"  # free text of any length
    CODE = "code"  # a short enumeration (STATUS, LEVEL, SPAN_TYPE)
    TIMESTAMP = "timestamp"
    DURATION = "duration"  # milliseconds
    COUNT = "count"  # tokens
    COST = "cost"  # USD, sub-cent precision
    JSON = "json"
    TAGS = "tags"  # an array of strings


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    required: bool
    comment: str
    only: str | None = None  # the one warehouse that has this column, if only one


COLUMNS: tuple[Column, ...] = (
    Column("TRACE_ID", Kind.ID, True, "Unique trace identifier"),
    Column("SPAN_ID", Kind.ID, True, "Unique span/observation identifier"),
    Column("PARENT_SPAN_ID", Kind.ID, False, "Parent span ID for nested observations"),
    Column("USER_ID", Kind.ID, False, "User who initiated the trace"),
    Column("SESSION_ID", Kind.ID, False, "Session identifier"),
    Column("ORGANIZATION_ID", Kind.ID, False, "Organization identifier"),
    Column("ENTITY_ID", Kind.ID, True, "Entity that owns this trace"),
    Column("API_KEY_NAME", Kind.ID, False, "User-defined name of the API key used"),
    Column("TIMESTAMP", Kind.TIMESTAMP, True, "Trace creation timestamp"),
    Column("START_TIME", Kind.TIMESTAMP, True, "Observation start time"),
    Column("END_TIME", Kind.TIMESTAMP, False, "Observation end time"),
    Column("DURATION_MS", Kind.DURATION, False, "Duration in milliseconds"),
    Column("MODEL", Kind.ID, False, "Model name (e.g., openai/gpt-4o)"),
    Column("PROVIDER_NAME", Kind.ID, False, "Provider name"),
    Column("PROVIDER_SLUG", Kind.ID, False, "Provider slug", only=BIGQUERY),
    Column("STATUS", Kind.CODE, True, "ok or error"),
    Column("LEVEL", Kind.CODE, True, "DEFAULT or ERROR"),
    Column("FINISH_REASON", Kind.TEXT, False, "Why the model stopped"),
    Column("SPAN_TYPE", Kind.CODE, True, "GENERATION or SPAN"),
    Column("PROMPT_TOKENS", Kind.COUNT, True, "Input tokens"),
    Column("COMPLETION_TOKENS", Kind.COUNT, True, "Output tokens"),
    Column("TOTAL_TOKENS", Kind.COUNT, True, "Total tokens"),
    Column("CACHED_TOKENS", Kind.COUNT, True, "Cached input tokens"),
    Column("REASONING_TOKENS", Kind.COUNT, True, "Reasoning tokens"),
    Column("TOTAL_COST", Kind.COST, False, "Total cost in USD"),
    Column("ATTRIBUTES", Kind.JSON, False, "OpenTelemetry attributes"),
    Column("INPUT", Kind.JSON, False, "Input messages"),
    Column("OUTPUT", Kind.JSON, False, "Output"),
    Column("METADATA", Kind.JSON, False, "Custom metadata (the trace object)"),
    Column("MODEL_PARAMETERS", Kind.JSON, False, "Model parameters"),
    Column("RESOURCE_ATTRIBUTES", Kind.JSON, False, "Resource attributes", only=BIGQUERY),
    Column("TAGS", Kind.TAGS, False, "Tags", only=BIGQUERY),
)
# BigQuery's row is the request: it has no span rows to tell apart.
_NOT_IN = {BIGQUERY: frozenset({"SPAN_TYPE"})}


def columns(warehouse: str) -> tuple[Column, ...]:
    """The columns the warehouse's table has, in DDL order."""
    skipped = _NOT_IN.get(warehouse, frozenset())
    return tuple(
        column
        for column in COLUMNS
        if column.only in (None, warehouse) and column.name not in skipped
    )


def column_name(warehouse: str, column: Column) -> str:
    """The column's name as the warehouse spells it (BigQuery: lower case)."""
    return column.name.lower() if warehouse == BIGQUERY else column.name


_CLICKHOUSE_TYPES = {
    Kind.ID: "String",
    Kind.TEXT: "String",
    Kind.CODE: "String",
    Kind.TIMESTAMP: "DateTime64(3)",
    Kind.DURATION: "Float64",
    Kind.COUNT: "Int64",
    Kind.COST: "Float64",
    Kind.JSON: "String",
}
_SNOWFLAKE_TYPES = {
    Kind.ID: "VARCHAR(256)",
    Kind.TEXT: "VARCHAR",
    Kind.CODE: "VARCHAR(32)",
    Kind.TIMESTAMP: "TIMESTAMP_NTZ",
    Kind.DURATION: "NUMBER(18, 3)",
    Kind.COUNT: "NUMBER(38, 0)",
    Kind.COST: "FLOAT",
    Kind.JSON: "VARIANT",
}
_BIGQUERY_TYPES = {
    Kind.ID: "STRING",
    Kind.TEXT: "STRING",
    Kind.CODE: "STRING",
    Kind.TIMESTAMP: "TIMESTAMP",
    Kind.DURATION: "FLOAT64",
    Kind.COUNT: "INT64",
    Kind.COST: "FLOAT64",
    Kind.JSON: "JSON",
    Kind.TAGS: "ARRAY<STRING>",
}


def column_type(warehouse: str, column: Column) -> str:
    """The column's type in the warehouse's DDL (nullability included for ClickHouse)."""
    if warehouse == CLICKHOUSE:
        base = _CLICKHOUSE_TYPES[column.kind]
        return base if column.required else f"Nullable({base})"
    if warehouse == SNOWFLAKE:
        return _SNOWFLAKE_TYPES[column.kind]
    return _BIGQUERY_TYPES[column.kind]


# Names a user may give: letters, digits, underscores (and `-` / `.` where the warehouse
# allows them unquoted in a project id). Checked before any name is put into SQL.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_BIGQUERY_TABLE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,1023}$")
_BIGQUERY_DATASET = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
_BIGQUERY_PROJECT = re.compile(r"^(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")


class InvalidName(ValueError):
    """A table, database, schema, dataset or project name that is not allowed (names it)."""


def check_name(field: str, value: str, pattern: re.Pattern[str] = _NAME) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise InvalidName(
            f"{field}: {value!r} is not a valid name (letters, digits and underscores, "
            "starting with a letter or underscore)"
        )
    return value


def check_bigquery_name(field: str, value: str) -> str:
    pattern = {
        "project_id": _BIGQUERY_PROJECT,
        "dataset": _BIGQUERY_DATASET,
    }.get(field, _BIGQUERY_TABLE)
    if not isinstance(value, str) or not pattern.match(value):
        raise InvalidName(f"{field}: {value!r} is not a valid BigQuery {field.replace('_', ' ')}")
    return value


def clickhouse_table(table: str, database: str | None = None) -> str:
    """`database`.`table` (or just `table`), each checked."""
    parts = ([check_name("database", database)] if database else []) + [check_name("table", table)]
    return ".".join(f"`{part}`" for part in parts)


def snowflake_table(table: str, database: str | None = None, schema: str | None = None) -> str:
    """ "DATABASE"."SCHEMA"."TABLE" (as much as is given), each checked and quoted."""
    parts = [check_name("database", database)] if database else []
    if schema:
        parts.append(check_name("schema", schema))
    parts.append(check_name("table", table))
    return ".".join(f'"{part}"' for part in parts)


def bigquery_table(table: str, dataset: str | None = None, project: str | None = None) -> str:
    """`project.dataset.table` (as much as is given), each checked."""
    parts = [check_bigquery_name("project_id", project)] if project else []
    if dataset:
        parts.append(check_bigquery_name("dataset", dataset))
    parts.append(check_bigquery_name("table", table))
    return "`" + ".".join(parts) + "`"


def create_table(
    warehouse: str,
    *,
    table: str | None = None,
    database: str | None = None,
    schema: str | None = None,
    dataset: str | None = None,
) -> str:
    """The one CREATE TABLE statement for `warehouse` (no trailing newline).

    The table is unqualified unless a database/schema/dataset is given; the default name is
    `OPENROUTER_TRACES` (BigQuery `openrouter_traces`). Raises `InvalidName` (naming the
    field) for a name that is not allowed, ValueError for an unknown warehouse or a
    qualifier the warehouse does not have.
    """
    if warehouse not in WAREHOUSES:
        known = ", ".join(WAREHOUSES)
        raise ValueError(f"type: {warehouse!r} has no table schema (one of {known})")
    given = {"database": database, "schema": schema, "dataset": dataset}
    allowed = {
        CLICKHOUSE: {"database"},
        SNOWFLAKE: {"database", "schema"},
        BIGQUERY: {"dataset"},
    }[warehouse]
    extra = sorted(name for name, value in given.items() if value and name not in allowed)
    if extra:
        raise ValueError(f"{extra[0]}: {warehouse} tables have no {extra[0]}")
    lines = []
    for column in columns(warehouse):
        name = column_name(warehouse, column)
        kind = column_type(warehouse, column)
        if warehouse == CLICKHOUSE:
            lines.append(f"  `{name}` {kind} COMMENT '{column.comment}'")
        elif warehouse == SNOWFLAKE:
            not_null = " NOT NULL" if column.required else ""
            lines.append(f"  \"{name}\" {kind}{not_null} COMMENT '{column.comment}'")
        else:
            not_null = " NOT NULL" if column.required and column.kind is not Kind.TAGS else ""
            lines.append(f"  `{name}` {kind}{not_null}")
    body = ",\n".join(lines)
    if warehouse == CLICKHOUSE:
        name = clickhouse_table(table or DEFAULT_TABLE, database)
        return (
            f"CREATE TABLE IF NOT EXISTS {name} (\n{body}\n)\n"
            "ENGINE = MergeTree\n"
            "ORDER BY (TIMESTAMP, TRACE_ID, SPAN_ID)\n"
            f"SETTINGS non_replicated_deduplication_window = {CLICKHOUSE_DEDUPLICATION_WINDOW}"
        )
    if warehouse == SNOWFLAKE:
        name = snowflake_table(table or DEFAULT_TABLE, database, schema)
        return f"CREATE TABLE IF NOT EXISTS {name} (\n{body}\n)"
    # BigQuery runs DDL in the console's project: `dataset.table` needs no project id.
    name = bigquery_table(table or DEFAULT_BIGQUERY_TABLE, dataset)
    return f"CREATE TABLE IF NOT EXISTS {name} (\n{body}\n)"


# Rows


def observation_rows(trace: Trace, destination_id: str) -> list[Row]:
    """Pure: one row per observation (the span when `span_name` is set, then the
    generation), every column of `COLUMNS` present (BigQuery-only ones too)."""
    meta = trace.metadata
    generation = _generation_row(trace, destination_id)
    if not meta.span_name:
        return [generation]
    span_id = derived_hex(trace.request_id, destination_id, "span", nbytes=8)
    span = {
        **generation,
        "SPAN_ID": span_id,
        "PARENT_SPAN_ID": meta.parent_span_id,
        "SPAN_TYPE": "SPAN",
        "MODEL": None,
        "FINISH_REASON": None,
        "PROMPT_TOKENS": 0,
        "COMPLETION_TOKENS": 0,
        "TOTAL_TOKENS": 0,
        "CACHED_TOKENS": 0,
        "REASONING_TOKENS": 0,
        "TOTAL_COST": None,
        "ATTRIBUTES": _attributes(common_attributes(trace)),
        "INPUT": None,
        "OUTPUT": None,
        "MODEL_PARAMETERS": None,
    }
    generation["PARENT_SPAN_ID"] = span_id
    return [span, generation]


def request_row(trace: Trace, destination_id: str) -> Row:
    """Pure: BigQuery's one row per request (the generation's values; the span, if any, is
    named in METADATA)."""
    return _generation_row(trace, destination_id)


def _generation_row(trace: Trace, destination_id: str) -> Row:
    usage, meta = trace.usage, trace.metadata
    error = trace.is_error
    return {
        "TRACE_ID": trace.grouping_id,
        "SPAN_ID": derived_hex(trace.request_id, destination_id, "generation", nbytes=8),
        "PARENT_SPAN_ID": meta.parent_span_id,
        "USER_ID": trace.end_user,
        "SESSION_ID": trace.session_id,
        "ORGANIZATION_ID": trace.org_id,
        "ENTITY_ID": trace.org_id or trace.user_id,
        "API_KEY_NAME": trace.api_key_name or trace.api_key_id,
        "TIMESTAMP": trace.started_at,
        "START_TIME": trace.started_at,
        "END_TIME": trace.finished_at,
        "DURATION_MS": round(trace.duration_ms, 3),
        "MODEL": trace.model,
        "PROVIDER_NAME": trace.provider,
        "PROVIDER_SLUG": provider_slug(trace.provider),
        "STATUS": "error" if error else "ok",
        "LEVEL": "ERROR" if error else "DEFAULT",
        "FINISH_REASON": trace.finish_reasons[0] if trace.finish_reasons else None,
        "SPAN_TYPE": "GENERATION",
        "PROMPT_TOKENS": usage.input_tokens,
        "COMPLETION_TOKENS": usage.output_tokens,
        "TOTAL_TOKENS": usage.total_tokens,
        "CACHED_TOKENS": usage.cached_input_tokens or 0,
        "REASONING_TOKENS": usage.reasoning_tokens or 0,
        "TOTAL_COST": trace.cost.total,
        "ATTRIBUTES": _attributes({**common_attributes(trace), **generation_attributes(trace)}),
        "INPUT": None if trace.content_redacted else _input(trace),
        "OUTPUT": None if trace.content_redacted else _output(trace),
        "METADATA": metadata(trace),
        "MODEL_PARAMETERS": dict(trace.model_parameters),
        "RESOURCE_ATTRIBUTES": {"service.name": SERVICE_NAME},
        "TAGS": _tags(trace),
    }


def metadata(trace: Trace) -> dict[str, Any]:
    """Every `trace` key the caller sent, the reserved ones included."""
    meta = trace.metadata
    values: dict[str, Any] = dict(meta.extra)
    for key in ("trace_id", "trace_name", "span_name", "generation_name", "parent_span_id"):
        value = getattr(meta, key)
        if value is not None:
            values[key] = value
    return values


def provider_slug(provider: str) -> str:
    """`Google AI Studio` -> `google-ai-studio`."""
    return re.sub(r"[^a-z0-9]+", "-", provider.lower()).strip("-")


def _attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    # Content lives in INPUT and OUTPUT; the attributes would carry it a second time.
    skip = (INPUT_MESSAGES, OUTPUT_MESSAGES)
    return {key: value for key, value in values.items() if value is not None and key not in skip}


def _input(trace: Trace) -> dict[str, Any]:
    return {"messages": [chat_message(message) for message in trace.input_messages]}


def _output(trace: Trace) -> dict[str, Any]:
    reasons = trace.finish_reasons
    return {
        "choices": [
            {
                "index": index,
                "message": chat_message(message),
                "finish_reason": reasons[index] if index < len(reasons) else None,
            }
            for index, message in enumerate(trace.output_messages)
        ]
    }


def _tags(trace: Trace) -> list[str]:
    tags = trace.metadata.extra.get("tags")
    if isinstance(tags, list):
        return [tag for tag in tags if isinstance(tag, str)]
    return []


def utc_text(moment: datetime, digits: int = 3) -> str:
    """`YYYY-MM-DD hh:mm:ss.fff` in UTC (ClickHouse DateTime64(3), Snowflake TIMESTAMP_NTZ)."""
    text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return text[: len(text) - (6 - digits)] if digits < 6 else text
