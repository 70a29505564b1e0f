"""Prometheus metrics, read from Redis and the broker at scrape time.

Nothing is counted in the metrics server: every number comes from the settings store (the
counters and histograms the workers keep there), the backlogs and the broker, so one
`broadcast metrics serve` gives the same answer whatever pool the workers run, prefork
children included, and however many workers and metrics servers there are.

Families (docs/production.md, "Metrics", has the reference and the alerts built on them).
Per destination, labelled `destination`, `type`, `owner`, or only `type` (summed over the
type's destinations; ages and probe times: the largest or earliest) when
`BROADCAST_METRICS_PER_DESTINATION` is off:

- `broadcast_destination_traces_total{outcome}` (counter): each trace's end or skip,
  counted once: delivered, failed (dead-lettered), dropped_overflow, filtered_by_key,
  filtered_by_rule, sampled_out, skipped_disabled, skipped_owner_disabled;
- `broadcast_destination_trace_retries_total` (counter): failed attempts of traces that
  were tried again (attempts, apart from the traces);
- `broadcast_destination_replays_total{outcome}` (counter): dead letters replayed
  (`requeued`) and how replays ended (`delivered`, `failed`), never in the traces counter;
- `broadcast_destination_requests_total{status_class}` (counter): vendor requests by
  `2xx`... or `error` (no answer); `broadcast_destination_request_duration_seconds`
  (histogram): their durations;
- `broadcast_delivery_latency_seconds` (histogram): from fan-out to the vendor's 2xx;
- `broadcast_destination_health{status}` (gauge, 1 for the destination's status);
  `broadcast_destination_enabled`; `broadcast_destination_circuit_open` and
  `broadcast_destination_circuit_next_probe_timestamp_seconds`;
- `broadcast_destination_dead_letters` (gauge): letters kept (within the retention);
- `broadcast_backlog_depth`, `_in_flight`, `_bytes`, `_oldest_age_seconds` (gauges).

Without destination labels: `broadcast_destinations`; `broadcast_events_received_total`,
`broadcast_events_fanned_out_total`, `broadcast_events_filtered_total`,
`broadcast_events_duplicate_total` (received = fanned out + filtered + duplicate +
rejected) and `broadcast_events_rejected_total{reason}`;
`broadcast_unreadable_messages_total{queue}`; `broadcast_broker_up`,
`broadcast_queue_depth{queue}`, `broadcast_queue_consumers{queue}`,
`broadcast_queue_oldest_message_age_seconds{queue}` (Redis broker only);
`broadcast_beat_last_sweep_timestamp_seconds`.

Every family is in every scrape, with no destination at all too (a family without
samples still has its `# TYPE` line). Destinations are read in chunks of `CHUNK`, a few
pipelined round trips per chunk.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import socketserver
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from kombu import Connection
from kombu.exceptions import ChannelError, OperationalError
from prometheus_client import make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from broadcast_broker.topology import TASK_QUEUES, transport_for
from broadcast_engine.events import RejectReason
from broadcast_interfaces.probes import Unhealthy, check_store
from settings import keys
from settings.models import Circuit, Health
from settings.store import EVENT_OUTCOMES, LatencyHistogram, SettingsStore

logger = logging.getLogger("broadcast.metrics")

LABELS = ("destination", "type", "owner")
TYPE_LABELS = ("type",)
CHUNK = 500
# The store's counters that are no trace outcome: attempts and replays have families of
# their own, so that `traces_total` counts each trace once.
RETRIES = "retried"
REPLAYS = {"replayed": "requeued", "replay_delivered": "delivered", "replay_failed": "failed"}


@dataclass(frozen=True)
class Sources:
    """Where the numbers come from: the settings store and the broker; the backlogs, dead
    letters and unreadable messages when the runtime provides them."""

    store: SettingsStore
    broker_url: str
    backlog: Any | None = None
    dead_letters: Any | None = None
    unreadable: Any | None = None
    queues: Sequence[str] = TASK_QUEUES
    broker_timeout: float = 2.0
    per_destination: bool = True


@dataclass(frozen=True)
class QueueState:
    """A broker queue as a scrape sees it: messages waiting, consumers reading it (None:
    the broker cannot tell), and when the oldest waiting message was sent (None: nothing
    waits, or the broker cannot tell)."""

    depth: int
    consumers: int | None = None
    oldest_waiting_at: float | None = None


@dataclass
class _Samples:
    """One family's samples keyed by label values; destinations that share a key (the
    same type, without destination labels) are combined by `combine`."""

    combine: Callable[[float, float], float] = field(default=lambda a, b: a + b)
    values: dict[tuple[str, ...], float] = field(default_factory=dict)

    def add(self, labels: tuple[str, ...], value: float) -> None:
        previous = self.values.get(labels)
        self.values[labels] = value if previous is None else self.combine(previous, value)


@dataclass
class _Histograms:
    """Histogram samples keyed by label values, summed bucket by bucket (every histogram
    of a family has the same bounds, the last one infinite)."""

    bounds: list[float] = field(default_factory=list)
    values: dict[tuple[str, ...], tuple[list[int], float]] = field(default_factory=dict)

    def add(self, labels: tuple[str, ...], histogram: LatencyHistogram) -> None:
        self.bounds = [upper for upper, _ in histogram.buckets]
        counts = [count for _, count in histogram.buckets]
        previous = self.values.get(labels)
        if previous is not None:
            counts = [a + b for a, b in zip(previous[0], counts, strict=True)]
            self.values[labels] = (counts, previous[1] + histogram.sum_seconds)
        else:
            self.values[labels] = (counts, histogram.sum_seconds)


def _earliest_probe(a: float, b: float) -> float:
    """The earliest of two next-probe times, 0 meaning none."""
    return min(a, b) if a and b else a or b


class BroadcastCollector(Collector):
    """A custom collector: builds every family afresh on each scrape."""

    def __init__(self, sources: Callable[[], Sources]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        sources = self._sources()
        now = time.time()
        yield from _destination_families(sources, now)
        yield from _event_families(sources.store)
        if sources.unreadable is not None:
            yield _unreadable(sources.unreadable.counts())
        yield _beat(sources.store)
        yield from _queues(sources, now)


def _destination_families(sources: Sources, now: float) -> Iterator[Metric]:
    store, labels_of = sources.store, _labeller(sources.per_destination)
    names = LABELS if sources.per_destination else TYPE_LABELS
    ids = store.all_destination_ids()
    traces, retries, replays = _Samples(), _Samples(), _Samples()
    requests, request_durations, latency = _Samples(), _Histograms(), _Histograms()
    health, enabled, circuit_open = _Samples(), _Samples(), _Samples()
    next_probe = _Samples(combine=_earliest_probe)
    dead, depth, in_flight, size = _Samples(), _Samples(), _Samples(), _Samples()
    oldest = _Samples(combine=max)
    statuses = [status.value for status in Health]
    known = 0
    for start in range(0, len(ids), CHUNK):
        records = store.get_destinations(ids[start : start + CHUNK])
        chunk = [record.id for record in records]
        known += len(chunk)
        counters = store.counters_many(chunk)
        latencies = store.latency_histograms(chunk)
        vendor = store.request_stats(chunk)
        healths = store.healths(chunk)
        backlogs = sources.backlog.stats_many(chunk) if sources.backlog is not None else {}
        letters = sources.dead_letters.counts(chunk) if sources.dead_letters is not None else {}
        for record in records:
            labels = labels_of(record)
            for name, value in counters[record.id].items():
                if name == RETRIES:
                    retries.add(labels, value)
                elif name in REPLAYS:
                    replays.add((*labels, REPLAYS[name]), value)
                else:
                    traces.add((*labels, name), value)
            latency.add(labels, latencies[record.id])
            stats = vendor[record.id]
            for klass, count in stats.by_class.items():
                requests.add((*labels, klass), count)
            request_durations.add(labels, stats.duration)
            state = healths[record.id]
            for status in statuses:
                health.add((*labels, status), 1 if state.status.value == status else 0)
            enabled.add(labels, 1 if record.enabled else 0)
            is_open = state.circuit is Circuit.OPEN
            circuit_open.add(labels, 1 if is_open else 0)
            next_probe.add(labels, state.probe_at if is_open else 0)
            if record.id in letters:
                dead.add(labels, letters[record.id])
            if record.id in backlogs:
                backlog = backlogs[record.id]
                depth.add(labels, backlog.depth)
                in_flight.add(labels, backlog.in_flight)
                size.add(labels, backlog.bytes)
                accepted = backlog.oldest_accepted_at
                oldest.add(labels, 0.0 if accepted is None else max(0.0, now - accepted))
    destinations = GaugeMetricFamily("broadcast_destinations", "Destinations in the store.")
    destinations.add_metric([], known)
    yield destinations
    yield _family(
        CounterMetricFamily,
        "broadcast_destination_traces",
        "Traces per destination by how each ended or was skipped (each trace counted once).",
        (*names, "outcome"),
        traces,
    )
    yield _family(
        CounterMetricFamily,
        "broadcast_destination_trace_retries",
        "Failed attempts of traces that were tried again (attempts, not traces).",
        names,
        retries,
    )
    yield _family(
        CounterMetricFamily,
        "broadcast_destination_replays",
        "Dead letters replayed (requeued) and how the replays ended (delivered, failed).",
        (*names, "outcome"),
        replays,
    )
    yield _family(
        CounterMetricFamily,
        "broadcast_destination_requests",
        "Vendor requests by status class (2xx... or error: no answer).",
        (*names, "status_class"),
        requests,
    )
    yield _histogram(
        "broadcast_destination_request_duration_seconds",
        "Duration of each vendor request.",
        names,
        request_durations,
    )
    yield _histogram(
        "broadcast_delivery_latency_seconds",
        "From acceptance at fan-out to the vendor's 2xx.",
        names,
        latency,
    )
    yield _family(
        GaugeMetricFamily,
        "broadcast_destination_health",
        "1 for the destination's health status (summed per type without destination labels).",
        (*names, "status"),
        health,
    )
    yield _family(
        GaugeMetricFamily,
        "broadcast_destination_enabled",
        "1 while the destination is enabled (disabled: by its owner, or credentials rejected "
        "too long).",
        names,
        enabled,
    )
    yield _family(
        GaugeMetricFamily,
        "broadcast_destination_circuit_open",
        "1 while the destination's circuit is open (its backlog waits for a probe).",
        names,
        circuit_open,
    )
    yield _family(
        GaugeMetricFamily,
        "broadcast_destination_circuit_next_probe_timestamp_seconds",
        "When the open circuit's next probe is due (unix seconds; 0 while closed).",
        names,
        next_probe,
    )
    yield _family(
        GaugeMetricFamily,
        "broadcast_destination_dead_letters",
        "Dead letters kept for replay (within the retention).",
        names,
        dead,
    )
    yield _family(
        GaugeMetricFamily,
        "broadcast_backlog_depth",
        "Deliveries waiting in the destination's backlog.",
        names,
        depth,
    )
    yield _family(
        GaugeMetricFamily,
        "broadcast_backlog_in_flight",
        "Deliveries handed to a worker, not settled.",
        names,
        in_flight,
    )
    yield _family(
        GaugeMetricFamily,
        "broadcast_backlog_bytes",
        "Bytes of the traces the backlog refers to.",
        names,
        size,
    )
    yield _family(
        GaugeMetricFamily,
        "broadcast_backlog_oldest_age_seconds",
        "Age of the oldest waiting delivery (0 when the backlog is empty).",
        names,
        oldest,
    )


def _labeller(per_destination: bool) -> Callable[[Any], tuple[str, ...]]:
    if per_destination:
        return lambda record: (record.id, record.type, record.owner)
    return lambda record: (record.type,)


def _family(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    documentation: str,
    labels: Sequence[str],
    samples: _Samples,
) -> Metric:
    family = kind(name, documentation, labels=labels)
    for values, value in sorted(samples.values.items()):
        family.add_metric(list(values), value)
    return family


def _histogram(
    name: str, documentation: str, labels: Sequence[str], samples: _Histograms
) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, (counts, total) in sorted(samples.values.items()):
        family.add_metric(list(values), cumulative(samples.bounds, counts), total)
    return family


def cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """The store keeps a count per bucket (the last bound infinite); Prometheus wants
    cumulative ones, the last named `+Inf`."""
    total, buckets = 0, list[tuple[str, float]]()
    for upper, count in zip(bounds, counts, strict=True):
        total += count
        buckets.append(("+Inf" if math.isinf(upper) else repr(float(upper)), total))
    return buckets


def _event_families(store: SettingsStore) -> Iterator[Metric]:
    outcomes = store.event_counts()
    rejected = {reason.value: 0 for reason in RejectReason}
    rejected.update(store.rejected_counts())
    received = CounterMetricFamily(
        "broadcast_events_received",
        "Events fan-out took from the queue (fanned out + filtered + duplicate + rejected).",
    )
    received.add_metric([], sum(outcomes.values()) + sum(rejected.values()))
    yield received
    described = {
        "fanned_out": "Events appended to at least one destination's backlog.",
        "filtered": "Valid events no destination took: the owner has none or has Broadcast "
        "off, or every destination's filters, sampling or state kept them out.",
        "duplicate": "Events whose trace was fanned out already (a redelivery, or the "
        "gateway sent it twice).",
    }
    for outcome in EVENT_OUTCOMES:
        family = CounterMetricFamily(f"broadcast_events_{outcome}", described[outcome])
        family.add_metric([], outcomes.get(outcome, 0))
        yield family
    family = CounterMetricFamily(
        "broadcast_events_rejected",
        "Invalid events, rejected once and never retried, by reason class "
        "(`broadcast rejected` has each reason in full).",
        labels=("reason",),
    )
    for reason, count in sorted(rejected.items()):
        family.add_metric([reason], count)
    yield family


def _unreadable(counts: dict[str, int]) -> Metric:
    family = CounterMetricFamily(
        "broadcast_unreadable_messages",
        "Broker messages no worker could read, set aside (`broadcast unreadable`).",
        labels=("queue",),
    )
    for queue, count in counts.items():
        family.add_metric([queue], count)
    return family


def _beat(store: SettingsStore) -> Metric:
    family = GaugeMetricFamily(
        "broadcast_beat_last_sweep_timestamp_seconds",
        "When beat's sweep last ran (unix seconds; 0: never).",
    )
    raw = store.redis.get(keys.BEAT_HEARTBEAT)
    try:
        family.add_metric([], float(raw) if raw is not None else 0.0)
    except ValueError:
        family.add_metric([], 0.0)
    return family


def broker_queues(broker_url: str, queues: Sequence[str], timeout: float) -> dict[str, QueueState]:
    """Each queue's state through kombu, so Redis and RabbitMQ read alike: messages waiting
    (a passive declare changes nothing), and the consumers and oldest message where the
    broker tells them (RabbitMQ: consumers; Redis streams: both).

    A queue that does not exist holds nothing: with Redis no stream or list key, and with
    RabbitMQ no worker declared it yet. Raises `OperationalError` (or `OSError`) when the
    broker cannot be reached.
    """
    states: dict[str, QueueState] = {}
    transport = transport_for(broker_url)
    with Connection(broker_url, transport=transport, connect_timeout=timeout) as connection:
        connection.ensure_connection(max_retries=1)
        for queue in queues:
            # A failed passive declare closes an AMQP channel: one channel per queue.
            # kombu types it as the abstract StdChannel; AMQP's and the virtual
            # transports' channels (ours included) all declare queues.
            channel: Any = connection.channel()
            try:
                declared = channel.queue_declare(queue=queue, passive=True)
                state_of = getattr(channel, "queue_state", None)  # the Redis stream transport
                if state_of is not None:
                    stream = state_of(queue)
                    states[queue] = QueueState(
                        declared.message_count, stream.consumers, stream.oldest_waiting_at
                    )
                else:
                    states[queue] = QueueState(declared.message_count, declared.consumer_count)
            except ChannelError:
                states[queue] = QueueState(0, 0)
            finally:
                channel.close()
    return states


def queue_depths(broker_url: str, queues: Sequence[str], timeout: float) -> dict[str, int]:
    """Messages ready in each queue (`broker_queues`' depths)."""
    states = broker_queues(broker_url, queues, timeout)
    return {queue: state.depth for queue, state in states.items()}


def _queues(sources: Sources, now: float) -> list[Metric]:
    up = GaugeMetricFamily("broadcast_broker_up", "1 when the broker answered this scrape.")
    depth = GaugeMetricFamily(
        "broadcast_queue_depth", "Messages ready in a Celery queue.", labels=("queue",)
    )
    consumers = GaugeMetricFamily(
        "broadcast_queue_consumers",
        "Workers reading a Celery queue (Redis: consumers with a live heartbeat).",
        labels=("queue",),
    )
    oldest = GaugeMetricFamily(
        "broadcast_queue_oldest_message_age_seconds",
        "Age of the oldest message waiting in a Celery queue (0 when none waits; Redis "
        "broker only).",
        labels=("queue",),
    )
    try:
        states = broker_queues(sources.broker_url, sources.queues, sources.broker_timeout)
    except (OperationalError, OSError) as exc:
        logger.warning("broadcast.metrics.broker_unreachable error=%s", type(exc).__name__)
        up.add_metric([], 0)
        return [up, depth, consumers, oldest]
    up.add_metric([], 1)
    redis_broker = transport_for(sources.broker_url) is not None
    for queue, state in states.items():
        depth.add_metric([queue], state.depth)
        if state.consumers is not None:
            consumers.add_metric([queue], state.consumers)
        if redis_broker:
            waiting = state.oldest_waiting_at
            oldest.add_metric([queue], 0.0 if waiting is None else max(0.0, now - waiting))
    return [up, depth, consumers, oldest]


def runtime_sources() -> Sources:
    """Sources from the process's runtime (the same store and broker as the workers)."""
    from broadcast_engine.runtime import runtime

    current = runtime()
    return Sources(
        store=current.store,
        broker_url=current.config.broker_url,
        backlog=current.backlog,
        dead_letters=current.dead_letters,
        unreadable=current.unreadable,
        per_destination=current.config.metrics_per_destination,
    )


def registry(sources: Callable[[], Sources] = runtime_sources) -> CollectorRegistry:
    """A registry holding only Broadcast's collector (no per-process metrics: they would
    describe the metrics server, not the workers)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BroadcastCollector(sources))
    return registry


# The metrics server: /metrics, and the probes an orchestrator asks


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingServerV6(_ThreadingServer):
    """For an IPv6 host (`--host ::`)."""

    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes every few seconds are not worth a log line each."""


def wsgi_app(
    metrics_registry: CollectorRegistry, ready: Callable[[], Mapping[str, Any]]
) -> Callable[..., Iterable[bytes]]:
    """`/healthz` (the server answers), `/readyz` (`ready()` returns: the store answers;
    503 with the reason when it raises `Unhealthy`) and, on every other path, the
    metrics."""
    metrics = make_wsgi_app(metrics_registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _json(start_response, "200 OK", {"ok": True})
        if path == "/readyz":
            try:
                return _json(start_response, "200 OK", dict(ready()))
            except Unhealthy as exc:
                return _json(
                    start_response, "503 Service Unavailable", {"ok": False, "error": str(exc)}
                )
        return metrics(environ, start_response)

    return app


def _json(start_response: Callable[..., Any], status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data)))])  # fmt: skip
    return [data]


def serve(host: str, port: int) -> None:
    """Serve `/metrics`, `/healthz` and `/readyz` on `host:port` until the process is
    stopped. Raises `OSError` when the port cannot be bound."""
    from broadcast_engine.runtime import runtime

    store = runtime().store
    app = wsgi_app(registry(), lambda: check_store(store.redis))
    server_class = _ThreadingServerV6 if ":" in host else _ThreadingServer
    server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
    logger.info("broadcast.metrics.serving host=%s port=%d", host, server.server_port)
    print(f"serving Prometheus metrics on http://{host}:{server.server_port}/metrics", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()
