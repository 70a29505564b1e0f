"""Prometheus metrics: a real `broadcast metrics serve` process scraped over HTTP, after
real deliveries through the session's worker; broker queue depths read from Redis."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from kombu import Connection, Exchange, Queue
from prometheus_client.parser import text_string_to_metric_families

from broadcast_interfaces.metrics import BroadcastCollector, Sources, queue_depths
from harness.processes import ManagedProcess, free_port
from harness.samples import chat_event
from harness.waiting import wait_for
from settings.store import LatencyHistogram

BROADCAST = str(Path(sys.executable).parent / "broadcast")


@pytest.fixture(scope="module")
def metrics_url(redis_server, workdir) -> Iterator[str]:
    port = free_port()
    process = ManagedProcess(
        "metrics", [BROADCAST, "metrics", "serve", "--port", str(port)], os.environ, workdir
    )
    url = f"http://127.0.0.1:{port}/metrics"

    def up() -> bool:
        if not process.alive():
            raise RuntimeError(f"metrics server exited:\n{process.log_tail()}")
        try:
            return requests.get(url, timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=30, what="the metrics server")
    yield url
    process.stop()


def scrape(url: str) -> dict[str, list]:
    """Samples by name, each as (labels, value)."""
    response = requests.get(url, timeout=10)
    response.raise_for_status()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float | None:
    for found, number in samples.get(name, []):
        if all(found.get(k) == v for k, v in labels.items()):
            return number
    return None


def test_counters_and_latency_after_real_deliveries(
    metrics_url, worker, service, user_id, receiver
):
    from tasks import broadcast

    sink = receiver()
    owner = f"user:{user_id}"
    dest = service.add_destination(owner, "webhook", "metrics", {"url": sink.url + "/in"})
    for index in range(3):
        broadcast.delay(chat_event(index, user_id=user_id, id=f"{user_id}-m{index}"))
    wait_for(lambda: service.store.counters(dest["id"])["delivered"] == 3, timeout=30)

    samples = scrape(metrics_url)
    labels = {"destination": dest["id"], "type": "webhook", "owner": owner}
    assert value(samples, "broadcast_destination_traces_total", **labels, outcome="delivered") == 3
    assert value(samples, "broadcast_destination_traces_total", **labels, outcome="failed") == 0
    assert value(samples, "broadcast_delivery_latency_seconds_count", **labels) == 3
    assert value(samples, "broadcast_delivery_latency_seconds_bucket", **labels, le="+Inf") == 3
    assert value(samples, "broadcast_delivery_latency_seconds_sum", **labels) > 0
    assert value(samples, "broadcast_backlog_depth", **labels) == 0
    assert value(samples, "broadcast_backlog_oldest_age_seconds", **labels) == 0
    assert value(samples, "broadcast_broker_up") == 1
    for queue in ("broadcast.fanout", "broadcast.deliver", "broadcast.maintenance"):
        assert value(samples, "broadcast_queue_depth", queue=queue) is not None


def test_queue_depth_counts_messages_waiting_in_redis(redis_server):
    queue = Queue("bc-test.depth", Exchange("bc-test.depth", type="direct"), "bc-test.depth")
    with Connection(redis_server.url) as connection:
        producer = connection.Producer()
        for index in range(3):
            producer.publish({"n": index}, exchange=queue.exchange, routing_key="bc-test.depth",
                             declare=[queue])  # fmt: skip
    depths = queue_depths(redis_server.url, ["bc-test.depth", "bc-test.never"], timeout=2)
    assert depths == {"bc-test.depth": 3, "bc-test.never": 0}
    with Connection(redis_server.url) as connection:
        queue.bind(connection.default_channel).purge()


def test_broker_down_is_reported_not_raised(store):
    sources = Sources(store=store, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    families = {f.name: f for f in BroadcastCollector(lambda: sources).collect()}
    assert families["broadcast_broker_up"].samples[0].value == 0
    assert "broadcast_queue_depth" not in families


class _OneDestination:
    """A store holding one destination with a fixed histogram (the collector's input)."""

    def all_destination_ids(self) -> list[str]:
        return ["d1"]

    def get_destinations(self, ids):
        from types import SimpleNamespace

        return [SimpleNamespace(id="d1", type="webhook", owner="user:u1")]

    def counters(self, destination_id: str) -> dict[str, int]:
        return {"delivered": 4}

    def latency_histogram(self, destination_id: str) -> LatencyHistogram:
        return LatencyHistogram(((0.1, 1), (1.0, 2), (float("inf"), 1)), 3.5, 4)


def test_histogram_buckets_become_cumulative():
    sources = Sources(store=_OneDestination(), broker_url="redis://127.0.0.1:1/0",
                      broker_timeout=0.2)  # fmt: skip
    family = next(
        f
        for f in BroadcastCollector(lambda: sources).collect()
        if f.name == "broadcast_delivery_latency_seconds"
    )
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert buckets == {"0.1": 1, "1.0": 3, "+Inf": 4}
    assert {s.name: s.value for s in family.samples if not s.name.endswith("_bucket")} == {
        "broadcast_delivery_latency_seconds_count": 4,
        "broadcast_delivery_latency_seconds_sum": 3.5,
    }
