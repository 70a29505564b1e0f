"""Broadcast benchmark: ratios against baselines measured in the same run, on loopback.

Rows (the delivery-engine issue's table; every baseline is measured in this run, on the
same Redis, pool and concurrency, with worker task events on):

- B1  `broadcast.delay(event)` against a raw `LPUSH` of the event's JSON bytes;
- B2  events/s with 3 webhook destinations (batch format) against the floor: a bare
      Celery app (bench/floor_app.py, kombu's own Redis transport) running a no-op task,
      4 per event (a fan-out and 3 deliveries' worth);
- B2b the same with 3 OTLP destinations;
- B3  Redis commands per event (INFO commandstats delta) with 3 destinations;
- B3b Redis input bytes per event (INFO total_net_input_bytes delta) / the event's size;
- B4  worker CPU ms per extra OTLP destination (3 destinations' run minus 1's, per event);
- B5  p99 latency from `.delay()` to the receiver at half the measured max throughput;
- B6  Redis memory per backlogged delivery during an outage, beyond the shared trace;
- B7  modules imported by the gateway's `from tasks import broadcast`.

Events are 2 KB of JSON. Receivers run in this process with Nagle off and one send per
response, so they measure Broadcast, not themselves. B2 and B2b are the median of
`--throughput-rounds` rounds (3), each measuring the floor and both runs back to back.
Prints numbers; asserts nothing.
Run: `make bench` (or `.venv/bin/python bench/bench.py --events 800`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broadcast_broker.stream_transport import stream_key
from broadcast_broker.topology import FANOUT_QUEUE
from harness.processes import ManagedProcess
from harness.receiver import ReceivedRequest, Receiver, Reply
from harness.samples import chat_event
from harness.stack import Stack, local_stack
from harness.waiting import wait_for

DESTINATIONS = 3
EVENT_BYTES = 2048
GATEWAY_PROBE = """
import json, sys, time
started = time.perf_counter()
from tasks import broadcast
elapsed = time.perf_counter() - started
stdlib = set(sys.stdlib_module_names)
tops = sorted({m.split(".")[0] for m in sys.modules} - stdlib - {"__main__"})
print(json.dumps({"modules": len(sys.modules), "seconds": elapsed, "packages": tops,
                  "names": sorted(sys.modules)}))
"""
FORBIDDEN = ("destinations", "opentelemetry", "cryptography", "broadcast_engine", "boto3")


def bench_event(index: int, user_id: str, prefix: str) -> dict[str, Any]:
    """A chat event of about 2 KB of JSON (a short conversation, as gateways see most)."""
    event = chat_event(index, user_id=user_id, id=f"{prefix}-{index}")
    context = {"role": "user", "content": ""}
    event["request"]["messages"].insert(1, context)
    room = EVENT_BYTES - len(json.dumps(event))
    context["content"] = ("Context: the user asked about invoices; " * 60)[:room]
    return event


# Measurements


def gateway_imports() -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", GATEWAY_PROBE],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    )
    found = json.loads(out.stdout)
    found["forbidden"] = [m for m in found.pop("names") if m.startswith(FORBIDDEN)]
    return found


def gateway_cost(calls: int, rounds: int) -> dict[str, float]:
    from broadcast_engine.runtime import runtime
    from tasks import app, broadcast

    client = runtime().store.redis
    events = [bench_event(i, "bench-idle", "idle") for i in range(calls)]
    payloads = [json.dumps(event).encode() for event in events]
    app.control.cancel_consumer("broadcast.fanout", reply=True)  # measure the send alone
    delay_runs, lpush_runs = [], []
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            for event in events:
                broadcast.delay(event)
            delay_runs.append((time.perf_counter() - started) / calls)
            started = time.perf_counter()
            for payload in payloads:
                client.lpush("bench:raw", payload)
            lpush_runs.append((time.perf_counter() - started) / calls)
            client.delete("bench:raw")
            client.xtrim(stream_key(FANOUT_QUEUE), maxlen=0)  # the sends measured, not run
    finally:
        app.control.add_consumer("broadcast.fanout", reply=True)
    delay_us = statistics.median(delay_runs) * 1e6
    lpush_us = statistics.median(lpush_runs) * 1e6
    return {"delay_us": delay_us, "lpush_us": lpush_us, "ratio": delay_us / lpush_us}


def worker_cpu_seconds(worker: ManagedProcess) -> float:
    """User + system CPU of a worker's process group (prefork children included)."""
    group = worker.process.pid
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # pgrp
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / ticks


class Sink:
    """A receiver that answers 200 at once; with `timed`, it also notes when each request
    id arrived (parsing every body costs the benchmark's own CPU, on the same cores as the
    worker: only the latency run pays it)."""

    def __init__(
        self, reply: Callable[[ReceivedRequest], Reply] | None = None, *, timed: bool = False
    ) -> None:
        self.timed = timed
        self.arrivals: dict[str, float] = {}
        self._lock = threading.Lock()
        self._reply = reply or (lambda _r: Reply(200, b"{}"))
        self.receiver = Receiver(self._respond)

    def _respond(self, request: ReceivedRequest) -> Reply:
        now = time.perf_counter()
        if request.headers.get("x-test-connection"):
            return Reply(200)
        reply = self._reply(request)
        if self.timed and 200 <= reply.status < 300:
            data = json.loads(request.body).get("data")
            documents = data if isinstance(data, list) else [data] if data else []
            with self._lock:
                for document in documents:
                    self.arrivals.setdefault(document["requestId"], now)
        return reply


def run_events(
    stack: Stack,
    *,
    kind: str,
    destinations: int,
    events: int,
    prefix: str,
    rate: float | None = None,
) -> dict[str, Any]:
    """Send `events` (back to back, or at `rate`/s) to `destinations` destinations of
    `kind`; returns throughput, Redis counts, worker CPU and latencies."""
    from broadcast_interfaces.service import settings_service
    from tasks import broadcast

    service = settings_service()
    client = service.store.redis
    owner = f"user:{prefix}"
    service.set_enabled(owner, True)
    sinks = [Sink(timed=rate is not None) for _ in range(destinations)]
    for sink in sinks:
        sink.receiver.start()
    try:
        ids = []
        for index, sink in enumerate(sinks):
            if kind == "webhook":
                config = {"url": f"{sink.receiver.url}/{index}", "batch_size": 100}
            else:
                config = {"endpoint": f"{sink.receiver.url}/v1/traces"}
            ids.append(service.add_destination(owner, kind, f"{prefix}-{index}", config)["id"])
        batch = [bench_event(i, prefix, prefix) for i in range(events)]
        event_bytes = statistics.mean(len(json.dumps(e)) for e in batch)

        def delivered() -> int:
            return sum(service.store.counters(i)["delivered"] for i in ids)

        sent_at: dict[str, float] = {}
        before_stats, before_net = client.info("commandstats"), client.info("stats")
        cpu_before = worker_cpu_seconds(stack.processes[0])
        started = time.perf_counter()
        for n, event in enumerate(batch):
            if rate:
                pause = started + n / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)  # pacing the sender, not synchronising with it
            sent_at[event["id"]] = time.perf_counter()
            broadcast.delay(event)
        wait_for(lambda: delivered() >= events * destinations, timeout=900, interval=0.02)
        seconds = time.perf_counter() - started
        cpu = worker_cpu_seconds(stack.processes[0]) - cpu_before
        after_stats, after_net = client.info("commandstats"), client.info("stats")
        failed = sum(service.store.counters(i)["failed"] for i in ids)
    finally:
        for sink in sinks:
            sink.receiver.stop()
    commands = sum(
        after_stats[k]["calls"] - before_stats.get(k, {"calls": 0})["calls"]
        for k in after_stats
        if not k.startswith(("cmdstat_info", "cmdstat_hgetall"))  # this function's own reads
    )
    latencies = [
        (sink.arrivals[r] - sent_at[r]) * 1000.0
        for sink in sinks
        for r in sink.arrivals
        if r in sent_at
    ]
    return {
        "events_per_s": events / seconds,
        "failed": failed,
        "commands_per_event": commands / events,
        "input_bytes_per_event": (
            after_net["total_net_input_bytes"] - before_net["total_net_input_bytes"]
        )
        / events,
        "event_bytes": event_bytes,
        "cpu_ms_per_event": cpu * 1000.0 / events,
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else 0.0,
    }


def floor(stack: Stack, events: int, pool: str, concurrency: int) -> dict[str, float]:
    """The floor: a bare Celery app (bench/floor_app.py, kombu's own Redis transport)
    running 4 no-op tasks per event on the same Redis, with the Broadcast worker's pool and
    concurrency; its worker runs only while it is measured."""
    from bench import floor_app
    from broadcast_engine.runtime import runtime

    client = runtime().store.redis
    argv = [sys.executable, "-m", "celery", "-A", "bench.floor_app", "worker"]
    argv += ["-Q", floor_app.QUEUE, "-P", pool, "-c", str(concurrency)]
    argv += ["-n", f"floor-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
    argv += ["-l", "WARNING"]
    worker = ManagedProcess("floor", argv, dict(os.environ), stack.workdir)
    try:
        wait_for(
            lambda: bool(floor_app.app.control.ping(timeout=0.5)),
            timeout=60,
            what="the floor worker to answer a ping",
        )
        tasks_run = events * (1 + DESTINATIONS)
        client.delete(floor_app.COUNTER_KEY)
        cpu_before = worker_cpu_seconds(worker)
        started = time.perf_counter()
        for _ in range(tasks_run):
            floor_app.noop.delay()
        wait_for(
            lambda: int(client.get(floor_app.COUNTER_KEY) or 0) >= tasks_run,
            timeout=900,
            interval=0.02,
        )
        seconds = time.perf_counter() - started
        cpu = worker_cpu_seconds(worker) - cpu_before
    finally:
        worker.stop()
    return {
        "events_per_s": events / seconds,
        "tasks_per_s": tasks_run / seconds,
        "cpu_ms_per_task": cpu * 1000.0 / tasks_run,
    }


def outage_memory(entries: int) -> dict[str, float]:
    """Backlog bytes per delivery while a vendor is down (its circuit open, nothing sent)."""
    from broadcast_interfaces.service import settings_service
    from settings import keys
    from tasks import broadcast

    service = settings_service()
    client = service.store.redis
    owner = "user:bench-outage"
    service.set_enabled(owner, True)
    down = Sink(lambda r: Reply(503, b"down"))
    down.receiver.start()
    try:
        destination_id = service.add_destination(
            owner, "webhook", "down", {"url": down.receiver.url}
        )["id"]
        record = service.store.get_destination(destination_id)
        service.health.open_circuit(record, time.time() + 3600, "bench outage", time.time())
        for index in range(entries):
            broadcast.delay(bench_event(index, "bench-outage", "outage"))
        backlog = keys.destination_part(destination_id, "backlog")
        wait_for(lambda: client.xlen(backlog) >= entries, timeout=300, interval=0.05)
        stream_bytes = client.memory_usage(backlog, samples=0) or 0
    finally:
        down.receiver.stop()
    return {"entries": entries, "bytes_per_entry": stream_bytes / entries}


def throughput_round(
    stack: Stack, events: int, pool: str, concurrency: int, index: int
) -> dict[str, dict[str, Any]]:
    """One round of the throughput rows: the floor, 3 webhook and 3 OTLP destinations."""
    return {
        "floor": floor(stack, events, pool, concurrency),
        "hooks": run_events(
            stack, kind="webhook", destinations=3, events=events, prefix=f"b-round{index}-hook"
        ),
        "otlp3": run_events(
            stack,
            kind="otel-collector",
            destinations=3,
            events=events,
            prefix=f"b-round{index}-otlp",
        ),
    }


def median_round(
    rounds: list[dict[str, dict[str, Any]]], run: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(floor, hooks, otlp3) of the round whose `run` / floor ratio is the median, with
    every round's ratio recorded on that run as `ratios`."""
    ratios = sorted(r[run]["events_per_s"] / r["floor"]["events_per_s"] for r in rounds)
    middle = sorted(rounds, key=lambda r: r[run]["events_per_s"] / r["floor"]["events_per_s"])
    chosen = middle[len(middle) // 2]
    chosen[run]["ratios"] = ratios
    chosen[run]["floors"] = [r["floor"]["events_per_s"] for r in rounds]
    return chosen["floor"], chosen["hooks"], chosen["otlp3"]


# Report


def main() -> int:
    parser = argparse.ArgumentParser(description="Broadcast benchmark (ratios, same run)")
    parser.add_argument("--events", type=int, default=800)
    parser.add_argument("--delay-calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool", default="prefork", choices=("prefork", "threads"))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--throughput-rounds", type=int, default=3)
    args = parser.parse_args()
    imports = gateway_imports()
    with local_stack(
        with_beat=False,
        worker_concurrency=args.concurrency,
        # Both workers log at WARNING, the level of the production guide's commands.
        worker_args={"pool": args.pool, "loglevel": "WARNING"},
    ) as stack:
        cost = gateway_cost(args.delay_calls, args.rounds)
        # Throughput on 2 shared cores swings by a tenth or more from one run to the next:
        # each round measures the floor and both Broadcast runs back to back, and the rows
        # report the round with the median ratio (the range is printed beside it).
        rounds = [
            throughput_round(stack, args.events, args.pool, args.concurrency, index)
            for index in range(args.throughput_rounds)
        ]
        base, hooks, _ = median_round(rounds, "hooks")
        otlp_base, _, otlp3 = median_round(rounds, "otlp3")
        otlp1 = run_events(
            stack, kind="otel-collector", destinations=1, events=args.events, prefix="b-otlp1"
        )
        half = run_events(
            stack,
            kind="webhook",
            destinations=3,
            events=args.events,
            prefix="b-half",
            rate=hooks["events_per_s"] / 2,
        )
        outage = outage_memory(args.events)
    per_extra_otlp = (otlp3["cpu_ms_per_event"] - otlp1["cpu_ms_per_event"]) / 2
    setup = f"{args.pool} pool, concurrency {args.concurrency}, {args.events} events"
    rows = [
        (
            "B1",
            ".delay() / raw LPUSH",
            f"{cost['ratio']:.2f}x",
            f"{cost['delay_us']:.0f} us vs {cost['lpush_us']:.0f} us per call",
            "<= 4x",
        ),
        (
            "B2",
            "events/s, 3 webhook (batch) / floor",
            f"{hooks['events_per_s'] / base['events_per_s']:.2f}",
            f"{hooks['events_per_s']:.0f} vs {base['events_per_s']:.0f} events/s "
            f"({base['tasks_per_s']:.0f} no-op tasks/s, "
            f"{base['cpu_ms_per_task']:.2f} worker CPU ms each); {_spread(hooks)}",
            ">= 1.5",
        ),
        (
            "B2b",
            "events/s, 3 OTLP / floor",
            f"{otlp3['events_per_s'] / otlp_base['events_per_s']:.2f}",
            f"{otlp3['events_per_s']:.0f} vs {otlp_base['events_per_s']:.0f} events/s; "
            f"{_spread(otlp3)}",
            ">= 3",
        ),
        (
            "B3",
            "Redis commands per event (3 dest.)",
            f"{hooks['commands_per_event']:.1f}",
            f"OTLP run: {otlp3['commands_per_event']:.1f}",
            "<= 25",
        ),
        (
            "B3b",
            "Redis input bytes per event / event",
            f"{hooks['input_bytes_per_event'] / hooks['event_bytes']:.2f}x",
            f"{hooks['input_bytes_per_event']:.0f} B per {hooks['event_bytes']:.0f} B event",
            "<= 3x",
        ),
        (
            "B4",
            "worker CPU ms per extra OTLP dest.",
            f"{per_extra_otlp:.2f}",
            f"1 dest {otlp1['cpu_ms_per_event']:.2f} ms, "
            f"3 dest {otlp3['cpu_ms_per_event']:.2f} ms per event",
            "<= 1.5",
        ),
        (
            "B5",
            "p99 .delay() -> receiver, half load",
            f"{half['p99_ms']:.0f} ms",
            f"p50 {half['p50_ms']:.0f} ms at {hooks['events_per_s'] / 2:.0f} events/s",
            "<= 250 ms",
        ),
        (
            "B6",
            "Redis bytes per backlogged delivery",
            f"{outage['bytes_per_entry']:.0f} B",
            f"{outage['entries']} entries of a destination whose circuit is open",
            "<= 200 B",
        ),
        (
            "B7",
            "modules on `from tasks import broadcast`",
            f"{imports['modules']}",
            f"{imports['seconds'] * 1000:.0f} ms; forbidden: {imports['forbidden'] or 'none'}",
            "no vendor/OTLP/crypto",
        ),
    ]
    failed = sum(r[k]["failed"] for r in rounds for k in ("hooks", "otlp3"))
    failed += otlp1["failed"] + half["failed"]
    print(f"Broadcast benchmark ({setup}; failed deliveries: {failed})")
    print(f"{'row':<4} {'figure':<42} {'value':>9}  {'target':<22} detail")
    for row, figure, value, detail, target in rows:
        print(f"{row:<4} {figure:<42} {value:>9}  {target:<22} {detail}")
    print("gateway packages besides the standard library: " + ", ".join(imports["packages"]))
    return 0


def _spread(run: dict[str, Any]) -> str:
    ratios, floors = run["ratios"], run["floors"]
    return (
        f"median of {len(ratios)} rounds, {ratios[0]:.2f}-{ratios[-1]:.2f} "
        f"(floors {'/'.join(f'{f:.0f}' for f in floors)} events/s)"
    )


if __name__ == "__main__":
    sys.exit(main())
