"""The stream transport (broadcast_broker/stream_transport.py) on a real Redis, through kombu.

Each test has its own queue on a Redis of this module's own, so the session's worker never
reads it and command counts are the test's.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py
from kombu import Connection, Exchange, Queue

from broadcast_broker.message_vetting import UNREADABLE_HEADER, UNREADABLE_SHA256_HEADER
from broadcast_broker.stream_transport import (
    CONSUMER_REGISTRY,
    GROUP,
    HEARTBEAT_PREFIX,
    stream_key,
)
from broadcast_broker.topology import STREAM_TRANSPORT
from harness.processes import RedisServer
from harness.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
DB = 11


@pytest.fixture(scope="module")
def quiet_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: no session worker polls it, so the command counts
    (INFO commandstats, server-wide) are the test's own."""
    server = RedisServer(tmp_path_factory.mktemp("stream-transport"), name="quiet")
    yield server
    server.stop()


@pytest.fixture
def broker(quiet_redis: RedisServer) -> Iterator[tuple[str, redis_py.Redis]]:
    url = quiet_redis.url.rsplit("/", 1)[0] + f"/{DB}"
    client = redis_py.Redis.from_url(url)
    client.flushdb()
    yield url, client
    client.flushdb()


@pytest.fixture
def queue_name() -> str:
    return f"t.{uuid.uuid4().hex[:8]}"


def connect(url: str, queue: str, **options: object) -> Connection:
    transport_options = {"stream_queues": [queue], **options}
    return Connection(url, transport=STREAM_TRANSPORT, transport_options=transport_options)


def declared(queue: str) -> Queue:
    return Queue(queue, Exchange(queue, type="direct"), routing_key=queue)


def publish(connection: Connection, queue: str, body: object) -> None:
    """As Celery sends a task: to the default exchange, with the queue as routing key."""
    with connection.Producer() as producer:
        producer.publish(body, routing_key=queue, exchange="", declare=[declared(queue)])


def receive(connection: Connection, queue: str, count: int = 1) -> list:
    """Consume `count` messages (not acknowledged) with a deadline."""
    got: list = []

    def received() -> bool:
        try:
            connection.drain_events(timeout=0.2)
        except TimeoutError:
            pass
        return len(got) >= count

    with connection.Consumer(declared(queue), callbacks=[lambda _b, m: got.append(m)]):
        wait_for(received, what=f"{count} message(s)")
    return got


def pending(client: redis_py.Redis, queue: str) -> int:
    return client.xpending(stream_key(queue), GROUP)["pending"]


def test_a_message_is_stored_once_with_its_body_raw(broker, queue_name):
    url, client = broker
    body = {"text": "x" * 3000}
    with connect(url, queue_name) as connection:
        publish(connection, queue_name, body)
        entries = client.xrange(stream_key(queue_name))
        assert len(entries) == 1
        fields = entries[0][1]
        assert set(fields) == {b"z", b"b"}  # the envelope compressed, the body
        assert b"x" * 3000 in fields[b"b"]  # the body raw, not base64
        assert client.keys("unacked*") == []  # no second copy anywhere

        [message] = receive(connection, queue_name)
        assert message.payload == body
        assert pending(client, queue_name) == 1
        message.ack()
        assert pending(client, queue_name) == 0
        assert client.xlen(stream_key(queue_name)) == 0  # acknowledged is deleted


def test_a_publish_is_one_command(broker, queue_name):
    url, client = broker
    with connect(url, queue_name) as connection:
        publish(connection, queue_name, {"n": 0})  # declares the queue once
        before = client.info("commandstats")
        for n in range(50):
            publish(connection, queue_name, {"n": n})
        after = client.info("commandstats")
    calls = {
        name: after[name]["calls"] - before.get(name, {"calls": 0})["calls"]
        for name in after
        if name != "cmdstat_info"
    }
    assert {name: n for name, n in calls.items() if n} == {"cmdstat_xadd": 50}


CONSUME_AND_HANG = """
import sys, time
from kombu import Connection, Exchange, Queue
url, queue, transport = sys.argv[1:4]
q = Queue(queue, Exchange(queue, type="direct"), routing_key=queue)
options = {"stream_queues": [queue], "heartbeat_every_seconds": 0.2, "heartbeat_ttl_seconds": 1}
with Connection(url, transport=transport, transport_options=options) as c:
    def got(body, message):
        print("got", body["n"], flush=True)
    with c.Consumer(q, callbacks=[got]):
        c.drain_events(timeout=30)
        time.sleep(60)  # killed here, holding the message
"""


def kill_a_consumer_holding_a_message(url: str, client: redis_py.Redis, queue_name: str) -> str:
    """A consumer in another process takes the message and is `kill -9`ed; returns its
    consumer name."""
    with connect(url, queue_name) as connection:
        publish(connection, queue_name, {"n": 1})
    consumer = subprocess.Popen(
        [sys.executable, "-c", CONSUME_AND_HANG, url, queue_name, STREAM_TRANSPORT],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert consumer.stdout.readline().strip() == "got 1"
    finally:
        os.kill(consumer.pid, signal.SIGKILL)
        consumer.wait()
    assert pending(client, queue_name) == 1  # the group still holds it for the dead consumer
    [holder] = [c for c in client.xinfo_consumers(stream_key(queue_name), GROUP) if c["pending"]]
    return holder["name"].decode()


def test_a_consumer_killed_holding_a_message_hands_it_over_once_its_heartbeat_expires(
    broker, queue_name
):
    url, client = broker
    killed_at = time.monotonic()
    name = kill_a_consumer_holding_a_message(url, client, queue_name)
    assert client.hexists(CONSUMER_REGISTRY, name)  # a consumer of this version
    # The visibility timeout is far away: the heartbeat alone tells the consumer is dead.
    with connect(url, queue_name, visibility_timeout=3600) as connection:
        channel = connection.default_channel
        channel.queue_declare(queue_name)

        def requeued() -> bool:
            return channel.reclaim()[0] == 1

        wait_for(requeued, timeout=10, what="the dead consumer's message requeued")
        assert time.monotonic() - killed_at < 10  # the 1 s heartbeat, not the hour
        [message] = receive(connection, queue_name)
        assert message.payload == {"n": 1}
        assert message.delivery_info["redelivered"] is True
        message.ack()
    assert client.xlen(stream_key(queue_name)) == 0
    names = [c["name"].decode() for c in client.xinfo_consumers(stream_key(queue_name), GROUP)]
    assert name not in names  # the dead consumer left the group


def test_a_consumer_without_a_heartbeat_keeps_its_messages_to_the_visibility_timeout(
    broker, queue_name
):
    """A worker of an earlier version (no heartbeat) is not taken for dead during a rolling
    upgrade: what it holds comes back only past the visibility timeout, as before."""
    url, client = broker
    name = kill_a_consumer_holding_a_message(url, client, queue_name)
    client.hdel(CONSUMER_REGISTRY, name)  # as if it had never registered
    with connect(url, queue_name, visibility_timeout=3600) as connection:
        channel = connection.default_channel
        channel.queue_declare(queue_name)
        assert channel.reclaim() == (0, 0)
        assert pending(client, queue_name) == 1
    with connect(url, queue_name, visibility_timeout=1) as connection:
        channel = connection.default_channel
        channel.queue_declare(queue_name)
        wait_for(lambda: channel.reclaim()[1] == 1, what="the held message requeued")
        [message] = receive(connection, queue_name)
        assert message.payload == {"n": 1} and message.delivery_info["redelivered"] is True
        message.ack()


def test_a_consumer_keeps_its_heartbeat_while_it_consumes_and_drops_it_when_it_closes(
    broker, queue_name
):
    url, client = broker
    options = {"heartbeat_every_seconds": 0.1, "heartbeat_ttl_seconds": 0.5}
    with connect(url, queue_name, **options) as connection:
        with connection.Consumer(declared(queue_name), callbacks=[lambda *_: None]):
            name = connection.default_channel.consumer_name
            key = HEARTBEAT_PREFIX + name
            for _ in range(4):  # alive across several TTLs
                wait_for(lambda: client.pttl(key) > 300, timeout=2, what="a fresh heartbeat")
                time.sleep(0.3)  # longer than a refresh, shorter than the TTL
            assert client.hexists(CONSUMER_REGISTRY, name)
    assert not client.exists(key) and not client.hexists(CONSUMER_REGISTRY, name)


def test_a_read_whose_answer_was_lost_is_handed_back_by_the_live_consumer(broker, queue_name):
    """Redis recorded a delivery but its answer never reached the consumer (Redis killed
    mid-reply): the consumer is alive, so no heartbeat expires; it requeues what the group
    says it holds and it never received, and keeps what it did receive."""
    url, client = broker
    with connect(url, queue_name) as connection:
        publish(connection, queue_name, {"n": 1})
        publish(connection, queue_name, {"n": 2})
        channel = connection.default_channel
        channel.queue_declare(queue_name)
        [received] = receive(connection, queue_name)  # n=1, held by its consumer
        # The lost read: the group hands n=2 to this consumer; the answer goes nowhere.
        client.xreadgroup(GROUP, channel.consumer_name, {stream_key(queue_name): ">"}, count=1)
        assert pending(client, queue_name) == 2
        assert channel.reclaim_unknown(min_idle_seconds=0) == 1
        assert pending(client, queue_name) == 1  # n=1 stays with its consumer
        [again] = receive(connection, queue_name)
        assert again.payload == {"n": 2} and again.delivery_info["redelivered"] is True
        received.ack()
        again.ack()
    assert pending(client, queue_name) == 0


def test_the_transport_checks_the_private_kombu_attributes_it_relies_on():
    from broadcast_broker.stream_transport import missing_kombu_attributes

    assert missing_kombu_attributes() == []  # kombu as pinned
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import kombu.transport.redis as r; del r.Channel._flush_brpop_reauth; "
            "import broadcast_broker.stream_transport",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 1
    assert "does not support kombu" in probe.stderr
    assert "Channel._flush_brpop_reauth" in probe.stderr


def test_connection_urls_show_redis_so_tools_that_read_the_scheme_work(broker, queue_name):
    url, _client = broker
    with connect(url, queue_name) as connection:
        assert connection.as_uri().startswith("redis://")
        assert connection.as_uri().endswith(f"/{DB}")


def test_a_requeue_happens_once(broker, queue_name):
    url, client = broker
    with connect(url, queue_name) as connection:
        publish(connection, queue_name, {"n": 1})
        [message] = receive(connection, queue_name)
        channel = connection.default_channel
        channel._requeue([message.delivery_tag])
        channel._requeue([message.delivery_tag])  # a second requeue of one delivery
        assert client.xlen(stream_key(queue_name)) == 1
        assert pending(client, queue_name) == 0
        message.ack()  # acknowledging the old delivery removes nothing else
        [again] = receive(connection, queue_name)
        assert again.payload == {"n": 1} and again.delivery_info["redelivered"] is True
        again.ack()
        assert client.xlen(stream_key(queue_name)) == 0


def test_what_a_list_client_pushes_is_delivered(broker, queue_name):
    """A gateway's own Celery client speaks kombu's list protocol: its messages arrive."""
    url, client = broker
    with Connection(url) as list_client:  # kombu's own Redis transport
        publish(list_client, queue_name, {"from": "a list client"})
    assert client.llen(queue_name) == 1
    with connect(url, queue_name) as connection:
        channel = connection.default_channel
        channel.queue_declare(queue_name)
        assert channel._size(queue_name) == 1  # counted while still on the list
        assert channel.move_lists() == 1
        [message] = receive(connection, queue_name)
        assert message.payload == {"from": "a list client"}
        message.ack()
    assert client.llen(queue_name) == 0 and client.xlen(stream_key(queue_name)) == 0


def test_an_unreadable_entry_arrives_as_a_marked_stand_in_and_the_queue_goes_on(broker, queue_name):
    """What no envelope is (not zlib, nested past any recursion, a zlib bomb, headers that
    are not an object, a body that is not base64) is delivered as a stand-in with no body
    whose headers say why, with the entry's size and hash; acknowledging it removes the
    entry, and the next message is delivered as usual."""
    url, client = broker
    bomb = zlib.compress(b" " * (64 * 1024 * 1024), 9)  # 64 MiB of envelope
    bad_entries = {
        "not zlib": {b"z": b"\xff not zlib"},
        "deep": {b"z": zlib.compress(b"[" * 100_000 + b"]" * 100_000)},
        "bomb": {b"z": bomb},
        "headers": {b"j": b'{"properties": {}, "headers": [1], "body": ""}'},
        "base64": {b"j": b'{"properties": {"body_encoding": "base64"}, "body": "%%%"}'},
        "no object": {b"j": b'"just a string"'},
    }
    with connect(url, queue_name, max_message_bytes=1024 * 1024) as connection:
        connection.default_channel.queue_declare(queue_name)
        for fields in bad_entries.values():
            client.xadd(stream_key(queue_name), fields)
        publish(connection, queue_name, {"n": 2})
        *stand_ins, message = receive(connection, queue_name, count=len(bad_entries) + 1)
        assert message.payload == {"n": 2}
        reasons = []
        for stand_in, fields in zip(stand_ins, bad_entries.values(), strict=True):
            assert stand_in.body is None
            reasons.append(stand_in.headers[UNREADABLE_HEADER])
            digest = hashlib.sha256(b"".join(fields.values())).hexdigest()
            assert stand_in.headers[UNREADABLE_SHA256_HEADER] == digest
            stand_in.ack()
        message.ack()
    assert "inflates past the 1048576-byte limit" in reasons[2]
    assert "headers are not an object" in reasons[3] and "not base64" in reasons[4]
    assert client.xlen(stream_key(queue_name)) == 0


def test_size_counts_waiting_messages_and_purge_spares_delivered_ones(broker, queue_name):
    url, client = broker
    with connect(url, queue_name) as connection:
        for n in range(3):
            publish(connection, queue_name, {"n": n})
        channel = connection.default_channel
        [held] = receive(connection, queue_name)
        assert channel._size(queue_name) == 2
        assert channel.queue_purge(queue_name) == 2
        assert channel._size(queue_name) == 0
        assert pending(client, queue_name) == 1  # the delivered one is still held
        held.ack()
        assert client.xlen(stream_key(queue_name)) == 0


def test_consumers_that_hold_nothing_and_stopped_reading_are_forgotten(broker, queue_name):
    url, client = broker
    key = stream_key(queue_name)
    with connect(url, queue_name) as holder:
        with connect(url, queue_name) as gone:
            for n in range(2):
                publish(gone, queue_name, {"n": n})
            assert len(receive(gone, queue_name)) == 1
            gone.default_channel.qos.restore_unacked_once()  # a warm shutdown: holds nothing
        [held] = receive(holder, queue_name)  # a consumer that still holds a message
        assert len(client.xinfo_consumers(key, GROUP)) == 2
        with connect(url, queue_name, consumer_forget_idle_seconds=0.2) as watcher:
            channel = watcher.default_channel
            channel.queue_declare(queue_name)
            wait_for(lambda: channel.forget_gone_consumers() == 1, what="the idle one forgotten")
        [kept] = client.xinfo_consumers(key, GROUP)
        assert kept["pending"] == 1  # the one holding a message stays
        held.ack()


def test_beat_sends_again_once_the_broker_is_back(tmp_path: Path) -> None:
    """What beat does: one long-lived producer sends a task on every tick, with Celery's
    publish retry and no declaration. While Redis is down a send fails; once it is back
    the next goes through. (The producer was left on a closed channel, and every later
    send failed with an AttributeError that kombu does not retry: beat's sweep stopped
    after a Redis restart in the chaos run.)"""
    from celery import Celery

    from broadcast_broker.stream_transport import stream_key
    from broadcast_broker.topology import DELIVER_QUEUE, use_broker

    server = RedisServer(tmp_path, name="restarting", extra_args=["--appendfsync", "always"])
    app = Celery("beat-like")
    use_broker(app.conf, server.url)
    app.conf.broker_transport_options = {"stream_queues": [DELIVER_QUEUE]}
    client = redis_py.Redis.from_url(server.url)
    try:
        with app.connection_for_write() as connection:
            producer = app.amqp.Producer(connection, auto_declare=False)

            def tick() -> bool:
                try:
                    app.send_task(
                        "broadcast.deliver",
                        args=["dst"],
                        queue=DELIVER_QUEUE,
                        declare=[],  # as our routes: senders declare nothing
                        producer=producer,
                    )
                except Exception:  # beat logs any error and tries again on the next tick
                    return False
                return True

            assert tick()
            server.kill_hard()
            assert not tick()  # down: the tick fails, the producer stays
            server.start()
            assert tick()  # the next tick goes through
        assert client.xlen(stream_key(DELIVER_QUEUE)) == 2
    finally:
        server.stop()


def test_queue_state_counts_the_consumers_reading_a_queue_and_its_oldest_waiting_message(
    broker, queue_name
):
    """What `broadcast metrics serve` reads: a consumer's heartbeat names the queues it
    reads, and the oldest message not handed out is as old as its entry id says."""
    url, client = broker
    other = f"{queue_name}.other"
    with connect(url, queue_name) as connection:
        channel = connection.default_channel
        publish(connection, queue_name, {"n": 1})
        sent_at = time.time()
        state = channel.queue_state(queue_name)
        assert state.consumers == 0
        assert state.oldest_waiting_at is not None
        assert sent_at - 5 < state.oldest_waiting_at <= sent_at + 0.01
        [message] = receive(connection, queue_name)  # handed out: nothing waits now
        with connection.Consumer(declared(queue_name), callbacks=[lambda *_: None]):
            state = channel.queue_state(queue_name)
            assert state.consumers == 1 and state.oldest_waiting_at is None
            assert channel.queue_state(other).consumers == 0  # it does not read that one
        message.ack()
    # A worker of an earlier version wrote "1": it is taken to read every queue.
    client.hset(CONSUMER_REGISTRY, "old:1:x", "0")
    client.set(HEARTBEAT_PREFIX + "old:1:x", "1", px=5000)
    with connect(url, queue_name) as connection:
        assert connection.default_channel.queue_state(other).consumers == 1
