"""Gateways in other languages and stock clients, on both brokers (docs/gateway.md).

- The spec's example message is what a stock Python Celery client writes (captured from
  Redis), and the spec's minimal message, pushed by hand, is delivered.
- Stock celery-node (examples/node, installed by `make setup`) sends N events on Redis and
  on RabbitMQ; a stock Python Celery client (no `declare=[]`) sends N on RabbitMQ; the Go
  example (examples/go, standard library only) writes the spec's message on Redis. A real
  worker fans them out and each of the N reaches a real receiver exactly once.
- A Redis at `maxmemory` refuses writes: what each client then does.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from harness.processes import ManagedProcess, RedisServer, celery_worker
from harness.receiver import ReceivedRequest
from harness.samples import chat_event
from harness.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "docs" / "gateway.md"
NODE_EXAMPLE = ROOT / "examples" / "node"
GO_EXAMPLE = ROOT / "examples" / "go"
N = 20
# A database of the test Redis no worker reads: what a client writes there stays put.
CAPTURE_DB = 15


def spec_block(name: str) -> Any:
    """The JSON block that follows `<!-- spec:NAME -->` in docs/gateway.md."""
    match = re.search(rf"<!-- spec:{name} -->\s*```json\n(.*?)```", SPEC.read_text(), re.S)
    assert match, f"docs/gateway.md has no block spec:{name}"
    return json.loads(match.group(1))


def decoded_body(message: dict[str, Any]) -> Any:
    assert message["properties"]["body_encoding"] == "base64"
    return json.loads(base64.b64decode(message["body"]))


def request_ids(sink, path: str) -> list[str]:
    def rid(request: ReceivedRequest) -> str | None:
        if request.headers.get("x-test-connection"):
            return None
        return json.loads(request.body)["data"]["requestId"]

    return [r for r in map(rid, sink.requests(path)) if r is not None]


def add_hook(service, user_id: str, url: str) -> str:
    return service.add_destination(f"user:{user_id}", "webhook", "gw", {"url": url})["id"]


def events(user_id: str, tag: str, count: int = N) -> list[dict[str, Any]]:
    return [chat_event(i, user_id=user_id, id=f"{user_id}-{tag}{i}") for i in range(count)]


def assert_each_arrives_once(service, destination_id: str, sink, sent: list[dict]) -> None:
    expected = sorted(event["id"] for event in sent)
    wait_for(
        lambda: service.store.counters(destination_id)["delivered"] >= len(expected),
        timeout=45,
        what=f"{len(expected)} deliveries",
    )
    assert sorted(request_ids(sink, "/in")) == expected
    assert service.store.counters(destination_id)["delivered"] == len(expected)


def run_node_example(broker_url: str, sent: list[dict[str, Any]]) -> subprocess.CompletedProcess:
    """Run the Node example (stock celery-node) with `sent` on its standard input."""
    node = shutil.which("node")
    if node is None or not (NODE_EXAMPLE / "node_modules" / "celery-node").is_dir():
        pytest.fail("the Node example is not installed: run `make setup` (node, npm ci)")
    return subprocess.run(
        [node, str(NODE_EXAMPLE / "send.js"), broker_url],
        input="".join(json.dumps(event) + "\n" for event in sent),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def node_send(broker_url: str, sent: list[dict[str, Any]]) -> None:
    done = run_node_example(broker_url, sent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"sent {len(sent)}", done.stdout


# --- the envelope, as the spec states it


def test_the_spec_example_is_what_python_celery_writes(redis_server):
    example = spec_block("redis-message")
    url = f"redis://127.0.0.1:{redis_server.port}/{CAPTURE_DB}"
    client = Celery("gateway", broker=url, set_as_current=False)
    store = redis.Redis(port=redis_server.port, db=CAPTURE_DB)
    store.delete("broadcast.fanout")
    try:
        event = decoded_body(example)[0][0]
        client.send_task("broadcast.fan_out", args=[event], queue="broadcast.fanout")
        [raw] = store.lrange("broadcast.fanout", 0, -1)
    finally:
        client.close()
        store.flushdb()
    captured = json.loads(raw)

    assert captured.keys() == example.keys()
    assert captured["headers"].keys() == example["headers"].keys()
    assert captured["properties"].keys() == example["properties"].keys()
    for key in ("content-type", "content-encoding"):
        assert captured[key] == example[key]
    for key in ("body_encoding", "delivery_mode", "delivery_info", "priority"):
        assert captured["properties"][key] == example["properties"][key]
    for key in ("lang", "task", "retries", "timelimit", "eta", "expires", "kwargsrepr"):
        assert captured["headers"][key] == example["headers"][key]
    # The ids: the task id is the root id and the correlation id, in both.
    for message in (captured, example):
        task_id = message["headers"]["id"]
        assert uuid.UUID(task_id)
        assert message["headers"]["root_id"] == task_id
        assert message["properties"]["correlation_id"] == task_id
    assert decoded_body(captured) == decoded_body(example)


def test_on_rabbitmq_python_celery_sends_the_body_as_json_with_the_spec_properties(rabbitmq):
    """The spec's RabbitMQ section, against what a stock client publishes (captured from a
    queue of the test's own in `/`, where no worker reads)."""
    from amqp.exceptions import PreconditionFailed
    from kombu import Connection

    queue = f"bc-capture.{uuid.uuid4().hex[:8]}"
    [event] = events("capture", "am", count=1)
    client = Celery("gateway", broker=rabbitmq.plain_url, set_as_current=False)
    try:
        client.send_task("broadcast.fan_out", args=[event], queue=queue)
    finally:
        client.close()
    with Connection(rabbitmq.plain_url) as connection:
        channel = connection.channel()
        try:
            message = wait_for(lambda: channel.basic_get(queue, no_ack=True), timeout=10,
                               what="the published message")  # fmt: skip
            # It declared a direct exchange named after the queue (a topic one is refused).
            with pytest.raises(PreconditionFailed, match="type"):
                connection.channel().exchange_declare(queue, "topic", durable=True,
                                                      auto_delete=False)  # fmt: skip
        finally:
            connection.channel().queue_delete(queue)
            connection.channel().exchange_delete(queue)
    properties = message.properties
    assert (properties["content_type"], properties["content_encoding"]) == (
        "application/json",
        "utf-8",
    )
    assert properties["delivery_mode"] == 2
    headers = properties["application_headers"]
    assert (headers["task"], headers["lang"]) == ("broadcast.fan_out", "py")
    assert headers["root_id"] == headers["id"] == properties["correlation_id"]
    # Published through the default exchange, straight to the queue (as celery-node does).
    assert (message.delivery_info["exchange"], message.delivery_info["routing_key"]) == ("", queue)
    assert json.loads(message.body) == [[event], {}, {"callbacks": None, "errbacks": None,
                                                      "chain": None, "chord": None}]  # fmt: skip


def test_the_spec_minimal_message_pushed_by_hand_is_delivered(
    worker, redis_server, service, user_id, receiver
):
    """What a gateway without a Celery library writes: the spec's minimal message, LPUSHed."""
    sink = receiver()
    destination_id = add_hook(service, user_id, sink.url + "/in")
    message = spec_block("redis-minimal")
    [event] = events(user_id, "raw", count=1)
    task_id = str(uuid.uuid4())
    message["headers"]["id"] = task_id
    message["properties"]["delivery_tag"] = str(uuid.uuid4())
    body = [[event], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    message["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    redis.Redis(port=redis_server.port).lpush("broadcast.fanout", json.dumps(message))
    assert_each_arrives_once(service, destination_id, sink, [event])


@pytest.fixture(scope="module")
def go_gateway(workdir) -> Path:
    """The Go example, built once (no module to download: standard library only)."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("Go is not installed: run `make setup` (Debian's golang-go)")
    binary = workdir / "go-gateway"
    env = {**os.environ, "GOPROXY": "off", "GOFLAGS": "-buildvcs=false"}
    done = subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_EXAMPLE, env=env,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return binary


def run_go_example(binary: Path, broker_url: str, sent: list[dict]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(binary), broker_url],
        input="".join(json.dumps(event) + "\n" for event in sent),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_go_example_on_redis(go_gateway, worker, service, user_id, receiver):
    sink = receiver()
    destination_id = add_hook(service, user_id, sink.url + "/in")
    sent = events(user_id, "gr")
    done = run_go_example(go_gateway, os.environ["BROADCAST_BROKER_URL"], sent)
    assert (done.returncode, done.stdout.strip()) == (0, f"sent {N}"), done.stderr
    assert_each_arrives_once(service, destination_id, sink, sent)


# --- stock celery-node, both brokers


def test_celery_node_on_redis(worker, redis_server, service, user_id, receiver):
    sink = receiver()
    destination_id = add_hook(service, user_id, sink.url + "/in")
    sent = events(user_id, "nr")
    node_send(os.environ["BROADCAST_BROKER_URL"], sent)
    assert_each_arrives_once(service, destination_id, sink, sent)


@pytest.fixture(scope="module")
def amqp_worker(rabbitmq, redis_server, workdir) -> Iterator[ManagedProcess]:
    """A worker on the RabbitMQ node's `broadcast` vhost (default queue type quorum)."""
    env = {**os.environ, "BROADCAST_BROKER_URL": rabbitmq.url}
    process = celery_worker(env, workdir, name="gwamqp", concurrency=4)
    yield process
    process.stop()


def test_celery_node_on_rabbitmq(amqp_worker, rabbitmq, service, user_id, receiver):
    sink = receiver()
    destination_id = add_hook(service, user_id, sink.url + "/in")
    sent = events(user_id, "na")
    node_send(rabbitmq.url, sent)
    assert_each_arrives_once(service, destination_id, sink, sent)


def test_stock_python_celery_on_rabbitmq(amqp_worker, rabbitmq, service, user_id, receiver):
    """No `declare=[]`: the client declares its direct exchange, the queue and the binding
    before publishing, and the declarations are equivalent to the workers'."""
    sink = receiver()
    destination_id = add_hook(service, user_id, sink.url + "/in")
    sent = events(user_id, "pa")
    client = Celery("gateway", broker=rabbitmq.url, set_as_current=False)
    try:
        for event in sent:
            client.send_task("broadcast.fan_out", args=[event], queue="broadcast.fanout")
    finally:
        client.close()
    assert_each_arrives_once(service, destination_id, sink, sent)


def test_without_the_vhost_default_a_stock_declaration_is_refused(rabbitmq):
    """Why the vhost matters: in `/` (no default queue type) the same stock declaration of
    a quorum queue is refused, which is what celery-node crashed on."""
    from amqp.exceptions import PreconditionFailed
    from kombu import Connection

    # The check docs/production.md gives: `broadcast` has the default, `/` has none.
    listed = rabbitmq.ctl("list_vhosts", "--no-table-headers", "name", "default_queue_type")
    vhosts = dict(line.split("\t") for line in listed.splitlines() if "\t" in line)
    assert vhosts["broadcast"] == "quorum" and vhosts["/"] != "quorum", listed
    name = f"bc-test.{uuid.uuid4().hex[:8]}"
    with Connection(rabbitmq.plain_url) as connection:
        connection.channel().queue_declare(name, durable=True, auto_delete=False,
                                           arguments={"x-queue-type": "quorum"})  # fmt: skip
        try:
            with pytest.raises(PreconditionFailed, match="x-queue-type"):
                connection.channel().queue_declare(name, durable=True, auto_delete=False)
        finally:
            connection.channel().queue_delete(name)


# --- a broker that refuses writes


@pytest.fixture
def full_redis(workdir) -> Iterator[RedisServer]:
    """A Redis past its `maxmemory` (1 byte) with `noeviction`: every write is refused."""
    server = RedisServer(workdir, name=f"full-{uuid.uuid4().hex[:6]}",
                         extra_args=["--maxmemory-policy", "noeviction"])  # fmt: skip
    redis.Redis(port=server.port).config_set("maxmemory", 1)
    yield server
    server.stop()


def test_a_full_redis_raises_in_python_and_is_reported_by_the_examples(full_redis, go_gateway):
    """What docs/gateway.md says a gateway sees when Redis refuses writes."""
    from kombu.exceptions import OperationalError

    [event] = events("full", "oom", count=1)
    client = Celery("gateway", broker=full_redis.url, set_as_current=False)
    try:
        with pytest.raises(OperationalError, match="maxmemory"):
            client.send_task("broadcast.fan_out", args=[event], queue="broadcast.fanout")
    finally:
        client.close()
    # Inside the worker's environment (`broadcast.delay`): the stream transport's XADD.
    from broadcast_broker.task_client import TaskSender

    sender = TaskSender(full_redis.url)
    try:
        with pytest.raises(OperationalError, match="maxmemory"):
            sender.send("broadcast.fan_out", [event])
    finally:
        sender.celery.close()
    done = run_node_example(full_redis.url, [event, event])
    assert done.returncode == 1
    assert done.stdout.strip() == "sent 2"
    refusals = [line for line in done.stderr.splitlines() if "broadcast.send_failed" in line]
    assert len(refusals) == 2 and all("OOM" in line for line in refusals), done.stderr
    done = run_go_example(go_gateway, full_redis.url, [event])
    assert (done.returncode, done.stdout.strip()) == (1, "sent 0")
    assert "broadcast.send_failed" in done.stderr and "OOM" in done.stderr, done.stderr


# --- the upgrade from the topic exchange (docs/production.md, "Upgrades")


def test_the_documented_exchange_swap_keeps_the_queue_and_its_messages(rabbitmq):
    """The earlier topology in a vhost of its own (`/`): a quorum `broadcast.fanout` bound
    to a topic exchange, one message waiting. The script docs/production.md gives swaps the
    exchange for a direct one; the message stays and the new exchange routes to the queue."""
    import sys

    from amqp.exceptions import PreconditionFailed
    from kombu import Connection

    doc = (ROOT / "docs" / "production.md").read_text()
    match = re.search(r"<!-- upgrade:swap-fanout-exchange -->\s*```python\n(.*?)```", doc, re.S)
    assert match, "docs/production.md has no upgrade:swap-fanout-exchange block"
    queue = "broadcast.fanout"

    def waiting(connection) -> int:
        return connection.channel().queue_declare(queue, passive=True).message_count

    with Connection(rabbitmq.plain_url) as connection:
        channel = connection.channel()
        channel.exchange_declare(queue, "topic", durable=True, auto_delete=False)
        channel.queue_declare(queue, durable=True, auto_delete=False,
                              arguments={"x-queue-type": "quorum"})  # fmt: skip
        channel.queue_bind(queue, queue, queue)
        try:
            producer = connection.Producer()
            producer.publish({"n": 1}, exchange=queue, routing_key=queue, declare=[])
            wait_for(lambda: waiting(connection) == 1, timeout=10, what="the first message")

            env = {**os.environ, "BROADCAST_BROKER_URL": rabbitmq.plain_url}
            script = [sys.executable, "-c", match.group(1)]
            done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60,
                                  check=False)  # fmt: skip
            assert done.returncode == 0, done.stderr

            assert waiting(connection) == 1
            connection.channel().exchange_declare(queue, "direct", durable=True,
                                                  auto_delete=False)  # fmt: skip
            with pytest.raises(PreconditionFailed, match="type"):
                connection.channel().exchange_declare(queue, "topic", durable=True,
                                                      auto_delete=False)  # fmt: skip
            connection.Producer().publish({"n": 2}, exchange=queue, routing_key=queue,
                                          declare=[])  # fmt: skip
            wait_for(lambda: waiting(connection) == 2, timeout=10, what="the second message")
        finally:
            connection.channel().queue_delete(queue)
            connection.channel().exchange_delete(queue)


# --- what the direct exchange changes: a fan-out retry is held by the worker


def test_a_fan_out_retry_on_rabbitmq_is_held_by_the_worker_and_delivered_once(
    rabbitmq, workdir, receiver
):
    """`broadcast.fanout` is on a direct exchange, so Celery's native delayed delivery does
    not carry its countdowns: a fan-out retry (the store unreachable) is a message the
    worker holds until due. It runs, and the event is delivered once. A vhost and a store
    of the test's own keep the session's workers out."""
    from broadcast_engine.runtime import Runtime
    from broadcast_interfaces.service import settings_service
    from settings.config import load_config

    vhost = f"retry-{uuid.uuid4().hex[:6]}"
    rabbitmq.ctl("add_vhost", vhost, "--default-queue-type", "quorum")
    rabbitmq.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    broker_url = rabbitmq.url.rsplit("/", 1)[0] + f"/{vhost}"
    store = RedisServer(workdir, name=f"retry-store-{vhost}")
    env = {**os.environ, "BROADCAST_BROKER_URL": broker_url, "BROADCAST_STORE_URL": store.url}
    service = settings_service(Runtime(load_config(environ=env)))
    sink = receiver()
    owner = f"user:{vhost}"
    service.set_enabled(owner, True)
    destination_id = service.add_destination(owner, "webhook", "gw", {"url": sink.url + "/in"})[
        "id"
    ]
    worker = celery_worker(env, workdir, name=vhost, concurrency=2)
    client = Celery("gateway", broker=broker_url, set_as_current=False)
    try:
        store.stop()
        [event] = events(vhost, "rt", count=1)
        client.send_task("broadcast.fan_out", args=[event], queue="broadcast.fanout")
        wait_for(lambda: "retry: Retry in" in worker.log_path.read_text(), timeout=30,
                 what="fan-out to retry while the store is down")  # fmt: skip
        store.start()
        wait_for(lambda: service.store.counters(destination_id)["delivered"] == 1, timeout=45,
                 what="the retried fan-out to be delivered")  # fmt: skip
        assert request_ids(sink, "/in") == [event["id"]]
        # Celery says so when it sends the retry: no native delayed delivery on a direct
        # exchange (the countdown is then kept by the worker that receives it).
        assert "Direct exchanges are not supported" in worker.log_path.read_text()
    finally:
        client.close()
        worker.stop()
        store.stop()
        rabbitmq.ctl("delete_vhost", vhost)
