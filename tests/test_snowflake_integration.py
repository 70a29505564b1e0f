"""Snowflake: the SQL API v2 on loopback, statements and bindings run on fakesnow.

The table comes from `broadcast destination schema`; traces go through the real worker;
OpenRouter's example queries (guides/features/broadcast/snowflake.mdx) run on the rows,
VARIANT columns read with `METADATA:key`.
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
from destinations.snowflake import SnowflakeDestination
from harness.samples import chat_event, error_event
from harness.waiting import wait_for
from tasks import broadcast
from tests.emulators.warehouses import SnowflakeServer
from tests.warehouse_fixtures import SNOWFLAKE_EXPIRED, SNOWFLAKE_READER, SNOWFLAKE_TOKEN

pytestmark = pytest.mark.integration
BROADCAST = str(Path(sys.executable).parent / "broadcast")
TOKEN, READER, EXPIRED = SNOWFLAKE_TOKEN, SNOWFLAKE_READER, SNOWFLAKE_EXPIRED


def new_table(snowflake: SnowflakeServer) -> str:
    table = f"T_{uuid.uuid4().hex[:10].upper()}"
    result = subprocess.run(
        [BROADCAST, "destination", "schema", "--type", "snowflake", "--table", table],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    snowflake.execute(result.stdout.strip().rstrip(";"))
    return table


def config(snowflake: SnowflakeServer, table: str, token: str = TOKEN) -> dict:
    return {
        "account": "xy12345.us-east-1",
        "token": token,
        "database": "DB",
        "schema": "PUBLIC",
        "table": table,
        "warehouse": "COMPUTE_WH",
        "endpoint": snowflake.url,
    }


def recent_event(index: int, user_id: str, **overrides) -> dict:
    started = datetime.now(UTC) - timedelta(minutes=5)
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


def test_traces_become_rows_and_openrouter_queries_add_up(worker, service, user_id, snowflake):
    table = new_table(snowflake)
    view = service.add_destination(f"user:{user_id}", "snowflake", "SF", config(snowflake, table))
    assert view["config"]["token"].startswith("****")
    events = [
        recent_event(
            i,
            user_id,
            model="openai/gpt-4o" if i % 2 else "anthropic/claude",
            trace={"department": "finance", "quarter": "Q2-2026"},
        )
        for i in range(6)
    ]
    events.append(recent_event(6, user_id, trace={"span_name": "Plan", "custom_field": "v"}))
    events.append(
        error_event(
            7,
            user_id=user_id,
            id=f"{user_id}-7",
            started_at=events[0]["started_at"],
            finished_at=events[0]["finished_at"],
        )
    )
    for event in events:
        broadcast.delay(event)
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 8, timeout=60)

    kinds = snowflake.execute(f'SELECT SPAN_TYPE, COUNT(*) FROM "{table}" GROUP BY SPAN_TYPE')
    assert {kind: int(n) for kind, n in kinds} == {"GENERATION": 8, "SPAN": 1}

    by_model = snowflake.execute(f"""
        SELECT DATE_TRUNC('day', TIMESTAMP) as day, MODEL, SUM(TOTAL_COST) as total_cost,
          SUM(TOTAL_TOKENS) as total_tokens, COUNT(*) as request_count
        FROM "{table}"
        WHERE TIMESTAMP >= DATEADD(day, -30, CURRENT_TIMESTAMP()) AND STATUS = 'ok'
          AND SPAN_TYPE = 'GENERATION'
        GROUP BY day, MODEL ORDER BY day DESC, total_cost DESC""")
    counts = {model: int(n) for _, model, _, _, n in by_model}
    assert counts == {"openai/gpt-4o": 4, "anthropic/claude": 3}
    assert sum(float(cost) for _, _, cost, _, _ in by_model) == pytest.approx(0.000123 * 7)

    latency = snowflake.execute(f"""
        SELECT PROVIDER_NAME, MODEL, AVG(DURATION_MS) as avg_duration_ms,
          PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY DURATION_MS) as p50_duration_ms,
          COUNT(*) as request_count
        FROM "{table}" WHERE STATUS = 'ok' AND SPAN_TYPE = 'GENERATION'
        GROUP BY PROVIDER_NAME, MODEL ORDER BY avg_duration_ms""")
    claude = next(row for row in latency if row[1] == "anthropic/claude")
    assert float(claude[2]) == pytest.approx((100 + 300 + 500) / 3)
    assert float(claude[3]) == pytest.approx(300)

    errors = snowflake.execute(
        f"SELECT TRACE_ID, LEVEL FROM \"{table}\" WHERE STATUS = 'error' "
        "AND TIMESTAMP >= DATEADD(hour, -1, CURRENT_TIMESTAMP())"
    )
    assert errors == [[f"{user_id}-7", "ERROR"]]

    finance = snowflake.execute(f"""
        SELECT TRACE_ID, METADATA:department::STRING as department,
          METADATA:quarter::STRING as quarter
        FROM "{table}" WHERE METADATA:department IS NOT NULL AND SPAN_TYPE = 'GENERATION'""")
    assert len(finance) == 6 and {row[1] for row in finance} == {"finance"}
    custom = snowflake.execute(f"""
        SELECT TRACE_ID, METADATA:custom_field::STRING, METADATA:span_name::STRING,
          ATTRIBUTES:"gen_ai.request.model"::STRING, INPUT:messages[0]:role::STRING
        FROM "{table}" WHERE METADATA:custom_field IS NOT NULL AND SPAN_TYPE = 'GENERATION'""")
    assert custom == [[f"{user_id}-6", "v", "Plan", "openai/gpt-4o", "system"]]


def test_the_same_batch_sent_twice_is_one_row_each(snowflake, transport):
    table = new_table(snowflake)
    destination = SnowflakeDestination(
        SnowflakeDestination.config_schema().load(config(snowflake, table)), transport
    )
    context = DeliveryContext("dst_sf_dedup", "user:u", datetime.now(UTC))
    traces = [build_trace(chat_event(i, id=f"sfdedup-{i}")) for i in range(4)]
    first = destination.deliver_batch(traces, context)
    # Re-formed: another batch holding two of the same traces (a different requestId).
    again = destination.deliver_batch(traces[1:3], context)
    same = destination.deliver_batch(traces, context)
    assert {r.outcome.value for r in first + again + same} == {"delivered"}
    assert snowflake.execute(f'SELECT COUNT(*) FROM "{table}"') == [["4"]]


def test_test_connection_names_a_missing_column_and_refuses_readers(service, user_id, snowflake):
    table = new_table(snowflake)
    snowflake.execute(f'ALTER TABLE "{table}" DROP COLUMN "TOTAL_COST"')
    with pytest.raises(SettingsError, match="has no column TOTAL_COST"):
        service.add_destination(f"user:{user_id}", "snowflake", "SF", config(snowflake, table))
    fine = new_table(snowflake)
    with pytest.raises(SettingsError, match="may not insert"):
        service.add_destination(
            f"user:{user_id}", "snowflake", "SF", config(snowflake, fine, READER)
        )
    with pytest.raises(SettingsError, match="token rejected"):
        service.add_destination(
            f"user:{user_id}", "snowflake", "SF", config(snowflake, fine, EXPIRED)
        )
    assert service.list_destinations(f"user:{user_id}") == []


def test_a_dropped_column_dead_letters_the_batch_naming_it(worker, service, user_id, snowflake):
    table = new_table(snowflake)
    view = service.add_destination(f"user:{user_id}", "snowflake", "SF", config(snowflake, table))
    snowflake.execute(f'ALTER TABLE "{table}" DROP COLUMN "TOTAL_COST"')
    broadcast.delay(recent_event(1, user_id))
    wait_for(lambda: service.dead_letters(view["id"]), timeout=30, what="a dead letter")
    (letter,) = service.dead_letters(view["id"])
    assert "TOTAL_COST" in letter.reason and "Snowflake" in letter.reason
    status = next(row for row in service.status(f"user:{user_id}") if row["id"] == view["id"])
    assert status["health"] == "unreachable"


def test_privacy_mode_leaves_input_and_output_empty(worker, service, user_id, snowflake):
    table = new_table(snowflake)
    view = service.add_destination(
        f"user:{user_id}", "snowflake", "SF", config(snowflake, table), privacy=True
    )
    broadcast.delay(recent_event(1, user_id))
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 1, timeout=30)
    rows = snowflake.execute(f'SELECT INPUT, OUTPUT, TOTAL_TOKENS FROM "{table}"')
    assert rows == [[None, None, "28"]]
