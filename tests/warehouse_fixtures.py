"""The warehouse engines, started once per test session (a pytest plugin: conftest.py).

Each engine is a real process on loopback (tests/emulators/warehouses.py) that several
test modules write to (the warehouse integration tests, the secrets scan), so each is
started at most once, on first use, and stopped when the session ends. Tests keep apart
by creating their own tables.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.emulators.bigquery_front import BigQueryFront
from tests.emulators.google_oauth import GoogleTokenEndpoint
from tests.emulators.warehouses import BigQueryEngine, ClickHouseServer, SnowflakeServer

# ClickHouse users: the writer and a read-only one.
CLICKHOUSE_PASSWORD = "ch-" + uuid.uuid4().hex
CLICKHOUSE_READER_PASSWORD = "ro-" + uuid.uuid4().hex
# Snowflake programmatic access tokens: a writer, a reader and an expired one.
SNOWFLAKE_TOKEN = "pat-" + uuid.uuid4().hex
SNOWFLAKE_READER = "pat-ro-" + uuid.uuid4().hex
SNOWFLAKE_EXPIRED = "pat-old-" + uuid.uuid4().hex
# BigQuery: the project and dataset local-bigquery starts with.
BIGQUERY_PROJECT = "proj-1234"
BIGQUERY_DATASET = "openrouter"


@pytest.fixture(scope="session")
def clickhouse(workdir: Path) -> Iterator[ClickHouseServer]:
    server = ClickHouseServer(
        workdir,
        {"default": (CLICKHOUSE_PASSWORD, False), "reader": (CLICKHOUSE_READER_PASSWORD, True)},
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def snowflake(workdir: Path) -> Iterator[SnowflakeServer]:
    server = SnowflakeServer(
        workdir,
        {
            SNOWFLAKE_TOKEN: {"role": "writer"},
            SNOWFLAKE_READER: {"role": "reader"},
            SNOWFLAKE_EXPIRED: {"expired": True},
        },
    )
    yield server
    server.stop()


@dataclass
class GoogleCloud:
    """local-bigquery behind Google's front and token endpoint, and an admin client
    (google-cloud-bigquery, its own service account) that makes tables and runs queries."""

    engine: BigQueryEngine
    tokens: GoogleTokenEndpoint
    front: BigQueryFront
    client: Any  # google.cloud.bigquery.Client

    @property
    def url(self) -> str:
        return self.front.url

    def account(self, name: str, role: str) -> str:
        """A new service account holding `role` (bigquery_front.ROLES): its key file."""
        key = self.tokens.new_account(f"{name}-{uuid.uuid4().hex[:6]}")
        self.front.assign(email_of(key), role)
        return key

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Run GoogleSQL as the admin; the rows as dicts."""
        return [dict(row.items()) for row in self.client.query(sql).result()]


def email_of(key: str) -> str:
    return json.loads(key)["client_email"]


@pytest.fixture(scope="session")
def bigquery(workdir: Path) -> Iterator[GoogleCloud]:
    from google.api_core.client_options import ClientOptions
    from google.cloud import bigquery as bq
    from google.oauth2 import service_account

    engine = BigQueryEngine(workdir, BIGQUERY_PROJECT, BIGQUERY_DATASET)
    tokens = GoogleTokenEndpoint(BIGQUERY_PROJECT).__enter__()
    front = BigQueryFront(tokens, engine.url).__enter__()
    try:
        admin = tokens.new_account("admin")
        front.assign(email_of(admin), "admin")
        # google-auth's own transport reaches the loopback token endpoint for the admin.
        credentials = service_account.Credentials.from_service_account_info(
            json.loads(admin),
            scopes=["https://www.googleapis.com/auth/bigquery"],
        )
        client = bq.Client(
            project=BIGQUERY_PROJECT,
            credentials=credentials,
            client_options=ClientOptions(api_endpoint=front.url),
        )
        yield GoogleCloud(engine, tokens, front, client)
    finally:
        front.__exit__()
        tokens.__exit__()
        engine.stop()
