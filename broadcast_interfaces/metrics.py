"""Prometheus metrics, read from Redis and the broker at scrape time.

Nothing is counted in process memory: every number comes from the settings store (the
counters and histograms the workers keep there), the backlog and the broker, so one
`broadcast metrics serve` gives the same answer whatever pool the workers run, prefork
children included, and however many workers there are.

Series (labels `destination`, `type`, `owner` unless said otherwise):

- `broadcast_destination_traces_total{outcome=...}` (counter): `store.counters(id)`,
  i.e. delivered, failed, retried, dropped_overflow, filtered_by_key, sampled_out, ...
- `broadcast_delivery_latency_seconds` (histogram): `store.latency_histogram(id)`.
- `broadcast_backlog_depth`, `_in_flight`, `_bytes`, `_oldest_age_seconds` (gauges):
  `backlog.stats(id, now)`.
- `broadcast_queue_depth{queue=...}` (gauge, no destination labels): messages ready in
  each Celery queue, read from the broker; `broadcast_broker_up` says whether it answered.
- `broadcast_destinations` (gauge): destinations known to the store.
- `broadcast_destination_circuit_open` (gauge): 1 while the destination's circuit is open
  (its backlog waits, probed on the schedule);
  `broadcast_destination_circuit_next_probe_timestamp_seconds` (gauge): when the next
  probe is due (unix seconds; 0 while closed).
- `broadcast_unreadable_messages_total{queue=...}` (counter, no destination labels):
  broker messages no worker could read, set aside (broadcast_engine/unreadable_messages.py).

A source that this version of the store or runtime does not provide (no
`latency_histogram`, no backlog) is left out of the scrape rather than failing it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kombu import Connection
from kombu.exceptions import ChannelError, OperationalError
from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from broadcast_broker.topology import TASK_QUEUES, transport_for

logger = logging.getLogger("broadcast.metrics")

LABELS = ("destination", "type", "owner")


class Store(Protocol):
    """What the collector reads from `settings.store.SettingsStore`."""

    def all_destination_ids(self) -> list[str]: ...
    def get_destinations(self, ids: Iterable[str]) -> list[Any]: ...
    def counters(self, destination_id: str) -> dict[str, int]: ...


@dataclass(frozen=True)
class Sources:
    """Where the numbers come from. `backlog` is None until the runtime provides one."""

    store: Store
    broker_url: str
    backlog: Any | None = None
    unreadable: Any | None = None
    queues: Sequence[str] = TASK_QUEUES
    broker_timeout: float = 2.0


class BroadcastCollector(Collector):
    """A custom collector: builds every family afresh on each scrape."""

    def __init__(self, sources: Callable[[], Sources]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        sources = self._sources()
        now = time.time()
        destinations = [
            (record.id, record.type, record.owner)
            for record in sources.store.get_destinations(sources.store.all_destination_ids())
        ]
        count = GaugeMetricFamily("broadcast_destinations", "Destinations in the store.")
        count.add_metric([], len(destinations))
        yield count
        yield _counters(sources.store, destinations)
        histogram_of = getattr(sources.store, "latency_histogram", None)
        if histogram_of is not None:
            yield _latency(histogram_of, destinations)
        healths_of = getattr(sources.store, "healths", None)
        if healths_of is not None:
            yield from _circuits(healths_of, destinations)
        if sources.backlog is not None:
            yield from _backlog(sources.backlog, destinations, now)
        if sources.unreadable is not None:
            yield _unreadable(sources.unreadable.counts())
        yield from _queues(sources)


def _counters(store: Store, destinations: Iterable[tuple[str, ...]]) -> Metric:
    family = CounterMetricFamily(
        "broadcast_destination_traces",
        "Traces per destination by what happened to them (store counters).",
        labels=(*LABELS, "outcome"),
    )
    for labels in destinations:
        for outcome, value in sorted(store.counters(labels[0]).items()):
            family.add_metric([*labels, outcome], value)
    return family


def _latency(histogram_of: Callable[[str], Any], destinations: Iterable[tuple[str, ...]]) -> Metric:
    family = HistogramMetricFamily(
        "broadcast_delivery_latency_seconds",
        "From acceptance at fan-out to the vendor's 2xx.",
        labels=LABELS,
    )
    for labels in destinations:
        histogram = histogram_of(labels[0])
        cumulative, buckets = 0, []
        # The store keeps per-bucket counts; Prometheus wants cumulative ones ending in +Inf.
        for upper, bucket_count in histogram.buckets:
            cumulative += bucket_count
            buckets.append(("+Inf" if math.isinf(upper) else repr(float(upper)), cumulative))
        if not buckets or buckets[-1][0] != "+Inf":
            buckets.append(("+Inf", histogram.count))
        family.add_metric(list(labels), buckets, histogram.sum_seconds)
    return family


def _circuits(
    healths_of: Callable[[Iterable[str]], dict[str, Any]],
    destinations: Sequence[tuple[str, ...]],
) -> list[Metric]:
    circuit_open = GaugeMetricFamily(
        "broadcast_destination_circuit_open",
        "1 while the destination's circuit is open (its backlog waits for a probe).",
        labels=LABELS,
    )
    next_probe = GaugeMetricFamily(
        "broadcast_destination_circuit_next_probe_timestamp_seconds",
        "When the open circuit's next probe is due (unix seconds; 0 while closed).",
        labels=LABELS,
    )
    healths = healths_of([labels[0] for labels in destinations])
    for labels in destinations:
        health = healths[labels[0]]
        is_open = health.circuit.value == "open"
        circuit_open.add_metric(list(labels), 1 if is_open else 0)
        next_probe.add_metric(list(labels), health.probe_at if is_open else 0)
    return [circuit_open, next_probe]


def _backlog(backlog: Any, destinations: Iterable[tuple[str, ...]], now: float) -> list[Metric]:
    depth = GaugeMetricFamily(
        "broadcast_backlog_depth", "Deliveries waiting in the destination's backlog.", labels=LABELS
    )
    in_flight = GaugeMetricFamily(
        "broadcast_backlog_in_flight", "Deliveries handed to a worker, not settled.", labels=LABELS
    )
    size = GaugeMetricFamily(
        "broadcast_backlog_bytes", "Bytes of the traces the backlog refers to.", labels=LABELS
    )
    oldest = GaugeMetricFamily(
        "broadcast_backlog_oldest_age_seconds",
        "Age of the oldest waiting delivery (0 when the backlog is empty).",
        labels=LABELS,
    )
    for labels in destinations:
        stats = backlog.stats(labels[0], now)
        depth.add_metric(list(labels), stats.depth)
        in_flight.add_metric(list(labels), stats.in_flight)
        size.add_metric(list(labels), stats.bytes)
        age = 0.0 if stats.oldest_accepted_at is None else max(0.0, now - stats.oldest_accepted_at)
        oldest.add_metric(list(labels), age)
    return [depth, in_flight, size, oldest]


def _unreadable(counts: dict[str, int]) -> Metric:
    family = CounterMetricFamily(
        "broadcast_unreadable_messages",
        "Broker messages no worker could read, set aside (`broadcast unreadable`).",
        labels=("queue",),
    )
    for queue, count in counts.items():
        family.add_metric([queue], count)
    return family


def queue_depths(broker_url: str, queues: Sequence[str], timeout: float) -> dict[str, int]:
    """Messages ready in each queue, through kombu, so Redis and RabbitMQ read alike.

    A passive declare changes nothing. A queue that does not exist holds nothing: with
    Redis no stream or list key, and with RabbitMQ no worker declared it yet.
    Raises `OperationalError` (or `OSError`) when the broker cannot be reached.
    """
    depths: dict[str, int] = {}
    transport = transport_for(broker_url)
    with Connection(broker_url, transport=transport, connect_timeout=timeout) as connection:
        connection.ensure_connection(max_retries=1)
        for queue in queues:
            # A failed passive declare closes an AMQP channel: one channel per queue.
            channel = connection.channel()
            try:
                depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
            except ChannelError:
                depths[queue] = 0
            finally:
                channel.close()
    return depths


def _queues(sources: Sources) -> list[Metric]:
    up = GaugeMetricFamily("broadcast_broker_up", "1 when the broker answered this scrape.")
    try:
        depths = queue_depths(sources.broker_url, sources.queues, sources.broker_timeout)
    except (OperationalError, OSError) as exc:
        logger.warning("broadcast.metrics.broker_unreachable error=%s", type(exc).__name__)
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    family = GaugeMetricFamily(
        "broadcast_queue_depth", "Messages ready in a Celery queue.", labels=("queue",)
    )
    for queue, depth in depths.items():
        family.add_metric([queue], depth)
    return [up, family]


def runtime_sources() -> Sources:
    """Sources from the process's runtime (the same store and broker as the workers)."""
    from broadcast_engine.runtime import runtime

    current = runtime()
    return Sources(
        store=current.store,
        broker_url=current.config.broker_url,
        backlog=getattr(current, "backlog", None),
        unreadable=current.unreadable,
    )


def registry(sources: Callable[[], Sources] = runtime_sources) -> CollectorRegistry:
    """A registry holding only Broadcast's collector (no per-process metrics: they would
    describe the metrics server, not the workers)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BroadcastCollector(sources))
    return registry


def serve(host: str, port: int) -> None:
    """Serve `/metrics` on `host:port` until the process is stopped."""
    server, thread = start_http_server(port, addr=host, registry=registry())
    logger.info("broadcast.metrics.serving host=%s port=%d", host, server.server_port)
    print(f"serving Prometheus metrics on http://{host}:{server.server_port}/metrics", flush=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()
