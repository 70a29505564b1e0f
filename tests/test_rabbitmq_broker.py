"""RabbitMQ as the broker (Redis stays the store): a real node, real workers, a plain
Celery client as the gateway. One node per test session; workers per test."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from amqp.exceptions import PreconditionFailed
from celery import Celery

from harness.processes import ManagedProcess, celery_beat
from harness.receiver import ReceivedRequest, Reply
from harness.samples import chat_event
from harness.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def gateway(rabbitmq) -> Iterator[Celery]:
    """What a gateway has: a Celery client, the broker URL and the task name."""
    client = Celery("gateway", broker=rabbitmq.url, set_as_current=False)
    yield client
    client.close()


@pytest.fixture
def amqp_env(rabbitmq, redis_server) -> dict[str, str]:
    return {**os.environ, "BROADCAST_BROKER_URL": rabbitmq.url}


def start_worker(env: Mapping[str, str], workdir: Path, gateway: Celery) -> ManagedProcess:
    name = f"amqp{uuid.uuid4().hex[:6]}"
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "threads", "-c", "4",
            "-n", f"{name}@%h", "-l", "INFO", "--without-gossip", "--without-mingle"]  # fmt: skip
    process = ManagedProcess(name, argv, env, workdir)

    def answered() -> bool:
        if not process.alive():
            raise RuntimeError(f"worker exited:\n{process.log_tail()}")
        replies = gateway.control.ping(timeout=0.5) or []
        return any(node.startswith(f"{name}@") for reply in replies for node in reply)

    wait_for(answered, timeout=60, what="the AMQP worker to answer a ping")
    return process


def send(gateway: Celery, event: dict) -> None:
    # `declare=[]`: the workers declared the queues (quorum); the client only publishes.
    gateway.send_task("broadcast.fan_out", args=[event], queue="broadcast.fanout", declare=[])


def add_hook(service, user_id: str, url: str) -> str:
    return service.add_destination(f"user:{user_id}", "webhook", "amqp", {"url": url})["id"]


def request_id(request: ReceivedRequest) -> str | None:
    if request.headers.get("x-test-connection"):
        return None
    return json.loads(request.body)["data"]["requestId"]


def test_queues_are_quorum_queues_and_a_delivery_arrives(
    amqp_env, workdir, gateway, rabbitmq, service, user_id, receiver
):
    sink = receiver()
    destination_id = add_hook(service, user_id, sink.url + "/in")
    worker = start_worker(amqp_env, workdir, gateway)
    try:
        send(gateway, chat_event(1, user_id=user_id, id=f"{user_id}-a1"))
        wait_for(lambda: service.store.counters(destination_id)["delivered"] == 1, timeout=30)
        assert [request_id(r) for r in sink.requests("/in")] == [None, f"{user_id}-a1"]
        with gateway.connection_for_write() as connection:
            for queue in ("broadcast.fanout", "broadcast.deliver", "broadcast.maintenance"):
                # The queue is quorum: a classic declaration is refused, while one without a
                # type (a stock client's) is equivalent in a vhost whose default is quorum.
                for queue_type in ("quorum", "classic", None):
                    arguments = {"x-queue-type": queue_type} if queue_type else None
                    channel = connection.channel()
                    if queue_type == "classic":
                        with pytest.raises(PreconditionFailed):
                            channel.queue_declare(queue, durable=True, auto_delete=False,
                                                  arguments=arguments)  # fmt: skip
                    else:
                        channel.queue_declare(queue, durable=True, auto_delete=False,
                                              arguments=arguments)  # fmt: skip
    finally:
        worker.stop()


def test_503_then_200_is_retried_and_delivered_once(
    amqp_env, workdir, gateway, service, user_id, receiver
):
    answers: dict[str, int] = {}
    lock = threading.Lock()

    def respond(request: ReceivedRequest) -> Reply:
        rid = request_id(request)
        if rid is None:
            return Reply(200, b"{}")
        with lock:
            answers[rid] = answers.get(rid, 0) + 1
            first = answers[rid] == 1
        return Reply(503, b"busy") if first else Reply(200, b"{}")

    sink = receiver(respond)
    destination_id = add_hook(service, user_id, sink.url + "/in")
    worker = start_worker(amqp_env, workdir, gateway)
    try:
        send(gateway, chat_event(2, user_id=user_id, id=f"{user_id}-r1"))
        wait_for(lambda: service.store.counters(destination_id)["delivered"] == 1, timeout=15)
        counters = service.store.counters(destination_id)
        assert (counters["retried"], counters["failed"]) == (1, 0)
        assert answers == {f"{user_id}-r1": 2}
    finally:
        worker.stop()


def test_a_worker_killed_mid_task_has_its_message_redelivered(
    amqp_env, workdir, gateway, service, user_id, receiver
):
    """SIGKILL while the vendor request is in flight: RabbitMQ requeues the unacknowledged
    message when the connection drops and another worker receives the same task; the
    backlog entries the dead task claimed come back after their lease (beat's sweep)."""
    in_flight = threading.Event()
    release = threading.Event()

    def respond(request: ReceivedRequest) -> Reply:
        if request_id(request) is not None and not in_flight.is_set():
            in_flight.set()
            release.wait(60)  # hold the first delivery until its worker is dead
        return Reply(200, b"{}")

    sink = receiver(respond)
    destination_id = add_hook(service, user_id, sink.url + "/in")
    # Entries claimed by the killed task come back after the lease (sweep or next task).
    env = {**amqp_env, "BROADCAST_CLAIM_LEASE_SECONDS": "3"}
    first = start_worker(env, workdir, gateway)
    second = beat = None
    try:
        send(gateway, chat_event(3, user_id=user_id, id=f"{user_id}-k1"))
        assert in_flight.wait(30), "the first delivery never reached the receiver"
        first.process.kill()
        first.process.wait(10)
        release.set()
        second = start_worker(env, workdir, gateway)
        # The task in flight when the worker died: received, never finished (a message an
        # earlier test's killed worker left behind may have come to this worker first).
        log = first.log_path.read_text()
        task = r"Task broadcast\.deliver\[([0-9a-f-]+)\] "
        finished = set(re.findall(task + "succeeded", log))
        task_ids = [task_id for task_id in re.findall(task + "received", log)
                    if task_id not in finished]  # fmt: skip
        assert task_ids, first.log_tail()
        wait_for(lambda: task_ids[0] in second.log_path.read_text(), timeout=30,
                 what="RabbitMQ to redeliver the killed worker's message")  # fmt: skip
        beat = celery_beat(env, workdir)
        wait_for(lambda: service.store.counters(destination_id)["delivered"] >= 1, timeout=90,
                 what="the redelivered message to be delivered by the second worker")  # fmt: skip
        deliveries = [r for r in sink.requests("/in") if request_id(r) == f"{user_id}-k1"]
        assert len(deliveries) == 2
        assert deliveries[0].headers.get("webhook-id") == deliveries[1].headers.get("webhook-id")
    finally:
        release.set()
        first.stop()
        for process in (second, beat):
            if process is not None:
                process.stop()


def test_metrics_read_queue_depths_from_rabbitmq(rabbitmq, gateway):
    from kombu import Exchange, Queue

    from broadcast_interfaces.metrics import queue_depths

    queue = Queue("bc-test.depth", Exchange("bc-test.depth", type="topic"), "bc-test.depth",
                  queue_arguments={"x-queue-type": "quorum"})  # fmt: skip
    with gateway.connection_for_write() as connection:
        producer = connection.Producer()
        for index in range(3):
            producer.publish({"n": index}, exchange=queue.exchange, routing_key="bc-test.depth",
                             declare=[queue])  # fmt: skip
        # Publishing is asynchronous: poll until the broker counts all three.
        expected = {"bc-test.depth": 3, "bc-test.absent": 0}
        wait_for(
            lambda: queue_depths(rabbitmq.url, list(expected), timeout=2) == expected,
            timeout=10,
            what="RabbitMQ to count the published messages",
        )
        queue.bind(connection.channel()).delete()
