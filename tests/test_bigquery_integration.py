"""BigQuery: local-bigquery behind Google's front (tokens, scopes, IAM) and token endpoint.

The table comes from `broadcast destination schema`; traces go through the real worker,
whose service-account token is a real JWT grant signed with the account's key; the rows
are read back with google-cloud-bigquery, and OpenRouter's example queries
(guides/features/broadcast/bigquery.mdx) run on them verbatim but for the table name.
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
from destinations.bigquery import BigQueryDestination
from destinations.outcomes import Outcome
from harness.samples import chat_event, error_event
from harness.waiting import wait_for
from tasks import broadcast
from tests.warehouse_fixtures import BIGQUERY_DATASET, BIGQUERY_PROJECT, GoogleCloud, email_of

pytestmark = pytest.mark.integration
BROADCAST = str(Path(sys.executable).parent / "broadcast")
# The columns OpenRouter's BigQuery page names (its queries, JSON columns and tags).
DOCUMENTED_COLUMNS = {
    "trace_id",
    "span_id",
    "user_id",
    "session_id",
    "api_key_name",
    "timestamp",
    "model",
    "provider_name",
    "status",
    "level",
    "finish_reason",
    "duration_ms",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "total_cost",
    "attributes",
    "input",
    "output",
    "metadata",
    "model_parameters",
    "resource_attributes",
    "tags",
}


def schema_ddl(*flags: str) -> str:
    """`broadcast destination schema --type bigquery ...`: one statement, nothing else."""
    result = subprocess.run(
        [BROADCAST, "destination", "schema", "--type", "bigquery", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.count(";") == 1 and result.stdout.rstrip().endswith(";")
    return result.stdout


def new_table(bigquery: GoogleCloud, edit: tuple[str, str] | None = None) -> str:
    """A table made from the DDL the CLI prints (`edit`: one replacement in it first, for a
    table a user changed); its fully qualified name for queries."""
    table = f"t_{uuid.uuid4().hex[:10]}"
    ddl = schema_ddl("--dataset", BIGQUERY_DATASET, "--table", table)
    if edit is not None:
        assert edit[0] in ddl
        ddl = ddl.replace(edit[0], edit[1])
    bigquery.query(ddl)
    return table


def qualified(table: str) -> str:
    return f"`{BIGQUERY_PROJECT}.{BIGQUERY_DATASET}.{table}`"


def config(bigquery: GoogleCloud, table: str, key: str) -> dict:
    return {
        "project_id": BIGQUERY_PROJECT,
        "service_account_json": key,
        "dataset": BIGQUERY_DATASET,
        "table": table,
        "endpoint": bigquery.url,
    }


def add(service, user_id: str, bigquery: GoogleCloud, table: str, key: str, **options) -> dict:
    """Save the destination through the settings service (Test Connection included)."""
    return service.add_destination(
        f"user:{user_id}", "bigquery", "BQ", config(bigquery, table, key), **options
    )


def destination(bigquery: GoogleCloud, table: str, key: str, transport) -> BigQueryDestination:
    cls = BigQueryDestination
    return cls(cls.config_schema().load(config(bigquery, table, key)), transport)


def recent_event(index: int, user_id: str, **overrides) -> dict:
    """Finished five minutes ago, taking 100 ms per index step (the latency queries)."""
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


def context() -> DeliveryContext:
    return DeliveryContext(f"dst_bq_{uuid.uuid4().hex[:8]}", "user:u", datetime.now(UTC))


def test_traces_become_rows_and_openrouter_queries_add_up(worker, service, user_id, bigquery):
    table = new_table(bigquery)
    name = qualified(table)
    key = bigquery.account("writer", "dataEditor")
    view = add(service, user_id, bigquery, table, key)
    assert view["config"]["service_account_json"].startswith("****")
    events = [
        recent_event(
            i,
            user_id,
            model="anthropic/claude" if i % 4 == 0 else "openai/gpt-4o",
            user=f"end-{i % 3}",
            api_key_name="prod" if i < 8 else "dev",
            trace={
                "trace_name": "Revenue Forecasting",
                "department": "finance",
                "quarter": "Q2-2026",
                "model_version": "v3",
                **({"tags": ["beta", "forecast"]} if i == 3 else {}),
            },
        )
        for i in range(16)
    ]
    events.append(
        recent_event(
            16,
            user_id,
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
            17,
            user_id=user_id,
            id=f"{user_id}-17",
            started_at=events[0]["started_at"],
            finished_at=events[0]["finished_at"],
        )
    )
    for event in events:
        broadcast.delay(event)
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 18, timeout=90)

    # One row per request, the span named by span_name included in its generation's row.
    recent = bigquery.query(f"""
        SELECT trace_id, span_id, timestamp, model, status, total_tokens, total_cost
        FROM {name} ORDER BY timestamp DESC LIMIT 20""")
    assert len(recent) == 18 and len({row["span_id"] for row in recent}) == 18
    (row,) = bigquery.query(f"SELECT * FROM {name} WHERE trace_id = 'wf-1'")
    assert DOCUMENTED_COLUMNS <= set(row)
    assert row["user_id"] == "end-user-7" and row["entity_id"] == user_id
    assert row["organization_id"] is None and row["api_key_name"] == "key_live_1"
    assert row["provider_name"] == "OpenAI" and row["provider_slug"] == "openai"
    assert (row["status"], row["level"], row["finish_reason"]) == ("ok", "DEFAULT", "stop")
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (21, 7, 28)
    assert row["duration_ms"] == pytest.approx(1700) and row["total_cost"] == 0.000123
    assert row["metadata"] == {
        "trace_id": "wf-1",
        "span_name": "Retrieve",
        "generation_name": "Answer",
        "custom_field": "v",
    }
    assert row["input"]["messages"][1] == {"role": "user", "content": "What is 16 + 16?"}
    assert row["output"]["choices"][0]["message"]["content"] == "The answer is 32."
    assert row["model_parameters"] == {"temperature": 0.2, "max_tokens": 64}
    assert row["resource_attributes"] == {"service.name": "broadcast"}
    assert row["attributes"]["gen_ai.request.model"] == "openai/gpt-4o"
    tagged = bigquery.query(f"SELECT trace_id FROM {name} WHERE 'beta' IN UNNEST(tags)")
    assert tagged == [{"trace_id": f"{user_id}-3"}]

    # Cost analysis by model.
    by_model = bigquery.query(f"""
        SELECT DATE(timestamp) as day, model, SUM(total_cost) as total_cost,
          SUM(total_tokens) as total_tokens, COUNT(*) as request_count
        FROM {name}
        WHERE timestamp >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 30 DAY) AND status = 'ok'
        GROUP BY day, model ORDER BY day DESC, total_cost DESC""")
    counts = {r["model"]: (r["request_count"], r["total_tokens"]) for r in by_model}
    assert counts == {"openai/gpt-4o": (13, 28 * 13), "anthropic/claude": (4, 28 * 4)}
    assert sum(r["total_cost"] for r in by_model) == pytest.approx(0.000123 * 17, rel=1e-9)

    # User activity analysis.
    users = bigquery.query(f"""
        SELECT user_id, COUNT(DISTINCT trace_id) as trace_count,
          COUNT(DISTINCT session_id) as session_count, SUM(total_tokens) as total_tokens,
          SUM(total_cost) as total_cost, AVG(duration_ms) as avg_duration_ms
        FROM {name} WHERE timestamp >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 7 DAY)
        GROUP BY user_id ORDER BY total_cost DESC""")
    by_user = {r["user_id"]: r for r in users}
    assert {u: r["trace_count"] for u, r in by_user.items()} == {
        "end-0": 6,
        "end-1": 5,
        "end-2": 5,
        "end-user-7": 2,
    }
    assert by_user["end-0"]["session_count"] == 6  # sessions 0..5 (session-{i // 3})
    assert by_user["end-user-7"]["total_tokens"] == 28 + 21  # the error used no output
    assert by_user["end-1"]["avg_duration_ms"] == pytest.approx((200 + 500 + 800 + 1100 + 1400) / 5)

    # Error analysis: the failed request, within the hour, content and metadata kept.
    errors = bigquery.query(f"""
        SELECT trace_id, timestamp, model, level, finish_reason, metadata, input, output
        FROM {name}
        WHERE status = 'error' AND timestamp >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 1 HOUR)
        ORDER BY timestamp DESC""")
    assert [(r["trace_id"], r["level"], r["finish_reason"]) for r in errors] == [
        (f"{user_id}-17", "ERROR", None)
    ]
    assert errors[0]["metadata"]["feature"] == "arithmetic"

    # Provider performance: only gpt-4o has the 10 requests the HAVING asks for.
    latency = bigquery.query(f"""
        SELECT provider_name, model, AVG(duration_ms) as avg_duration_ms,
          APPROX_QUANTILES(duration_ms, 100)[OFFSET(50)] as p50_duration_ms,
          APPROX_QUANTILES(duration_ms, 100)[OFFSET(95)] as p95_duration_ms,
          COUNT(*) as request_count
        FROM {name}
        WHERE timestamp >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 7 DAY) AND status = 'ok'
        GROUP BY provider_name, model HAVING request_count >= 10 ORDER BY avg_duration_ms""")
    gpt = sorted([100 * (i + 1) for i in range(16) if i % 4 != 0] + [1700])  # and wf-1
    (perf,) = latency
    assert (perf["provider_name"], perf["model"], perf["request_count"]) == (
        "OpenAI",
        "openai/gpt-4o",
        13,
    )
    assert perf["avg_duration_ms"] == pytest.approx(sum(gpt) / 13)
    assert perf["p50_duration_ms"] == gpt[6]  # the median of 13
    assert gpt[11] <= perf["p95_duration_ms"] <= gpt[12]

    # Usage by API key (a key without a name is its id).
    keys = bigquery.query(f"""
        SELECT api_key_name, COUNT(DISTINCT trace_id) as trace_count,
          SUM(total_cost) as total_cost, SUM(prompt_tokens) as prompt_tokens,
          SUM(completion_tokens) as completion_tokens
        FROM {name} WHERE timestamp >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 30 DAY)
        GROUP BY api_key_name ORDER BY total_cost DESC""")
    assert {r["api_key_name"]: (r["trace_count"], r["prompt_tokens"]) for r in keys} == {
        "prod": (8, 21 * 8),
        "dev": (8, 21 * 8),
        "key_live_1": (2, 21 * 2),
    }

    # JSON columns: custom metadata, OTel attributes and messages.
    custom = bigquery.query(f"""
        SELECT trace_id, JSON_VALUE(metadata, '$.custom_field') as custom_value,
          JSON_VALUE(attributes, '$."gen_ai.request.model"') as requested_model
        FROM {name} WHERE JSON_VALUE(metadata, '$.custom_field') IS NOT NULL""")
    assert custom == [{"trace_id": "wf-1", "custom_value": "v", "requested_model": "openai/gpt-4o"}]
    messages = bigquery.query(f"""
        SELECT trace_id, JSON_VALUE(input, '$.messages[0].role') as first_message_role,
          JSON_VALUE(input, '$.messages[0].content') as first_message_content
        FROM {name} LIMIT 10""")
    assert len(messages) == 10
    assert {(r["first_message_role"], r["first_message_content"]) for r in messages} == {
        ("system", "You are a terse assistant.")
    }
    finance = bigquery.query(f"""
        SELECT trace_id, JSON_VALUE(metadata, '$.department') as department,
          JSON_VALUE(metadata, '$.quarter') as quarter,
          JSON_VALUE(metadata, '$.model_version') as model_version, total_cost, total_tokens
        FROM {name} WHERE JSON_VALUE(metadata, '$.department') IS NOT NULL
        ORDER BY timestamp DESC""")
    assert len(finance) == 16
    assert {(r["department"], r["quarter"], r["model_version"]) for r in finance} == {
        ("finance", "Q2-2026", "v3")
    }


def test_the_same_batch_sent_twice_is_one_row_each(bigquery, transport):
    table = new_table(bigquery)
    writer = destination(bigquery, table, bigquery.account("dedup", "dataEditor"), transport)
    ctx = context()
    traces = [build_trace(chat_event(i, id=f"bqdedup-{uuid.uuid4().hex[:6]}")) for i in range(4)]
    first = writer.deliver_batch(traces, ctx)
    again = writer.deliver_batch(traces[1:3], ctx)  # re-formed: two of the same traces
    same = writer.deliver_batch(traces, ctx)  # a retry of the whole batch
    assert {r.outcome for r in first + again + same} == {Outcome.DELIVERED}
    assert (
        len(
            bigquery.front.receiver.requests(
                f"/bigquery/v2/projects/{BIGQUERY_PROJECT}/"
                f"datasets/{BIGQUERY_DATASET}/tables/{table}"
                "/insertAll"
            )
        )
        == 3
    )
    assert bigquery.query(f"SELECT COUNT(*) AS n FROM {qualified(table)}") == [{"n": 4}]


def test_a_refused_row_fails_only_its_trace(bigquery, transport):
    """A table whose owner made session_id REQUIRED refuses the row without one; the rest of
    the same insertAll request is written (skipInvalidRows), and no column is to blame."""
    table = new_table(bigquery, ("`session_id` STRING,", "`session_id` STRING NOT NULL,"))
    writer = destination(bigquery, table, bigquery.account("rows", "dataEditor"), transport)
    stem = uuid.uuid4().hex[:6]
    traces = [
        build_trace(chat_event(i, id=f"{stem}-{i}", **({"session_id": None} if i == 2 else {})))
        for i in range(4)
    ]
    results = writer.deliver_batch(traces, context())
    assert [r.outcome for r in results] == [
        Outcome.DELIVERED,
        Outcome.DELIVERED,
        Outcome.PERMANENT,
        Outcome.DELIVERED,
    ]
    assert "session_id" in results[2].error and not results[2].config_error
    inserts = f"/bigquery/v2/projects/{BIGQUERY_PROJECT}/datasets/{BIGQUERY_DATASET}/tables/{table}"
    assert len(bigquery.front.receiver.requests(inserts)) == 1  # one insertAll request
    rows = bigquery.query(f"SELECT trace_id FROM {qualified(table)} ORDER BY trace_id")
    assert [r["trace_id"] for r in rows] == [f"{stem}-0", f"{stem}-1", f"{stem}-3"]


def test_a_refused_row_is_one_dead_letter_through_the_worker(worker, service, user_id, bigquery):
    table = new_table(bigquery, ("`session_id` STRING,", "`session_id` STRING NOT NULL,"))
    key = bigquery.account("rows", "dataEditor")
    view = add(service, user_id, bigquery, table, key)
    for i in range(4):
        broadcast.delay(recent_event(i, user_id, **({"session_id": None} if i == 1 else {})))
    wait_for(lambda: service.dead_letters(view["id"]), timeout=60, what="a dead letter")
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 3, timeout=60)
    (letter,) = service.dead_letters(view["id"])
    assert letter.request_id == f"{user_id}-1"
    assert "Missing required field: session_id" in letter.reason
    status = next(row for row in service.status(f"user:{user_id}") if row["id"] == view["id"])
    assert status["health"] == "healthy"  # the row was at fault, not the destination
    assert len(bigquery.query(f"SELECT trace_id FROM {qualified(table)}")) == 3


def test_test_connection_names_a_missing_or_mistyped_column(service, user_id, bigquery):
    key = bigquery.account("checks", "dataEditor")
    table = new_table(bigquery)
    bigquery.query(f"ALTER TABLE {qualified(table)} DROP COLUMN total_cost")
    with pytest.raises(SettingsError, match="has no column total_cost"):
        add(service, user_id, bigquery, table, key)
    mistyped = new_table(bigquery, ("`prompt_tokens` INT64", "`prompt_tokens` STRING"))
    with pytest.raises(SettingsError, match=r"column prompt_tokens .* is REQUIRED STRING"):
        add(service, user_id, bigquery, mistyped, key)
    assert service.list_destinations(f"user:{user_id}") == []


def test_read_only_or_disabled_credentials_fail_test_connection(
    service, user_id, bigquery, transport
):
    table = new_table(bigquery)
    reader = bigquery.account("reader", "dataViewer")
    with pytest.raises(
        SettingsError,
        match=r"may read .* but not insert rows "
        r"\(bigquery.tables.updateData missing",
    ):
        add(service, user_id, bigquery, table, reader)
    # The permission is real: the reader's insertAll is refused as BigQuery refuses it.
    results = destination(bigquery, table, reader, transport).deliver_batch(
        [build_trace(chat_event(1, id=f"ro-{uuid.uuid4().hex[:6]}"))], context()
    )
    assert results[0].outcome is Outcome.AUTH_FAILED and results[0].status_code == 403
    assert "Permission bigquery.tables.updateData denied" in results[0].error
    gone = bigquery.account("gone", "dataEditor")
    bigquery.tokens.disable(email_of(gone))
    with pytest.raises(SettingsError, match="token refused: invalid_grant"):
        add(service, user_id, bigquery, table, gone)
    assert service.list_destinations(f"user:{user_id}") == []
    assert bigquery.query(f"SELECT COUNT(*) AS n FROM {qualified(table)}") == [{"n": 0}]


def test_a_dropped_column_dead_letters_the_batch_naming_it(worker, service, user_id, bigquery):
    table = new_table(bigquery)
    key = bigquery.account("drop", "dataEditor")
    view = add(service, user_id, bigquery, table, key)
    bigquery.query(f"ALTER TABLE {qualified(table)} DROP COLUMN total_cost")
    broadcast.delay(recent_event(1, user_id))
    wait_for(lambda: service.dead_letters(view["id"]), timeout=30, what="a dead letter")
    (letter,) = service.dead_letters(view["id"])
    assert "no such field: total_cost" in letter.reason and "BigQuery" in letter.reason
    status = next(row for row in service.status(f"user:{user_id}") if row["id"] == view["id"])
    assert status["health"] == "unreachable" and "total_cost" in status["health_reason"]


def test_privacy_mode_leaves_input_and_output_empty(worker, service, user_id, bigquery):
    table = new_table(bigquery)
    key = bigquery.account("private", "dataEditor")
    view = add(service, user_id, bigquery, table, key, privacy=True)
    broadcast.delay(recent_event(1, user_id))
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 1, timeout=30)
    (row,) = bigquery.query(f"SELECT input, output, total_tokens, metadata FROM {qualified(table)}")
    assert row["input"] is None and row["output"] is None
    assert row["total_tokens"] == 28 and row["metadata"]["feature"] == "arithmetic"


def test_a_revoked_token_is_auth_failed(worker, service, user_id, bigquery):
    table = new_table(bigquery)
    key = bigquery.account("revoked", "dataEditor")
    view = add(service, user_id, bigquery, table, key)
    broadcast.delay(recent_event(1, user_id))
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 1, timeout=30)
    # The account is disabled: the worker's token (valid for an hour as far as it knows)
    # is refused, and so is any new grant.
    bigquery.tokens.disable(email_of(key))
    broadcast.delay(recent_event(2, user_id))
    wait_for(lambda: service.store.health(view["id"]).status == "auth_failed", timeout=30)
    log = service.deliveries(view["id"])
    assert log[0]["outcome"] == "auth_failed" and "401" in log[0]["error"]
    assert "UNAUTHENTICATED" in log[0]["error"] or "invalid authentication" in log[0]["error"]
    assert bigquery.query(f"SELECT COUNT(*) AS n FROM {qualified(table)}") == [{"n": 1}]


def test_a_token_ended_early_is_auth_failed_then_replaced(bigquery, transport):
    """BigQuery refuses a token before the expiry it was issued with (revoked by Google):
    that batch is auth_failed, and the next one asks for a new token instead of sending the
    refused one again until it expires."""
    table = new_table(bigquery)
    key = bigquery.account("expiring", "dataEditor")
    writer = destination(bigquery, table, key, transport)
    ctx = context()
    stem = uuid.uuid4().hex[:6]
    (first,) = writer.deliver_batch([build_trace(chat_event(1, id=f"{stem}-1"))], ctx)
    assert first.outcome is Outcome.DELIVERED
    bigquery.tokens.expire_tokens(email_of(key))
    (refused,) = writer.deliver_batch([build_trace(chat_event(2, id=f"{stem}-2"))], ctx)
    assert refused.outcome is Outcome.AUTH_FAILED and refused.status_code == 401
    (again,) = writer.deliver_batch([build_trace(chat_event(2, id=f"{stem}-2"))], ctx)
    assert again.outcome is Outcome.DELIVERED
    assert bigquery.tokens.issued.count(email_of(key)) == 2
    assert bigquery.query(f"SELECT COUNT(*) AS n FROM {qualified(table)}") == [{"n": 2}]
