"""Chaos: nothing accepted is lost, little is duplicated, counters match the vendors.

N events x 3 webhook destinations (batch format). Each receiver answers 20 % of requests
503, 5 % 429 with `Retry-After: 1`, and hangs on 2 % past the read timeout, then hangs up
without answering. A prefork worker is `kill -9`ed (main process and children) every few
seconds and started again; halfway through, Redis (broker and store, AOF with `appendfsync
always`) is `kill -9`ed and restarted, while the sender retries every `.delay()` that
raised. Real `celery beat` runs the sweep, and is `kill -9`ed and restarted once too; with
`--without-beat` beat is stopped for the whole run and started only after the last kill.
The broker's visibility timeout keeps its default (300 s): a killed worker's messages must
come back through the consumers' heartbeats, within seconds.

Pass: every (event, destination) ends delivered or dead-lettered with a reason, none
lost; the vendor-visible duplicates (a trace the vendor accepted under two different
`webhook-id`s: at least once is the contract, and a batch re-sent as it was after a kill
carries its `webhook-id` again, which the vendor de-duplicates, as Standard Webhooks
receivers do; the `resent` column counts those) are at most 0.5 %;
everything is settled within 120 s of the last kill (of beat's start, without beat), the
time to recover printed; `status` counters equal what the receivers accepted. Prints the
table; exits 1 on a failed check.

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
SETTLE_DEADLINE = 120.0
MAX_DUPLICATES = 0.005


class ChaosVendor:
    """A webhook vendor that fails as the header says, and counts what it accepted.

    Like the Standard Webhooks receivers it stands for, it takes `webhook-id` as the
    idempotency key: a request whose id it already accepted is answered 200 and not taken
    again (counted as `resent`). A trace it accepted under two different ids is a
    vendor-visible duplicate."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.accepted: Counter[str] = Counter()  # request id -> 2xx answers carrying it
        self.accepted_at: dict[str, list[float]] = {}  # request id -> when (for duplicates)
        self.answers: Counter[str] = Counter()
        self.webhook_ids: set[str] = set()

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
        try:
            data = json.loads(request.body)["data"]
        except (ValueError, KeyError):  # a request cut short by a killed worker
            return Reply(400, b"incomplete body")
        with self.lock:
            self.answers["200"] += 1
            webhook_id = request.headers.get("webhook-id", "")
            if webhook_id in self.webhook_ids:
                self.answers["resent"] += 1  # the vendor already has it: idempotent
                return Reply(200)
            self.webhook_ids.add(webhook_id)
            now = time.time()
            for document in data if isinstance(data, list) else [data]:
                self.accepted[document["requestId"]] += 1
                self.accepted_at.setdefault(document["requestId"], []).append(now)
        return Reply(200)


class Chaos:
    def __init__(
        self, events: int, kill_every: float, kills: int, broker: str, *, with_beat: bool = True
    ) -> None:
        self.events = events
        self.with_beat = with_beat
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
        beat = celery_beat(self.env, self.workdir) if self.with_beat else None
        sender = threading.Thread(target=self.send_all)
        started = time.monotonic()
        sender.start()
        redis_killed = beat_killed = False
        while sender.is_alive() or self.kills < self.planned_kills:
            sender.join(self.kill_every)
            self.kill_worker()
            if not redis_killed and self.sent >= self.events // 2:
                self.kill_redis()
                redis_killed = True
            elif beat is not None and not beat_killed and self.sent >= self.events // 4:
                beat.kill_hard()  # beat dies too, and comes back
                beat = celery_beat(self.env, self.workdir)
                beat_killed = True
        sender.join()
        if beat is None:  # without beat for the whole run: recovery counts from its start
            beat = celery_beat(self.env, self.workdir)
            self.last_kill = time.monotonic()
        recovered = self.wait_settled(ids)
        beat.stop()
        if self.worker is not None:
            self.worker.stop()
        return self.report(ids, recovered, time.monotonic() - started)

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

    def wait_settled(self, ids: list[str]) -> float | None:
        """Seconds from the last kill (or beat's start) until every trace settled, or None
        when they did not within the deadline."""
        store = self.runtime.store

        def settled() -> bool:
            return all(
                (c := store.counters(i))["delivered"] + c["failed"] >= self.events for i in ids
            )

        try:
            wait_for(settled, timeout=SETTLE_DEADLINE, interval=0.5, what="every trace to settle")
        except Timeout:
            return None
        return time.monotonic() - self.last_kill

    def report(self, ids: list[str], recovered: float | None, seconds: float) -> bool:
        store = self.runtime.store
        ok = recovered is not None
        broker = "RabbitMQ" if self.rabbitmq else "Redis"
        beat = "beat killed once" if self.with_beat else "beat stopped until the end"
        print(
            f"chaos: {self.events} events x {len(ids)} destinations, broker {broker}, "
            f"{self.kills} worker kills (kill -9, prefork), 1 Redis kill -9, {beat}, "
            f"{self.send_retries} sender retries, {seconds:.0f} s"
        )
        since = "the last kill" if self.with_beat else "beat's start"
        if recovered is not None:
            print(f"recovered: every trace settled {recovered:.1f} s after {since}")
        print(
            f"{'dest':<6} {'delivered':>9} {'dead':>5} {'lost':>5} {'vendor':>7} "
            f"{'dup':>5} {'dup %':>6} {'2xx':>5} {'resent':>6} {'503':>5} {'429':>5} "
            f"{'hang':>5}  check"
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
                f"{vendor.answers['200']:>5} {vendor.answers['resent']:>6} "
                f"{vendor.answers['503']:>5} {vendor.answers['429']:>5} "
                f"{vendor.answers['hang']:>5}  "
                f"{'; '.join(checks) or 'ok'}"
            )
        if recovered is None:
            print(f"NOT settled within {SETTLE_DEADLINE:.0f} s of {since}")
            self.diagnose(ids)
        print("PASS" if ok else "FAIL")
        return ok

    def diagnose(self, ids: list[str]) -> None:
        """Where each unsettled trace is: stored or not, its hold count, the backlogs that
        still hold it, whether a fan-out message for it waits in the broker."""
        from settings import keys

        redis_client, traces = self.runtime.store.redis, self.runtime.traces
        settled = set()
        for destination_id, vendor in zip(ids, self.vendors, strict=True):
            dead = {letter.request_id for letter in self.runtime.dead_letters.list(destination_id)}
            settled |= set(vendor.accepted) | dead
        missing = sorted(f"chaos-{i}" for i in range(self.events))
        missing = [request_id for request_id in missing if request_id not in settled][:5]
        for request_id in missing:
            held = []
            for destination_id in ids:
                entries = redis_client.xrange(keys.destination_part(destination_id, "backlog"))
                held += [destination_id for _, f in entries if f[b"r"].decode() == request_id]
            print(
                f"  {request_id}: holds={traces.holds('user:chaos', request_id)} "
                "(None: not stored) "
                f"in backlogs={held}"
            )
        for queue in ("broadcast.fanout", "broadcast.deliver"):
            stream = f"{queue}:stream"
            print(f"  {queue}: {redis_client.xlen(stream)} entries, "
                  f"pending {redis_client.xpending(stream, 'workers')}, set aside "
                  f"{redis_client.xrange(keys.unreadable(queue))}")  # fmt: skip

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
    parser.add_argument(
        "--without-beat", action="store_true", help="beat stopped until the last kill"
    )
    args = parser.parse_args()
    with_beat = not args.without_beat
    if args.short:
        chaos = Chaos(300, kill_every=3.0, kills=5, broker=args.broker, with_beat=with_beat)
    else:
        chaos = Chaos(args.events, args.kill_every, args.kills, args.broker, with_beat=with_beat)
    try:
        return 0 if chaos.run() else 1
    finally:
        chaos.close()


if __name__ == "__main__":
    sys.exit(main())
