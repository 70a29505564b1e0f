"""Start the warehouse engines the integration tests write to, each as a loopback process.

| warehouse | engine | virtualenv (Makefile) |
| --- | --- | --- |
| ClickHouse | chdb behind `clickhouse_http` (ClickHouse's HTTP interface) | `.venv-warehouses` |
| Snowflake | fakesnow behind `snowflake_sql_api` (the SQL API v2) | `.venv-warehouses` |
| BigQuery | local-bigquery (`bigquery_engine`) | `.venv-bigquery` |

BigQuery's engine is reached through `bigquery_front` (tokens, scopes, IAM) and
`google_oauth` (the token endpoint), both running in the test process.

The engines' virtualenvs are their own: chdb, fakesnow and local-bigquery pin versions
(duckdb, the Snowflake connector, Python 3.13) that Broadcast's own environment need not
share. `make setup` builds them; a missing one fails the fixture with that hint. The
session fixtures that start them are in tests/warehouse_fixtures.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import requests

from harness.processes import ROOT, ManagedProcess, free_port
from harness.waiting import wait_for

WAREHOUSES_PYTHON = ROOT / ".venv-warehouses" / "bin" / "python"
BIGQUERY_PYTHON = ROOT / ".venv-bigquery" / "bin" / "python"


def _python(path: Path) -> str:
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `make setup` (it builds the emulators' venvs)")
    return str(path)


def _start(name: str, argv: Sequence[str], workdir: Path, probe_url: str) -> ManagedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    process = ManagedProcess(name, argv, env, workdir)

    def up() -> bool:
        if not process.alive():
            raise RuntimeError(f"{name} exited:\n{process.log_tail()}")
        try:
            requests.get(probe_url, timeout=1)
        except requests.ConnectionError:
            return False
        return True

    wait_for(up, timeout=60, what=f"the {name} emulator")
    return process


class ClickHouseServer:
    """chdb behind ClickHouse's HTTP interface. `users`: name -> (password, read-only)."""

    def __init__(self, workdir: Path, users: Mapping[str, tuple[str, bool]]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        users_file = workdir / "clickhouse-users.json"
        users_file.write_text(
            json.dumps({n: {"password": p, "readonly": ro} for n, (p, ro) in users.items()})
        )
        self.users = dict(users)
        self.process = _start(
            "clickhouse",
            [
                _python(WAREHOUSES_PYTHON),
                "-m",
                "tests.emulators.clickhouse_http",
                "--port",
                str(self.port),
                "--users",
                str(users_file),
                "--data",
                str(workdir / "chdb-data"),
            ],
            workdir,
            self.url + "/ping",
        )

    def query(self, sql: str, user: str = "default", **params: str) -> str:
        """Run SQL as `user` (the way `clickhouse-client` would); raises on an error."""
        response = requests.post(
            self.url + "/",
            params=params,
            data=sql.encode(),
            headers={"X-ClickHouse-User": user, "X-ClickHouse-Key": self.users[user][0]},
            timeout=30,
        )
        if response.status_code != 200:
            raise AssertionError(f"ClickHouse {response.status_code}: {response.text}")
        return response.text

    def rows(self, sql: str) -> list[dict]:
        text = self.query(sql + " FORMAT JSONEachRow")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def stop(self) -> None:
        self.process.stop()


class SnowflakeServer:
    """fakesnow behind Snowflake's SQL API v2. `tokens`: PAT -> `{"role": "writer"}`..."""

    def __init__(self, workdir: Path, tokens: Mapping[str, Mapping[str, object]]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tokens_file = workdir / "snowflake-tokens.json"
        tokens_file.write_text(json.dumps(tokens))
        self.admin = next(t for t, grant in tokens.items() if grant.get("role") == "writer")
        self.process = _start(
            "snowflake",
            [
                _python(WAREHOUSES_PYTHON),
                "-m",
                "tests.emulators.snowflake_sql_api",
                "--port",
                str(self.port),
                "--tokens",
                str(tokens_file),
            ],
            workdir,
            self.url + "/",
        )

    def execute(
        self, sql: str, *values: str, database: str = "DB", schema: str = "PUBLIC"
    ) -> list[list[str | None]]:
        """Run SQL through the SQL API as the admin token; the rows as strings."""
        response = requests.post(
            self.url + "/api/v2/statements",
            json={
                "statement": sql,
                "database": database,
                "schema": schema,
                "bindings": {str(i): {"type": "TEXT", "value": v} for i, v in enumerate(values, 1)},
            },
            headers={
                "Authorization": f"Bearer {self.admin}",
                "X-Snowflake-Authorization-Token-Type": "PROGRAMMATIC_ACCESS_TOKEN",
            },
            timeout=30,
        )
        if response.status_code != 200:
            raise AssertionError(f"Snowflake {response.status_code}: {response.text}")
        return response.json()["data"]

    def stop(self) -> None:
        self.process.stop()


class BigQueryEngine:
    """local-bigquery (`bigquery_engine`), the project's default dataset created.

    It answers anyone with anything: `bigquery_front.BigQueryFront` in front of it checks
    tokens, scopes and permissions."""

    def __init__(self, workdir: Path, project: str, dataset: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = _start(
            "bigquery",
            [
                _python(BIGQUERY_PYTHON),
                "-m",
                "tests.emulators.bigquery_engine",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--grpc-port",
                str(free_port()),
                "--project",
                project,
                "--dataset",
                dataset,
                "--data-dir",
                str(workdir / "bigquery-data"),
            ],
            workdir,
            self.url + "/discovery/v1/apis/bigquery/v2/rest",
        )

    def stop(self) -> None:
        self.process.stop()
