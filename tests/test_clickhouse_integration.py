"""ClickHouse: the real engine (chdb) behind ClickHouse's HTTP interface on loopback.

The table comes from `broadcast destination schema`; traces go through the real worker;
OpenRouter's example queries (guides/features/broadcast/clickhouse.mdx) run on the rows.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broadcast_engine.events import build_trace
from broadcast_interfaces.service import SettingsError
from destinations.base import DeliveryContext
from destinations.clickhouse import ClickHouseDestination
from harness.samples import chat_event, error_event
from harness.waiting import wait_for
from tasks import broadcast
from tests.emulators.warehouses import ClickHouseServer
from tests.warehouse_fixtures import CLICKHOUSE_PASSWORD, CLICKHOUSE_READER_PASSWORD

pytestmark = pytest.mark.integration
BROADCAST = str(Path(sys.executable).parent / "broadcast")
PASSWORD = CLICKHOUSE_PASSWORD
READER_PASSWORD = CLICKHOUSE_READER_PASSWORD


def schema_ddl(*flags: str) -> str:
    """`broadcast destination schema --type clickhouse ...`: one statement, nothing else."""
    result = subprocess.run(
        [BROADCAST, "destination", "schema", "--type", "clickhouse", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.count(";") == 1 and result.stdout.rstrip().endswith(";")
    return result.stdout


def new_table(clickhouse: ClickHouseServer) -> str:
    table = f"T_{uuid.uuid4().hex[:10]}"
    clickhouse.query(schema_ddl("--table", table, "--database", "default"))
    return table


def config(clickhouse: ClickHouseServer, table: str, **extra) -> dict:
    return {
        "host": clickhouse.url,
        "database": "default",
        "table": table,
        "username": "default",
        "password": PASSWORD,
        **extra,
    }


def recent_event(index: int, user_id: str, minutes_ago: float, **overrides) -> dict:
    started = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return chat_event(
        index,
        user_id=user_id,
        id=f"{user_id}-{index}",
        started_at=started.isoformat().replace("+00:00", "Z"),
        finished_at=(started + timedelta(milliseconds=100 * (index + 1)))
        .isoformat()
        .replace("+00:00", "Z"),
        **overrides,
    )


def test_traces_become_rows_and_openrouter_queries_add_up(worker, service, user_id, clickhouse):
    table = new_table(clickhouse)
    view = service.add_destination(f"user:{user_id}", "clickhouse", "CH", config(clickhouse, table))
    assert view["config"]["password"].startswith("****")
    events = [
        recent_event(
            i,
            user_id,
            5,
            model="openai/gpt-4o" if i % 2 else "anthropic/claude",
            user=f"end-{i % 3}",
            api_key_name="prod" if i < 6 else "dev",
            trace={"trace_name": "Pipeline", "team": "data", "n": i},
        )
        for i in range(10)
    ]
    events.append(
        recent_event(
            10,
            user_id,
            5,
            trace={
                "trace_id": "wf-1",
                "span_name": "Retrieve",
                "generation_name": "Answer",
                "custom_field": "v",
            },
        )
    )
    events.append(
        error_event(
            11,
            user_id=user_id,
            id=f"{user_id}-11",
            started_at=events[0]["started_at"],
            finished_at=events[0]["finished_at"],
        )
    )
    for event in events:
        broadcast.delay(event)
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 12, timeout=60)

    # One row per observation: 12 generations, one span.
    kinds = clickhouse.rows(f"SELECT SPAN_TYPE, count() AS n FROM {table} GROUP BY SPAN_TYPE")
    assert {r["SPAN_TYPE"]: int(r["n"]) for r in kinds} == {"GENERATION": 12, "SPAN": 1}

    # Cost analysis by model (OpenRouter's query, verbatim but for the table name).
    by_model = clickhouse.rows(f"""
        SELECT toDate(TIMESTAMP) as day, MODEL, sum(TOTAL_COST) as total_cost,
          sum(TOTAL_TOKENS) as total_tokens, count() as request_count
        FROM {table}
        WHERE TIMESTAMP >= now() - INTERVAL 30 DAY AND STATUS = 'ok' AND SPAN_TYPE = 'GENERATION'
        GROUP BY day, MODEL ORDER BY day DESC, total_cost DESC""")
    counts = {r["MODEL"]: (int(r["request_count"]), int(r["total_tokens"])) for r in by_model}
    assert counts == {"openai/gpt-4o": (5 + 1 + 0, 28 * 6), "anthropic/claude": (5, 28 * 5)}
    total = sum(r["total_cost"] for r in by_model)
    assert total == pytest.approx(0.000123 * 11, rel=1e-9)  # sub-cent precision kept

    # User activity analysis.
    users = clickhouse.rows(f"""
        SELECT USER_ID, uniqExact(TRACE_ID) as trace_count, uniqExact(SESSION_ID) as
          session_count, sum(TOTAL_TOKENS) as total_tokens
        FROM {table} WHERE TIMESTAMP >= now() - INTERVAL 7 DAY AND SPAN_TYPE = 'GENERATION'
        GROUP BY USER_ID ORDER BY USER_ID""")
    assert {r["USER_ID"]: int(r["trace_count"]) for r in users} == {
        "end-0": 4,
        "end-1": 3,
        "end-2": 3,
        "end-user-7": 2,
    }

    # Error analysis: the failed request, within the hour.
    errors = clickhouse.rows(f"""
        SELECT TRACE_ID, MODEL, LEVEL, FINISH_REASON, METADATA FROM {table}
        WHERE STATUS = 'error' AND TIMESTAMP >= now() - INTERVAL 1 HOUR ORDER BY TIMESTAMP DESC""")
    assert [(r["TRACE_ID"], r["LEVEL"]) for r in errors] == [(f"{user_id}-11", "ERROR")]

    # Provider performance: percentiles over the durations sent (100 ms steps).
    latency = clickhouse.rows(f"""
        SELECT PROVIDER_NAME, MODEL, avg(DURATION_MS) as avg_duration_ms,
          quantile(0.5)(DURATION_MS) as p50_duration_ms, count() as request_count
        FROM {table} WHERE TIMESTAMP >= now() - INTERVAL 7 DAY AND STATUS = 'ok'
          AND SPAN_TYPE = 'GENERATION'
        GROUP BY PROVIDER_NAME, MODEL HAVING request_count >= 5 ORDER BY avg_duration_ms""")
    claude = next(r for r in latency if r["MODEL"] == "anthropic/claude")
    assert claude["avg_duration_ms"] == pytest.approx((100 + 300 + 500 + 700 + 900) / 5)

    # Usage by API key.
    keys = clickhouse.rows(f"""
        SELECT API_KEY_NAME, uniqExact(TRACE_ID) as trace_count, sum(PROMPT_TOKENS) as
          prompt_tokens FROM {table}
        WHERE TIMESTAMP >= now() - INTERVAL 30 DAY AND SPAN_TYPE = 'GENERATION'
        GROUP BY API_KEY_NAME ORDER BY API_KEY_NAME""")
    assert {r["API_KEY_NAME"]: int(r["trace_count"]) for r in keys} == {
        "dev": 4,
        "prod": 6,
        "key_live_1": 2,  # no name: the key id
    }

    # JSON columns: custom metadata, the reserved keys, OTel attributes and messages.
    extracted = clickhouse.rows(f"""
        SELECT TRACE_ID, JSONExtractString(METADATA, 'custom_field') as custom_value,
          JSONExtractString(METADATA, 'span_name') as span_name,
          JSONExtractString(ATTRIBUTES, 'gen_ai.request.model') as requested_model,
          JSONExtractString(JSONExtractRaw(INPUT, 'messages'), 1, 'role') as first_role,
          PARENT_SPAN_ID
        FROM {table} WHERE JSONHas(METADATA, 'custom_field') AND SPAN_TYPE = 'GENERATION'""")
    assert len(extracted) == 1
    row = extracted[0]
    assert row["TRACE_ID"] == "wf-1" and row["custom_value"] == "v"
    assert row["span_name"] == "Retrieve" and row["requested_model"] == "openai/gpt-4o"
    assert row["first_role"] == "system"
    span = clickhouse.rows(f"SELECT SPAN_ID, SPAN_TYPE FROM {table} WHERE SPAN_TYPE = 'SPAN'")
    assert row["PARENT_SPAN_ID"] == span[0]["SPAN_ID"]
    teams = clickhouse.rows(
        f"SELECT JSONExtractString(METADATA, 'team') AS team, count() AS n FROM {table} "
        "WHERE JSONHas(METADATA, 'team') GROUP BY team"
    )
    assert teams == [{"team": "data", "n": "10"}] or teams == [{"team": "data", "n": 10}]


def test_the_same_batch_sent_twice_is_one_row_each(service, clickhouse, transport):
    table = new_table(clickhouse)
    destination = ClickHouseDestination(
        ClickHouseDestination.config_schema().load(config(clickhouse, table)), transport
    )
    context = DeliveryContext("dst_ch_dedup", "user:u", datetime.now(UTC))
    traces = [build_trace(chat_event(i, id=f"dedup-{i}")) for i in range(5)]
    first = destination.deliver_batch(traces, context)
    again = destination.deliver_batch(list(reversed(traces)), context)  # a retry, reordered
    assert {r.outcome.value for r in first + again} == {"delivered"}
    assert clickhouse.rows(f"SELECT count() AS n FROM {table}")[0]["n"] in ("5", 5)

    # Without the DDL's deduplication window the token is ignored: the setting matters.
    bare = f"T_{uuid.uuid4().hex[:10]}"
    ddl = schema_ddl("--table", bare).replace(
        "SETTINGS non_replicated_deduplication_window = 10000", ""
    )
    clickhouse.query(ddl)
    plain = ClickHouseDestination(
        ClickHouseDestination.config_schema().load(config(clickhouse, bare)), transport
    )
    plain.deliver_batch(traces, context)
    plain.deliver_batch(traces, context)
    assert clickhouse.rows(f"SELECT count() AS n FROM {bare}")[0]["n"] in ("10", 10)


def test_test_connection_names_a_missing_or_mistyped_column(service, user_id, clickhouse):
    table = new_table(clickhouse)
    clickhouse.query(f"ALTER TABLE {table} DROP COLUMN TOTAL_COST")
    with pytest.raises(SettingsError, match="has no column TOTAL_COST"):
        service.add_destination(f"user:{user_id}", "clickhouse", "CH", config(clickhouse, table))
    other = new_table(clickhouse)
    clickhouse.query(f"ALTER TABLE {other} MODIFY COLUMN PROMPT_TOKENS String")
    with pytest.raises(SettingsError, match=r"column PROMPT_TOKENS .* is String, expected Int64"):
        service.add_destination(f"user:{user_id}", "clickhouse", "CH", config(clickhouse, other))
    with pytest.raises(SettingsError, match="does not exist"):
        service.add_destination(
            f"user:{user_id}", "clickhouse", "CH", config(clickhouse, "NO_SUCH_TABLE")
        )
    assert service.list_destinations(f"user:{user_id}") == []


def test_read_only_and_rejected_credentials_fail_test_connection(service, user_id, clickhouse):
    table = new_table(clickhouse)
    reader = config(clickhouse, table, username="reader", password=READER_PASSWORD)
    with pytest.raises(SettingsError, match=r"may not insert .*READONLY"):
        service.add_destination(f"user:{user_id}", "clickhouse", "CH", reader)
    wrong = config(clickhouse, table, password="not-the-password")
    with pytest.raises(SettingsError, match=r"credentials rejected .*AUTHENTICATION_FAILED"):
        service.add_destination(f"user:{user_id}", "clickhouse", "CH", wrong)


def test_a_dropped_column_dead_letters_the_batch_naming_it(worker, service, user_id, clickhouse):
    table = new_table(clickhouse)
    view = service.add_destination(f"user:{user_id}", "clickhouse", "CH", config(clickhouse, table))
    clickhouse.query(f"ALTER TABLE {table} DROP COLUMN TOTAL_COST")
    broadcast.delay(recent_event(1, user_id, 1))
    wait_for(lambda: service.dead_letters(view["id"]), timeout=30, what="a dead letter")
    (letter,) = service.dead_letters(view["id"])
    assert "TOTAL_COST" in letter.reason and "ClickHouse code" in letter.reason
    status = next(row for row in service.status(f"user:{user_id}") if row["id"] == view["id"])
    assert status["health"] == "unreachable" and "TOTAL_COST" in status["health_reason"]


def test_privacy_mode_leaves_input_and_output_empty(worker, service, user_id, clickhouse):
    table = new_table(clickhouse)
    view = service.add_destination(
        f"user:{user_id}", "clickhouse", "CH", config(clickhouse, table), privacy=True
    )
    broadcast.delay(recent_event(1, user_id, 1))
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 1, timeout=30)
    (row,) = clickhouse.rows(f"SELECT INPUT, OUTPUT, TOTAL_TOKENS, METADATA FROM {table}")
    assert row["INPUT"] is None and row["OUTPUT"] is None
    assert int(row["TOTAL_TOKENS"]) == 28 and "arithmetic" in row["METADATA"]
