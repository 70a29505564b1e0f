"""`GET /healthz` and `GET /readyz` on a real `broadcast serve`: no management key needed,
and readiness follows the settings store."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests

from harness.api_server import ApiServer
from harness.processes import free_port


@pytest.fixture(scope="module")
def api(redis_server, workdir) -> Iterator[ApiServer]:
    server = ApiServer(os.environ, workdir)
    yield server
    server.stop()


def test_probes_answer_without_a_management_key(api):
    live = requests.get(f"{api.url}/healthz", timeout=5)
    assert (live.status_code, live.json()) == (200, {"ok": True})
    ready = requests.get(f"{api.url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["ok"] is True and ready.json()["ping_ms"] >= 0
    # The API's own routes still want a key.
    assert requests.get(f"{api.url}/api/v1/observability/status", timeout=5).status_code == 401


def test_readyz_is_503_while_the_store_is_unreachable(workdir):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = {**os.environ, "BROADCAST_BROKER_URL": dead, "BROADCAST_STORE_URL": dead}
    server = ApiServer(env, workdir)
    try:
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
        ready = requests.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json() == {
            "ok": False,
            "error": "the settings store does not answer: ConnectionError",
        }
    finally:
        server.stop()


def test_probes_are_not_in_the_openapi_document(api):
    """They are for orchestrators, not the dashboard's API (and take no input to fuzz)."""
    paths = requests.get(f"{api.url}/openapi.json", timeout=5).json()["paths"]
    assert "/healthz" not in paths and "/readyz" not in paths
    assert "/api/v1/observability/destinations" in paths
