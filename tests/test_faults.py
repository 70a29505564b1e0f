"""Faults, tested: a worker `kill -9`ed while it holds a claimed batch, and the store going
away in the middle of a delivery. Nothing accepted may vanish or be counted twice.

These run on a stack of their own (a broker Redis and a separate store Redis, both with
AOF, and workers started here), so killing and restarting things leaves the session's
worker and Redis alone.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery import Celery

from broadcast_engine.housekeeping import sweep
from broadcast_engine.runtime import Runtime
from broadcast_interfaces.service import settings_service
from harness.processes import ManagedProcess, RedisServer, celery_worker, control_client
from harness.receiver import ReceivedRequest, Reply
from harness.samples import chat_event
from harness.waiting import wait_for
from settings.config import load_config

pytestmark = pytest.mark.integration
SETTLE_PATIENCE = 5.0


@dataclass
class FaultStack:
    root: Path
    broker: RedisServer
    store: RedisServer
    env: dict[str, str]
    runtime: Runtime
    client: Celery

    def worker(self, name: str, pool: str = "threads") -> ManagedProcess:
        return celery_worker(self.env, self.root, name=name, pool=pool, concurrency=2)

    def send(self, event: dict) -> None:
        self.client.send_task("broadcast.fan_out", args=[event])

    def sweep_until(self, done, *, timeout: float, what: str) -> None:
        """Beat's sweep, every half second, until `done()` (a lost task's work resumes
        through it once the claim lease ran out)."""

        def swept() -> bool:
            sweep(self.runtime, time.time())
            return bool(done())

        wait_for(swept, timeout=timeout, interval=0.5, what=what)


@pytest.fixture(scope="module")
def stack(workdir: Path) -> Iterator[FaultStack]:
    root = workdir / "faults"
    root.mkdir(exist_ok=True)
    broker = RedisServer(root, name="broker")
    store = RedisServer(root, name="store")
    env = {
        **os.environ,
        "BROADCAST_BROKER_URL": broker.url,
        "BROADCAST_STORE_URL": store.url,
        # A store outage after the vendor's answer is waited out this long (then re-sent).
        "BROADCAST_SETTLE_PATIENCE_SECONDS": str(SETTLE_PATIENCE),
        # Every task here is short: a fan-out message the killed worker had reserved but
        # not run comes back after 20 s instead of 300.
        "BROADCAST_VISIBILITY_TIMEOUT_SECONDS": "20",
    }
    runtime = Runtime(load_config(environ=env))
    yield FaultStack(root, broker, store, env, runtime, control_client(broker.url))
    store.stop()
    broker.stop()


class HangingVendor:
    """Answers 200, except that while `hold` is set a POST waits for it to clear (a vendor
    that hangs mid-request). Records every `webhook-id` it received."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.released = threading.Event()
        self.ids: list[str] = []
        self.requests: list[list[str]] = []  # the request ids each POST carried
        self.hung = threading.Event()

    def __call__(self, request: ReceivedRequest) -> Reply:
        if request.headers.get("x-test-connection"):
            return Reply(200)
        self.ids.append(request.headers["webhook-id"])
        data = json.loads(request.body)["data"]
        documents = data if isinstance(data, list) else [data]
        self.requests.append([document["requestId"] for document in documents])
        if self.hold.is_set():
            self.hung.set()
            self.released.wait(60)
        return Reply(200)


def add_hook(stack: FaultStack, owner: str, sink, **config) -> str:
    service = settings_service(stack.runtime)
    service.set_enabled(owner, True)
    return service.add_destination(
        owner,
        "webhook",
        "faulty",
        {"url": sink.url, "signing_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", **config},
    )["id"]


def test_a_batch_held_by_a_killed_worker_is_delivered_after_reclaim(stack, receiver, user_id):
    vendor = HangingVendor()
    sink = receiver(vendor)
    owner = f"user:{user_id}"
    destination_id = add_hook(stack, owner, sink, batch_size=5)
    vendor.hold.set()
    victim = stack.worker("victim", pool="prefork")
    try:
        for index in range(5):
            stack.send(chat_event(index, user_id=user_id, id=f"{user_id}-{index}"))
        assert vendor.hung.wait(30), "the victim never sent its batch"
        held = list(vendor.ids)
    finally:
        victim.kill_hard()  # main process and children, mid-request, holding the batch
    vendor.hold.clear()
    vendor.released.set()
    store = stack.runtime.store
    assert store.counters(destination_id)["delivered"] == 0
    survivor = stack.worker("survivor")
    try:
        stack.sweep_until(
            lambda: store.counters(destination_id)["delivered"] == 5,
            timeout=stack.runtime.config.claim_lease_seconds + 60,
            what="the killed worker's batch to be reclaimed and delivered",
        )
    finally:
        survivor.stop()
    # Each trace delivered once by our count; the held batch was re-sent as it was, so its
    # webhook-id (derived from its request ids) is the same: the vendor de-duplicates it.
    counters = store.counters(destination_id)
    assert (counters["delivered"], counters["failed"]) == (5, 0)
    assert set(held) <= set(vendor.ids[len(held) :])
    held_requests = {r for batch in vendor.requests[: len(held)] for r in batch}
    resent = {r for batch in vendor.requests[len(held) :] for r in batch}
    assert held_requests <= resent
    assert resent | held_requests == {f"{user_id}-{index}" for index in range(5)}
    assert stack.runtime.backlog.stats(destination_id, time.time()).depth == 0


def answer_while_the_store_is_down(stack: FaultStack, vendor: HangingVendor, user_id: str) -> None:
    """Send one event, hold its delivery at the vendor, stop the store, then let the
    vendor answer 200: the worker has an answer it cannot record."""
    vendor.hold.set()
    stack.send(chat_event(1, user_id=user_id, id=f"{user_id}-1"))
    assert vendor.hung.wait(30), "the delivery never reached the vendor"
    stack.store.stop()
    vendor.hold.clear()
    vendor.released.set()


def test_a_store_outage_mid_delivery_retries_the_task_and_loses_nothing(stack, receiver, user_id):
    vendor = HangingVendor()
    destination_id = add_hook(stack, f"user:{user_id}", receiver(vendor))
    worker = stack.worker("store-outage")
    try:
        answer_while_the_store_is_down(stack, vendor, user_id)
        wait_for(
            lambda: "broadcast.deliver.store_unreachable" in worker.log_path.read_text(),
            timeout=30,
            what="the task to notice the store is gone and retry",
        )
        stack.store.start()  # back, with its AOF: the claimed entry is still pending
        store = stack.runtime.store
        stack.sweep_until(
            lambda: store.counters(destination_id)["delivered"] == 1,
            timeout=stack.runtime.config.claim_lease_seconds + 60,
            what="the delivery to be recorded once the store is back",
        )
    finally:
        worker.stop()
    counters = stack.runtime.store.counters(destination_id)
    assert (counters["delivered"], counters["failed"]) == (1, 0)
    assert set(vendor.ids) == {vendor.ids[0]}  # re-sent with the same webhook-id
    assert len(vendor.ids) >= 2  # at least once: the vendor de-duplicates by the id


def test_a_store_restart_after_the_vendors_answer_is_waited_out_without_a_resend(
    stack, receiver, user_id
):
    vendor = HangingVendor()
    destination_id = add_hook(stack, f"user:{user_id}", receiver(vendor))
    worker = stack.worker("store-restart")
    try:
        answer_while_the_store_is_down(stack, vendor, user_id)
        wait_for(
            lambda: "broadcast.deliver.settle_waits_for_store" in worker.log_path.read_text(),
            timeout=30,
            what="the task to wait for the store to record the answer",
        )
        stack.store.start()  # back within the patience
        store = stack.runtime.store
        wait_for(
            lambda: store.counters(destination_id)["delivered"] == 1,
            timeout=30,
            what="the answer recorded once the store is back",
        )
    finally:
        worker.stop()
    assert len(vendor.ids) == 1  # sent once: the accepted batch was not sent again
    assert "broadcast.deliver.store_unreachable" not in worker.log_path.read_text()
    assert stack.runtime.store.counters(destination_id)["failed"] == 0
