"""Prometheus metrics: real `broadcast metrics serve` processes scraped over HTTP, after
real deliveries, retries, dead letters, replays and rejections through the session's
worker; a second Redis with no worker and no destination for what an empty deployment
shows; broker queue states read from Redis."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
import requests
from kombu import Connection, Exchange, Queue
from prometheus_client.parser import text_string_to_metric_families

from broadcast_engine.events import RejectReason
from broadcast_interfaces.metrics import BroadcastCollector, Sources, cumulative, queue_depths
from harness.metrics_server import MetricsServer
from harness.processes import RedisServer, free_port
from harness.receiver import ReceivedRequest, Reply
from harness.samples import chat_event
from harness.waiting import wait_for
from settings.models import Health

QUEUES = ("broadcast.fanout", "broadcast.deliver", "broadcast.maintenance")
# Every family Broadcast exports, by the name its `# TYPE` line gives (a counter's with
# `_total`); each is in every scrape.
FAMILIES = {
    "broadcast_destinations": "gauge",
    "broadcast_destination_traces_total": "counter",
    "broadcast_destination_trace_retries_total": "counter",
    "broadcast_destination_replays_total": "counter",
    "broadcast_destination_requests_total": "counter",
    "broadcast_destination_request_duration_seconds": "histogram",
    "broadcast_delivery_latency_seconds": "histogram",
    "broadcast_destination_health": "gauge",
    "broadcast_destination_enabled": "gauge",
    "broadcast_destination_circuit_open": "gauge",
    "broadcast_destination_circuit_next_probe_timestamp_seconds": "gauge",
    "broadcast_destination_dead_letters": "gauge",
    "broadcast_backlog_depth": "gauge",
    "broadcast_backlog_in_flight": "gauge",
    "broadcast_backlog_bytes": "gauge",
    "broadcast_backlog_oldest_age_seconds": "gauge",
    "broadcast_events_received_total": "counter",
    "broadcast_events_fanned_out_total": "counter",
    "broadcast_events_filtered_total": "counter",
    "broadcast_events_duplicate_total": "counter",
    "broadcast_events_rejected_total": "counter",
    "broadcast_unreadable_messages_total": "counter",
    "broadcast_beat_last_sweep_timestamp_seconds": "gauge",
    "broadcast_broker_up": "gauge",
    "broadcast_queue_depth": "gauge",
    "broadcast_queue_consumers": "gauge",
    "broadcast_queue_oldest_message_age_seconds": "gauge",
}


@pytest.fixture(scope="module")
def metrics(redis_server, workdir) -> Iterator[MetricsServer]:
    server = MetricsServer(os.environ, workdir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def metrics_by_type(redis_server, workdir) -> Iterator[MetricsServer]:
    env = {**os.environ, "BROADCAST_METRICS_PER_DESTINATION": "0"}
    server = MetricsServer(env, workdir, "metrics-by-type")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def empty(workdir) -> Iterator[tuple[RedisServer, MetricsServer]]:
    """A Redis of its own with no destination and no worker, and a metrics server on it."""
    server = RedisServer(workdir, name="redis-metrics-empty")
    env = {**os.environ, "BROADCAST_BROKER_URL": server.url, "BROADCAST_STORE_URL": server.url}
    metrics_server = MetricsServer(env, workdir, "metrics-empty")
    yield server, metrics_server
    metrics_server.stop()
    server.stop()


def scrape(url: str) -> dict[str, list]:
    """Samples by name, each as (labels, value)."""
    response = requests.get(url, timeout=10)
    response.raise_for_status()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def types(url: str) -> dict[str, str]:
    """Each family's `# TYPE` line: name -> type."""
    text = requests.get(url, timeout=10).text
    return {
        line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")
    }


def value(samples: dict[str, list], name: str, **labels: str) -> float | None:
    for found, number in samples.get(name, []):
        if all(found.get(k) == v for k, v in labels.items()):
            return number
    return None


def total(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(
        number
        for found, number in samples.get(name, [])
        if all(found.get(k) == v for k, v in labels.items())
    )


class Vendor:
    """A webhook receiver whose answer to deliveries can change (Test Connection: 200)."""

    def __init__(self, receiver: Callable[..., object], status: int = 200) -> None:
        self.status = status
        self.fail_first = 0  # answer this many deliveries 503 before `status`
        self._lock = threading.Lock()
        self.sink = receiver(self._respond)

    def _respond(self, request: ReceivedRequest) -> Reply:
        if request.headers.get("x-test-connection"):
            return Reply(200, b"{}")
        with self._lock:
            if self.fail_first > 0:
                self.fail_first -= 1
                return Reply(503, b"{}")
        return Reply(self.status, b"{}")


def destination(service, user_id: str, vendor: Vendor, name: str) -> tuple[str, dict[str, str]]:
    owner = f"user:{user_id}"
    view = service.add_destination(owner, "webhook", name, {"url": vendor.sink.url + "/in"})
    return view["id"], {"destination": view["id"], "type": "webhook", "owner": owner}


def test_every_family_is_there_with_no_destination(empty):
    _redis, server = empty
    assert {name: kind for name, kind in types(server.url).items() if name in FAMILIES} == FAMILIES
    samples = scrape(server.url)
    assert value(samples, "broadcast_destinations") == 0
    assert value(samples, "broadcast_events_received_total") == 0
    for reason in RejectReason:
        assert value(samples, "broadcast_events_rejected_total", reason=reason.value) == 0
    assert value(samples, "broadcast_beat_last_sweep_timestamp_seconds") == 0
    for queue in QUEUES:
        assert value(samples, "broadcast_queue_depth", queue=queue) == 0
        assert value(samples, "broadcast_queue_consumers", queue=queue) == 0
        assert value(samples, "broadcast_queue_oldest_message_age_seconds", queue=queue) == 0


def test_oldest_waiting_message_age_from_the_stream_entry_id(empty):
    """With no worker reading, a message added 30 s ago is 30 s old (the entry id is the
    millisecond it was added)."""
    server, metrics_server = empty
    client = redis.Redis.from_url(server.url)
    sent_ms = int(time.time() * 1000) - 30_000
    client.xadd("broadcast.fanout:stream", {"b": "{}"}, id=f"{sent_ms}-0")
    try:
        samples = scrape(metrics_server.url)
        age = value(samples, "broadcast_queue_oldest_message_age_seconds", queue="broadcast.fanout")
        assert 29.0 <= age < 90.0
        assert value(samples, "broadcast_queue_depth", queue="broadcast.fanout") == 1
        assert value(samples, "broadcast_queue_consumers", queue="broadcast.fanout") == 0
    finally:
        client.delete("broadcast.fanout:stream")


def test_deliveries_count_traces_requests_and_health(metrics, worker, service, user_id, receiver):
    from tasks import broadcast

    before = scrape(metrics.url)
    vendor = Vendor(receiver)
    dest, labels = destination(service, user_id, vendor, "metrics")
    for index in range(3):
        broadcast.delay(chat_event(index, user_id=user_id, id=f"{user_id}-m{index}"))
    wait_for(lambda: service.store.counters(dest)["delivered"] == 3, timeout=30)

    samples = scrape(metrics.url)
    traces = "broadcast_destination_traces_total"
    assert value(samples, traces, **labels, outcome="delivered") == 3
    assert value(samples, traces, **labels, outcome="failed") == 0
    assert value(samples, traces, **labels, outcome="retried") is None  # not a trace outcome
    assert value(samples, "broadcast_destination_trace_retries_total", **labels) == 0
    requests_2xx = value(samples, "broadcast_destination_requests_total", **labels,
                         status_class="2xx")  # fmt: skip
    assert 1 <= requests_2xx <= 3  # one request per batch
    assert value(samples, "broadcast_destination_request_duration_seconds_count", **labels) == (
        requests_2xx
    )
    assert value(samples, "broadcast_destination_request_duration_seconds_sum", **labels) > 0
    assert value(samples, "broadcast_delivery_latency_seconds_count", **labels) == 3
    assert value(samples, "broadcast_delivery_latency_seconds_bucket", **labels, le="+Inf") == 3
    for status in Health:
        expected = 1 if status is Health.HEALTHY else 0
        assert value(samples, "broadcast_destination_health", **labels, status=status.value) == (
            expected
        )
    assert value(samples, "broadcast_destination_enabled", **labels) == 1
    assert value(samples, "broadcast_destination_circuit_open", **labels) == 0
    assert value(samples, "broadcast_destination_dead_letters", **labels) == 0
    assert value(samples, "broadcast_backlog_depth", **labels) == 0
    assert value(samples, "broadcast_backlog_oldest_age_seconds", **labels) == 0
    assert value(samples, "broadcast_broker_up") == 1
    for queue in QUEUES:  # the session's worker reads every queue
        assert value(samples, "broadcast_queue_consumers", queue=queue) >= 1
        assert value(samples, "broadcast_queue_depth", queue=queue) is not None

    # Fan-out's tally reaches the store within about a second.
    def fanned_out() -> float:
        return value(scrape(metrics.url), "broadcast_events_fanned_out_total") - value(
            before, "broadcast_events_fanned_out_total"
        )

    wait_for(lambda: fanned_out() >= 3, timeout=10, what="the fan-out tally")


def test_a_retried_trace_is_counted_once_and_its_attempts_apart(
    metrics, worker, service, user_id, receiver
):
    from tasks import broadcast

    vendor = Vendor(receiver)
    vendor.fail_first = 1  # the first delivery fails, its retry goes through
    dest, labels = destination(service, user_id, vendor, "retried")
    broadcast.delay(chat_event(0, user_id=user_id, id=f"{user_id}-r0"))
    wait_for(lambda: service.store.counters(dest)["delivered"] == 1, timeout=30)

    samples = scrape(metrics.url)
    assert value(samples, "broadcast_destination_traces_total", **labels,
                 outcome="delivered") == 1  # fmt: skip
    assert value(samples, "broadcast_destination_trace_retries_total", **labels) == 1
    requests_total = "broadcast_destination_requests_total"
    assert value(samples, requests_total, **labels, status_class="5xx") == 1
    assert value(samples, requests_total, **labels, status_class="2xx") == 1
    assert value(samples, "broadcast_destination_request_duration_seconds_count", **labels) == 2


def test_dead_letters_and_replays_are_counted_as_replays(
    metrics, worker, service, user_id, receiver
):
    from tasks import broadcast

    vendor = Vendor(receiver, status=400)  # permanent: dead-lettered at once
    dest, labels = destination(service, user_id, vendor, "dead")
    broadcast.delay(chat_event(0, user_id=user_id, id=f"{user_id}-d0"))
    wait_for(lambda: service.store.counters(dest)["failed"] == 1, timeout=30)

    samples = scrape(metrics.url)
    assert value(samples, "broadcast_destination_dead_letters", **labels) == 1
    assert value(samples, "broadcast_destination_traces_total", **labels, outcome="failed") == 1
    assert value(samples, "broadcast_destination_requests_total", **labels,
                 status_class="4xx") == 1  # fmt: skip

    vendor.status = 200
    assert service.replay(dest, service.dead_letters(dest)).sent == [f"{user_id}-d0"]
    wait_for(lambda: service.store.counters(dest)["replay_delivered"] == 1, timeout=30)
    samples = scrape(metrics.url)
    replays = "broadcast_destination_replays_total"
    assert value(samples, replays, **labels, outcome="requeued") == 1
    assert value(samples, replays, **labels, outcome="delivered") == 1
    assert value(samples, replays, **labels, outcome="failed") == 0
    traces = "broadcast_destination_traces_total"
    assert value(samples, traces, **labels, outcome="delivered") == 0  # not a delivery again
    assert value(samples, traces, **labels, outcome="failed") == 1


def test_rejected_events_are_counted_by_reason_class(metrics, worker, service, user_id):
    from tasks import broadcast

    rejected = "broadcast_events_rejected_total"
    before = scrape(metrics.url)
    broadcast.delay(["not", "an", "object"])
    broken = chat_event(0, user_id=user_id, id=f"{user_id}-x0")
    del broken["model"]
    broadcast.delay(broken)

    def counted() -> bool:
        now = scrape(metrics.url)
        return all(
            value(now, rejected, reason=reason) - value(before, rejected, reason=reason) == 1
            for reason in ("not_an_object", "schema")
        )

    wait_for(counted, timeout=30, what="both rejections to be counted")
    after = scrape(metrics.url)
    assert value(after, rejected, reason="limits") == value(before, rejected, reason="limits")
    # Received counts every event fan-out took, rejected ones included.
    received = "broadcast_events_received_total"
    assert value(after, received) - value(before, received) >= 2


def test_without_destination_labels_series_are_per_type(
    metrics, metrics_by_type, worker, service, user_id, receiver
):
    from tasks import broadcast

    vendor = Vendor(receiver)
    dest, _labels = destination(service, user_id, vendor, "by-type")
    broadcast.delay(chat_event(0, user_id=user_id, id=f"{user_id}-t0"))
    wait_for(lambda: service.store.counters(dest)["delivered"] == 1, timeout=30)

    by_destination, by_type = scrape(metrics.url), scrape(metrics_by_type.url)
    traces = "broadcast_destination_traces_total"
    for labels, _number in by_type[traces]:
        assert set(labels) == {"type", "outcome"}
    assert value(by_type, traces, type="webhook", outcome="delivered") == total(
        by_destination, traces, type="webhook", outcome="delivered"
    )
    assert value(by_type, "broadcast_destination_health", type="webhook",
                 status="healthy") == total(
        by_destination, "broadcast_destination_health", type="webhook", status="healthy"
    )  # fmt: skip
    latency = "broadcast_delivery_latency_seconds_count"
    assert value(by_type, latency, type="webhook") == total(by_destination, latency,
                                                            type="webhook")  # fmt: skip


def test_metrics_server_probes(metrics, workdir):
    assert requests.get(f"{metrics.base}/healthz", timeout=5).json() == {"ok": True}
    ready = requests.get(f"{metrics.base}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["ok"] is True

    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = {**os.environ, "BROADCAST_BROKER_URL": dead, "BROADCAST_STORE_URL": dead}
    server = MetricsServer(env, workdir, "metrics-no-store")
    try:
        assert requests.get(f"{server.base}/healthz", timeout=5).status_code == 200
        unready = requests.get(f"{server.base}/readyz", timeout=10)
        assert unready.status_code == 503
        assert unready.json()["ok"] is False and "store" in unready.json()["error"]
    finally:
        server.stop()


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
    assert families["broadcast_queue_depth"].samples == []  # the family, without samples


def test_histogram_buckets_become_cumulative():
    assert cumulative([0.1, 1.0, float("inf")], [1, 2, 1]) == [
        ("0.1", 1),
        ("1.0", 3),
        ("+Inf", 4),
    ]
