"""ClickHouse, Snowflake and BigQuery destinations on the session's engines, for tests that
look across every kind of destination (the secrets scan): each with its table made from
the one schema definition, its credentials, and the forms those credentials take."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from broadcast_interfaces.service import SettingsService
from destinations.warehouse_schema import BIGQUERY, CLICKHOUSE, SNOWFLAKE, create_table
from tests.emulators.warehouses import ClickHouseServer, SnowflakeServer
from tests.warehouse_fixtures import (
    BIGQUERY_DATASET,
    BIGQUERY_PROJECT,
    CLICKHOUSE_PASSWORD,
    SNOWFLAKE_TOKEN,
    GoogleCloud,
    email_of,
)


@dataclass
class WarehouseDestinations:
    ids: list[str]
    secrets: list[str]  # the configured credentials, and the parts of them that matter
    bigquery: GoogleCloud
    bigquery_key: str

    def issued_tokens(self) -> list[str]:
        """The BigQuery access tokens issued to the destination so far (derived at run time,
        so no configured secret covers them)."""
        return self.bigquery.tokens.tokens_of(email_of(self.bigquery_key))


def add_warehouse_destinations(
    service: SettingsService,
    owner: str,
    clickhouse: ClickHouseServer,
    snowflake: SnowflakeServer,
    bigquery: GoogleCloud,
) -> WarehouseDestinations:
    """One destination of each warehouse type for `owner`, Test Connection passed."""
    table = f"T_{uuid.uuid4().hex[:10].upper()}"
    clickhouse.query(create_table(CLICKHOUSE, table=table, database="default"))
    snowflake.execute(create_table(SNOWFLAKE, table=table))
    bigquery.query(create_table(BIGQUERY, table=table.lower(), dataset=BIGQUERY_DATASET))
    key = bigquery.account("leakcheck", "dataEditor")
    configs = {
        "clickhouse": {
            "host": clickhouse.url,
            "database": "default",
            "table": table,
            "username": "default",
            "password": CLICKHOUSE_PASSWORD,
        },
        "snowflake": {
            "account": "xy12345.us-east-1",
            "token": SNOWFLAKE_TOKEN,
            "database": "DB",
            "schema": "PUBLIC",
            "table": table,
            "warehouse": "COMPUTE_WH",
            "endpoint": snowflake.url,
        },
        "bigquery": {
            "project_id": BIGQUERY_PROJECT,
            "service_account_json": key,
            "dataset": BIGQUERY_DATASET,
            "table": table.lower(),
            "endpoint": bigquery.url,
        },
    }
    ids = [
        service.add_destination(owner, type_, type_.title(), config)["id"]
        for type_, config in configs.items()
    ]
    private_key = json.loads(key)["private_key"]
    pem_body = [line for line in private_key.splitlines() if not line.startswith("-----")]
    secrets = [CLICKHOUSE_PASSWORD, SNOWFLAKE_TOKEN, key, private_key, pem_body[len(pem_body) // 2]]
    return WarehouseDestinations(ids, secrets, bigquery, key)
