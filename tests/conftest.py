"""Shared fixtures: a real redis-server, a real Celery worker, the settings service.

The environment is set here, before anything imports `tasks` or `celeryconfig`, so the
test process (which sends `broadcast.delay`) and the worker it starts use the same
throwaway Redis.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from destinations.transport import HttpTransport
from destinations.url_guard import NetworkPolicy
from harness.processes import (
    ManagedProcess,
    MotoServer,
    RedisServer,
    celery_worker,
    free_port,
    scratch_dir,
)
from harness.rabbitmq import RabbitMQServer
from harness.receiver import Receiver, Reply, Responder
from settings.crypto import generate_key

# The warehouse engines' session fixtures (clickhouse, snowflake, bigquery).
pytest_plugins = ["tests.warehouse_fixtures"]

WORKDIR = scratch_dir("broadcast-tests-")
REDIS_PORT = free_port()
TEST_ENV = {
    "BROADCAST_BROKER_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
    "BROADCAST_STORE_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
    "BROADCAST_ENCRYPTION_KEYS": generate_key(),
    "BROADCAST_ALLOW_PRIVATE_NETWORKS": "1",
    # Short waits so retry tests take seconds; the policy is the same.
    "BROADCAST_RETRY_BASE_SECONDS": "0.2",
    "BROADCAST_RETRY_CAP_SECONDS": "10",
    "BROADCAST_PROBE_SCHEDULE_SECONDS": "1,2,4",
    "BROADCAST_READ_TIMEOUT": "5",
    # Above the longest request of a test (read timeout 5 s), so no batch is reclaimed
    # from a live task; short, so a killed task's batch comes back within seconds.
    "BROADCAST_CLAIM_LEASE_SECONDS": "8",
    # Every test's client is 127.0.0.1: the API's failed-key throttle would count them all
    # together. tests/test_api_guard.py starts an API of its own with the default.
    "BROADCAST_API_AUTH_FAILURES": "1000000",
}
os.environ.update(TEST_ENV)


@pytest.fixture(scope="session")
def workdir() -> Path:
    return WORKDIR


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(WORKDIR, port=REDIS_PORT)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def worker(redis_server: RedisServer) -> Iterator[ManagedProcess]:
    """One real worker (threads pool) consuming every Broadcast queue."""
    process = celery_worker(os.environ, WORKDIR)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def rabbitmq(workdir: Path) -> Iterator[RabbitMQServer]:
    """A RabbitMQ node of the session's own (tests on the AMQP broker share it)."""
    server = RabbitMQServer(workdir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer(WORKDIR)
    yield server
    server.stop()


@pytest.fixture
def service(redis_server: RedisServer):
    """The settings service of the test process, on the test Redis."""
    from broadcast_interfaces.service import settings_service

    return settings_service()


@pytest.fixture
def store(service):
    return service.store


@pytest.fixture
def user_id(service) -> Iterator[str]:
    """A fresh user with Broadcast enabled; its owner is `user:<id>`. Its destinations are
    removed after the test: the session's worker would otherwise go on probing a vendor
    whose receiver is gone, and the next test would see that traffic as its own."""
    uid = f"u{uuid.uuid4().hex[:12]}"
    service.set_enabled(f"user:{uid}", True)
    yield uid
    with contextlib.suppress(redis.RedisError):  # a test may leave Redis stopped
        for view in service.list_destinations(f"user:{uid}"):
            service.remove_destination(view["id"])


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    """Factory: `receiver(responder)` starts a real HTTP server, stopped after the test."""
    started: list[Receiver] = []

    def start(responder: Responder | None = None) -> Receiver:
        instance = Receiver(responder or (lambda _r: Reply(200, b"{}"))).start()
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Keep the scratch directory (process logs) only when something failed."""
    if exitstatus == 0:
        import shutil

        shutil.rmtree(WORKDIR, ignore_errors=True)
    else:
        print(f"\nprocess logs kept in {WORKDIR}")


@pytest.fixture(scope="module")
def transport() -> Iterator[HttpTransport]:
    """The shared HTTP transport, allowed to reach the loopback emulators."""
    transport = HttpTransport(NetworkPolicy(allow_private_networks=True))
    yield transport
    transport.close()
