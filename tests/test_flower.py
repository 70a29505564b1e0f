"""Flower against the Redis broker (issue 17, item 7): its Broker page and queue-length API
answer instead of erroring. The stream transport's connection URL reads `redis://`, so
Flower picks its Redis client; the counts it shows are kombu's list lengths (messages a
list client pushed that the workers have not moved into the streams yet): the supported
queue depth is the metric `broadcast_queue_depth` (docs/production.md)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
import requests

from harness.processes import ManagedProcess, free_port
from harness.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def flower(worker, workdir) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"}
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "flower"]
    argv += [f"--port={port}", "--address=127.0.0.1"]
    process = ManagedProcess("flower", argv, env, workdir)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not process.alive():
            raise RuntimeError(f"flower exited:\n{process.log_tail()}")
        try:
            return requests.get(url + "/healthcheck", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=60, what="Flower to answer")
    yield url
    process.stop()


def test_flowers_broker_page_answers_for_the_redis_broker(flower):
    page = requests.get(flower + "/broker", timeout=10)
    assert page.status_code == 200
    assert "redis://" in page.text and "not supported" not in page.text


def test_flowers_queue_length_api_answers_for_the_redis_broker(flower):
    answer = requests.get(flower + "/api/queues/length", timeout=10)
    assert answer.status_code == 200
    assert isinstance(answer.json()["active_queues"], list)
