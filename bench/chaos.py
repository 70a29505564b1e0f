"""Chaos: nothing accepted is lost, little is duplicated, counters match the vendors.

N events x 3 webhook destinations (batch format). Each receiver answers 20 % of requests
503, 5 % 429 with `Retry-After: 1`, and hangs on 2 % past the read timeout, then hangs up
without answering. A prefork worker is `kill -9`ed (main process and children) every few
seconds and started again; halfway through, Redis (broker and store, AOF with `appendfsync
always`) is `kill -9`ed and restarted, while the sender retries every `.delay()` that
raised. Real `celery beat` runs the sweep.

Pass: every (event, destination) ends delivered or dead-lettered with a reason, none
lost; the vendor-visible duplicates (one vendor id answered 2xx more than once: at least
once is the contract, so a batch re-sent after a kill counts) are at most 0.5 %;
everything is settled within 3 minutes of the last kill (polled); `status` counters equal
what the receivers accepted. Prints the table; exits 1 on a failed check.

`python bench/chaos.py` runs the full form (2,000 events); `--short` the CI form.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.processes import (
    ManagedProcess,
    RedisServer,
    celery_beat,
    celery_worker,
    control_client,
    scratch_dir,
)
from harness.rabbitmq import RabbitMQServer
from harness.receiver import HANG_UP, ReceivedRequest, Receiver, Reply
from harness.samples import chat_event
from harness.waiting import Timeout, wait_for
from settings.crypto import generate_key

READ_TIMEOUT = 2.0
SETTLE_DEADLINE = 180.0
MAX_DUPLICATES = 0.005


class ChaosVendor:
    """A webhook vendor that fails as the header says, and counts what it accepted."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.accepted: Counter[str] = Counter()  # request id -> 2xx answers carrying it
        self.accepted_at: dict[str, list[float]] = {}  # request id -> when (for duplicates)
        self.answers: Counter[str] = Counter()

    def __call__(self, request: ReceivedRequest) -> Reply:
        if request.headers.get("x-test-connection"):
            return Reply(200)
        with self.lock:
            roll = self.random.random()
        if roll < 0.20:
            self.answers["503"] += 1
            return Reply(503, b"busy")
        if roll < 0.25:
            self.answers["429"] += 1
            return Reply(429, b"slow down", {"Retry-After": "1"})
        if roll < 0.27:
            self.answers["hang"] += 1
            time.sleep(READ_TIMEOUT + 0.5)  # past the read timeout: the client gave up
            return HANG_UP
        data = json.loads(request.body)["data"]
        with self.lock:
            self.answers["200"] += 1
            now = time.time()
            for document in data if isinstance(data, list) else [data]:
                self.accepted[document["requestId"]] += 1
                self.accepted_at.setdefault(document["requestId"], []).append(now)
        return Reply(200)


class Chaos:
    def __init__(self, events: int, kill_every: float, kills: int, broker: str) -> None:
        self.events = events
        self.kill_every = kill_every
        # The sender spreads the events over the kills, so traces are in flight at each.
        self.rate = events / (kill_every * kills)
        self.planned_kills = kills
        self.workdir = scratch_dir("broadcast-chaos-")
        self.redis = RedisServer(self.workdir, extra_args=["--appendfsync", "always"])
        self.rabbitmq = RabbitMQServer(self.workdir) if broker == "rabbitmq" else None
        self.broker_url = self.rabbitmq.url if self.rabbitmq else self.redis.url
        self.env = {
            **os.environ,
            "BROADCAST_BROKER_URL": self.broker_url,
            "BROADCAST_STORE_URL": self.redis.url,
            "BROADCAST_ENCRYPTION_KEYS": generate_key(),
            "BROADCAST_ALLOW_PRIVATE_NETWORKS": "1",
            "BROADCAST_READ_TIMEOUT": str(READ_TIMEOUT),
            "BROADCAST_CONNECT_TIMEOUT": "1",
            "BROADCAST_CLAIM_LEASE_SECONDS": "6",
            "BROADCAST_RETRY_BASE_SECONDS": "0.2",
            "BROADCAST_RETRY_CAP_SECONDS": "5",
            "BROADCAST_PROBE_SCHEDULE_SECONDS": "1,2,4",
            "BROADCAST_SWEEP_INTERVAL_SECONDS": "2",
            # Every task here is short (read timeout 2 s, retry cap 5 s), so a killed
            # worker's fan-out message may come back after 30 s instead of 300.
            "BROADCAST_VISIBILITY_TIMEOUT_SECONDS": "30",
        }
        os.environ.update(self.env)  # this process's runtime and client: the same Redis
        from broadcast_engine.runtime import runtime

        self.runtime = runtime()
        self.client = control_client(self.broker_url)
        self.vendors = [ChaosVendor(seed) for seed in range(3)]
        self.receivers = [Receiver(vendor).start() for vendor in self.vendors]
        self.worker: ManagedProcess | None = None
        self.kills = 0
        self.send_retries = 0
        self.last_kill = time.monotonic()

    def start_worker(self) -> None:
        self.worker = celery_worker(
            self.env, self.workdir, name=f"chaos-{self.kills}", pool="prefork", concurrency=4
        )

    def run(self) -> bool:
        from broadcast_interfaces.service import settings_service

        owner = "user:chaos"
        service = settings_service(self.runtime)
        service.set_enabled(owner, True)
        ids = [
            service.add_destination(
                owner, "webhook", f"chaos-{i}", {"url": receiver.url, "batch_size": 20}
            )["id"]
            for i, receiver in enumerate(self.receivers)
        ]
        self.start_worker()
        beat = celery_beat(self.env, self.workdir)
        sender = threading.Thread(target=self.send_all)
        started = time.monotonic()
        sender.start()
        redis_killed = False
        while sender.is_alive() or self.kills < self.planned_kills:
            sender.join(self.kill_every)
            self.kill_worker()
            if not redis_killed and self.sent >= self.events // 2:
                self.kill_redis()
                redis_killed = True
        sender.join()
        settled = self.wait_settled(ids)
        beat.stop()
        if self.worker is not None:
            self.worker.stop()
        return self.report(ids, settled, time.monotonic() - started)

    sent = 0

    def send_all(self) -> None:
        started = time.monotonic()
        for index in range(self.events):
            pause = started + index / self.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing the gateway, not waiting for Broadcast
            event = chat_event(index, user_id="chaos", id=f"chaos-{index}")
            while True:
                try:
                    self.client.send_task("broadcast.fan_out", args=[event])
                    break
                except Exception:  # the broker is down: the gateway tries again
                    self.send_retries += 1
                    time.sleep(0.2)
            self.sent = index + 1

    def kill_worker(self) -> None:
        if self.worker is not None:
            self.worker.kill_hard()
        self.kills += 1
        self.last_kill = time.monotonic()
        self.start_worker()

    def kill_redis(self) -> None:
        self.redis.kill_hard()
        time.sleep(1.0)
        self.redis.start()
        self.last_kill = time.monotonic()

    def wait_settled(self, ids: list[str]) -> bool:
        store = self.runtime.store

        def settled() -> bool:
            return all(
                (c := store.counters(i))["delivered"] + c["failed"] >= self.events for i in ids
            )

        try:
            wait_for(settled, timeout=SETTLE_DEADLINE, interval=1.0, what="every trace to settle")
            return True
        except Timeout:
            return False

    def report(self, ids: list[str], settled: bool, seconds: float) -> bool:
        store = self.runtime.store
        ok = settled
        broker = "RabbitMQ" if self.rabbitmq else "Redis"
        print(
            f"chaos: {self.events} events x {len(ids)} destinations, broker {broker}, "
            f"{self.kills} worker kills (kill -9, prefork), 1 Redis kill -9, "
            f"{self.send_retries} sender retries, {seconds:.0f} s"
        )
        print(
            f"{'dest':<6} {'delivered':>9} {'dead':>5} {'lost':>5} {'vendor':>7} "
            f"{'dup':>5} {'dup %':>6} {'2xx':>5} {'503':>5} {'429':>5} {'hang':>5}  check"
        )
        for index, (destination_id, vendor) in enumerate(zip(ids, self.vendors, strict=True)):
            counters = store.counters(destination_id)
            letters = self.runtime.dead_letters.list(destination_id)
            dead = {letter.request_id for letter in letters}
            unique = set(vendor.accepted)
            lost = self.events - len(unique | dead)
            duplicates = sum(count - 1 for count in vendor.accepted.values())
            share = duplicates / max(len(unique), 1)
            checks = []
            if lost:
                checks.append(f"{lost} lost")
            if counters["delivered"] != len(unique):
                checks.append(f"counter {counters['delivered']} != vendor {len(unique)}")
            if counters["failed"] != len(dead):
                checks.append(f"failed counter {counters['failed']} != {len(dead)} letters")
            if share > MAX_DUPLICATES:
                twice = sorted(r for r, n in vendor.accepted.items() if n > 1)
                when = ", ".join(f"{r} at {_clock(vendor.accepted_at[r])}" for r in twice[:2])
                checks.append(f"too many duplicates (e.g. {when})")
            if not all(letter.reason for letter in letters):
                checks.append("a dead letter without a reason")
            ok = ok and not checks
            print(
                f"{index:<6} {counters['delivered']:>9} {len(dead):>5} {lost:>5} "
                f"{len(unique):>7} {duplicates:>5} {share * 100:>5.2f}% "
                f"{vendor.answers['200']:>5} {vendor.answers['503']:>5} "
                f"{vendor.answers['429']:>5} {vendor.answers['hang']:>5}  "
                f"{'; '.join(checks) or 'ok'}"
            )
        if not settled:
            print(f"NOT settled within {SETTLE_DEADLINE:.0f} s of the last kill")
        print("PASS" if ok else "FAIL")
        return ok

    def close(self) -> None:
        for receiver in self.receivers:
            receiver.stop()
        if self.rabbitmq is not None:
            self.rabbitmq.stop()
        self.redis.stop()


def _clock(times: list[float]) -> str:
    return " and ".join(time.strftime("%H:%M:%S", time.localtime(t)) for t in times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--kill-every", type=float, default=5.0)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis")
    parser.add_argument("--short", action="store_true", help="the CI form: 300 events")
    args = parser.parse_args()
    if args.short:
        chaos = Chaos(300, kill_every=3.0, kills=5, broker=args.broker)
    else:
        chaos = Chaos(args.events, args.kill_every, args.kills, args.broker)
    try:
        return 0 if chaos.run() else 1
    finally:
        chaos.close()


if __name__ == "__main__":
    sys.exit(main())
