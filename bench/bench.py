"""Broadcast benchmark: ratios against baselines measured in the same run, on loopback.

1. Gateway cost: `broadcast.delay(event)` against a raw Redis LPUSH of the event's bytes.
2. End-to-end throughput: events/s with 3 webhook destinations per event (1 fan-out + 3
   deliveries each) against a bare Celery no-op task run of the same task count, same
   worker, same pool.

Run: `make bench` (or `.venv/bin/python bench/bench.py --events 1000`). Prints numbers;
asserts nothing (machines here are noisy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.receiver import Receiver, Reply
from harness.samples import chat_event
from harness.stack import local_stack
from harness.waiting import wait_for

DESTINATIONS = 3


def gateway_cost(calls: int, rounds: int) -> dict[str, float]:
    from tasks import app, broadcast
    from tasks.runtime import runtime

    client = runtime().store.redis
    events = [chat_event(i, user_id="bench-idle", id=f"idle-{i}") for i in range(calls)]
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
            client.delete("bench:raw", "broadcast.fanout")
    finally:
        app.control.add_consumer("broadcast.fanout", reply=True)
    delay_us = statistics.median(delay_runs) * 1e6
    lpush_us = statistics.median(lpush_runs) * 1e6
    return {"delay_us": delay_us, "lpush_us": lpush_us, "ratio": delay_us / lpush_us}


def end_to_end(events: int) -> dict[str, float]:
    from bench.noop import COUNTER_KEY, noop
    from tasks import broadcast
    from tasks.runtime import runtime

    service = runtime().service
    client = service.store.redis
    owner = "user:bench"
    service.set_enabled(owner, True)
    with Receiver(lambda _r: Reply(200, b"{}")) as sink:
        ids = [
            service.add_destination(owner, "webhook", f"bench {i}", {"url": f"{sink.url}/{i}"})[
                "id"
            ]
            for i in range(DESTINATIONS)
        ]
        batch = [chat_event(i, user_id="bench", id=f"bench-{i}") for i in range(events)]

        def delivered() -> int:
            return sum(service.store.counters(i)["delivered"] for i in ids)

        started = time.perf_counter()
        for event in batch:
            broadcast.delay(event)
        wait_for(lambda: delivered() >= events * DESTINATIONS, timeout=600, interval=0.05)
        broadcast_seconds = time.perf_counter() - started
        failed = sum(service.store.counters(i)["failed"] for i in ids)

    tasks_run = events * (1 + DESTINATIONS)
    client.delete(COUNTER_KEY)
    started = time.perf_counter()
    for _ in range(tasks_run):
        noop.delay()
    wait_for(lambda: int(client.get(COUNTER_KEY) or 0) >= tasks_run, timeout=600, interval=0.05)
    noop_seconds = time.perf_counter() - started
    return {
        "events": events,
        "tasks": tasks_run,
        "failed": failed,
        "broadcast_events_per_s": events / broadcast_seconds,
        "noop_events_per_s": events / noop_seconds,
        "noop_tasks_per_s": tasks_run / noop_seconds,
        "ratio": (events / broadcast_seconds) / (events / noop_seconds),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="Broadcast benchmark (ratios, same run)")
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--delay-calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with local_stack(
        with_beat=False,
        worker_concurrency=args.concurrency,
        worker_args={"include": "bench.noop"},
    ):
        cost = gateway_cost(args.delay_calls, args.rounds)
        throughput = end_to_end(args.events)
    print(
        f"gateway: broadcast.delay() {cost['delay_us']:.0f} us/call, raw LPUSH "
        f"{cost['lpush_us']:.0f} us/call, ratio {cost['ratio']:.2f}x "
        f"(median of {args.rounds} rounds of {args.delay_calls})"
    )
    print(
        f"end to end: {throughput['broadcast_events_per_s']:.0f} events/s with "
        f"{DESTINATIONS} webhook destinations each ({throughput['tasks']} tasks, "
        f"{throughput['failed']} failed); bare no-op tasks: "
        f"{throughput['noop_tasks_per_s']:.0f} tasks/s = "
        f"{throughput['noop_events_per_s']:.0f} events/s; "
        f"ratio {throughput['ratio']:.2f} (threads pool, concurrency {args.concurrency})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
