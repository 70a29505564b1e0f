"""The pieces that keep broker messages from stopping a worker, one at a time: bounded
decompression, the vetting of a kombu Message, the unreadable-message record, its CLI
listing and its metric. (Through a real prefork worker: tests/test_hostile_messages.py.)"""

from __future__ import annotations

import bz2
import contextlib
import io
import json
import lzma
import tracemalloc
import uuid
import zlib
from typing import Any

import pytest
from kombu import compression
from kombu.message import Message

from broadcast_broker.bounded_compression import CHUNK_BYTES, InflateRefused, inflate
from broadcast_broker.message_vetting import UNREADABLE_HEADER, VettingLimits, problem
from broadcast_engine.unreadable_messages import OTHER_QUEUE, UnreadableMessage, UnreadableMessages
from broadcast_interfaces.cli import main
from broadcast_interfaces.metrics import BroadcastCollector, Sources
from settings import keys

MIB = 1024 * 1024

# Bounded decompression


@pytest.mark.parametrize(
    ("method", "compress"),
    [("zlib", zlib.compress), ("bz2", bz2.compress), ("lzma", lzma.compress)],
)
def test_inflate_round_trips_within_the_limit_and_refuses_past_it(method, compress):
    text = b"0123456789" * 100_000  # 1 MB
    assert inflate(compress(text), method, len(text)) == text
    with pytest.raises(InflateRefused, match="inflates past the 999999-byte limit"):
        inflate(compress(text), method, len(text) - 1)
    with pytest.raises(InflateRefused, match="truncated"):
        inflate(compress(text)[:-20], method, 10 * MIB)
    with pytest.raises(InflateRefused, match="after the end"):
        inflate(compress(text) + b"trailing", method, 10 * MIB)
    with pytest.raises(InflateRefused, match=f"not a {method} stream"):
        inflate(b"\xff\x00 garbage " * 10, method, 10 * MIB)


def test_inflate_refuses_what_is_not_bytes_and_unknown_methods():
    with pytest.raises(InflateRefused, match="must be bytes"):
        inflate("text", "zlib", 100)
    with pytest.raises(InflateRefused, match="'brotli' is not accepted"):
        inflate(b"x", "brotli", 100)


def test_a_bomb_costs_the_limit_not_its_inflated_size():
    """256 MiB of zeros (256 KiB compressed) against a 1 MiB limit: the memory Python
    allocated at the peak stays within the limit and a few chunks."""
    bomb = zlib.compress(bytes(256 * MIB), 9)
    tracemalloc.start()
    try:
        with pytest.raises(InflateRefused):
            inflate(bomb, "zlib", MIB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.25 * MIB + 4 * CHUNK_BYTES, peak  # a bytearray grows by an eighth


def test_kombu_inflates_within_the_limit_once_registered():
    """celeryconfig registers the bounded decoders (the test process loaded it)."""
    import celeryconfig  # noqa: F401 - registers the codec and the decoders

    small = zlib.compress(b"[[], {}, {}]")
    assert compression.decompress(small, "application/x-gzip") == b"[[], {}, {}]"
    with pytest.raises(InflateRefused):
        compression.decompress(zlib.compress(bytes(40 * MIB)), "application/x-gzip")
    with pytest.raises(InflateRefused):
        compression.decompress(bz2.compress(bytes(40 * MIB)), "application/x-bz2")


# Vetting one message


LIMITS = VettingLimits(max_body_bytes=4096)


def message(body: Any = None, content_type: Any = "application/json", headers: Any = None,
            **fields: Any) -> Message:  # fmt: skip
    if headers is None:
        headers = {"task": "broadcast.fan_out", "id": str(uuid.uuid4()), **fields}
    if body is None:
        body = json.dumps([[{"id": "e"}], {}, {"callbacks": None}]).encode()
    built = Message(body=body, content_type=content_type, content_encoding="utf-8",
                    headers=headers, delivery_tag="broadcast.fanout#1-0")  # fmt: skip
    built.accept = {"application/json"}
    return built


def test_a_well_formed_task_message_passes_and_is_decoded_once():
    good = message(timelimit=[None, 30], retries=0, eta=None)
    assert problem(good, LIMITS) is None
    assert good.payload == [[{"id": "e"}], {}, {"callbacks": None}]  # cached by the vetting


@pytest.mark.parametrize(
    ("built", "words"),
    [
        (message(content_type=None), "content type (none)"),
        (message(content_type="application/data"), "'application/data' is not"),
        (message(body=b""), "the body is empty"),
        (message(body=b"[" + b" " * 5000 + b"]"), "the body is 5002 bytes, more than 4096"),
        (message(body=b"\xff\xfe"), "not JSON a worker can read (UnicodeDecodeError"),
        (message(body=b'"args"'), "not str"),
        (message(body=b'["args", {}, {}]'), "args must be a list"),
        (message(body=b"[[], [], {}]"), "kwargs must be an object"),
        (message(body=b"[[], {}, []]"), "third item"),
        (message(id={"an": "object"}), "header 'id' must be a string"),
        (message(id="x" * 257), "header 'id' must be a string of 1 to 256"),
        (message(id="a\u2028b"), "control characters"),
        (message(task=""), "header 'task' must be a string"),
        (message(timelimit="ab"), "'timelimit' must be [soft, hard]"),
        (message(timelimit=[float("inf"), None]), "'timelimit'"),
        (message(timelimit=[True, None]), "'timelimit'"),
        (message(retries=-1), "'retries' must be a non-negative integer"),
        (message(root_id=5), "'root_id' must be a string"),
        (message(ignore_result="yes"), "'ignore_result'"),
        (message(stamped_headers="abc"), "'stamped_headers'"),
        (message(stamps=[]), "'stamps' must be an object"),
        # hybrid: the body's fields count, the headers winning
        (message(body=b'{"args": [], "timelimit": "x"}'), "field 'timelimit'"),
        # protocol 1
        (message(headers={}, body=b'{"foo": 1}'), "neither the headers nor the body"),
        (message(headers={}, body=b"[1]"), "must be a task object, not list"),
        (message(headers={UNREADABLE_HEADER: "from the transport"}), "from the transport"),
    ],
)
def test_what_celery_could_not_take_is_named(built, words):
    assert words in problem(built, LIMITS)


def test_protocol_1_and_hybrid_messages_that_are_well_formed_pass():
    proto1 = json.dumps({"task": "broadcast.fan_out", "id": "t1", "args": [{}], "kwargs": {}})
    assert problem(message(headers={}, body=proto1.encode()), LIMITS) is None
    hybrid = message(body=b'{"args": [{}], "kwargs": {}}')
    assert problem(hybrid, LIMITS) is None


# The record, its listing and its metric


@pytest.fixture
def unreadable(store) -> UnreadableMessages:
    for name in (*UnreadableMessages.listed_queues(), "elsewhere"):
        store.redis.delete(keys.unreadable(name))
    store.redis.delete(keys.UNREADABLE_COUNTS)
    return UnreadableMessages(store.redis, max_entries=5)


def entry(queue: str = "broadcast.fanout", **fields: Any) -> UnreadableMessage:
    values = {"reason": "the body is empty", "size": 0, "sha256": "0" * 64, **fields}
    return UnreadableMessage(queue=queue, **values)


def test_records_are_escaped_capped_per_queue_and_counted(unreadable, store):
    unreadable.record(entry(task_id="x\n[forged] line", reason="a\rb"), now=1.0)
    unreadable.record(entry("a-queue-of-a-stranger"), now=2.0)
    for at in range(10):
        unreadable.record(entry("broadcast.deliver"), now=10.0 + at)
    fanout = unreadable.latest("broadcast.fanout")
    assert fanout[0]["task_id"] == "x\\n[forged] line" and fanout[0]["reason"] == "a\\rb"
    assert unreadable.latest(OTHER_QUEUE)[0]["at"] == 2.0
    assert not store.redis.exists(keys.unreadable("a-queue-of-a-stranger"))
    # a flood on one queue keeps its stream at the cap...
    assert store.redis.xlen(keys.unreadable("broadcast.deliver")) == 5
    # ... and never erases another queue's records
    assert len(unreadable.latest("broadcast.fanout")) == 1
    assert unreadable.counts() == {
        "broadcast.fanout": 1, "broadcast.deliver": 10, "broadcast.maintenance": 0, "other": 1
    }  # fmt: skip
    newest = unreadable.latest(limit=3)
    assert [e["at"] for e in newest] == [19.0, 18.0, 17.0]
    assert [e["at"] for e in unreadable.latest("broadcast.deliver", 10)][-1] == 15.0


def run_cli(service, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv), service=service)
    return status, out.getvalue(), err.getvalue()


def test_broadcast_unreadable_lists_for_the_operator_only(unreadable, service):
    unreadable.record(entry(task="broadcast.fan_out", task_id="t-1", size=12, sha256="ab" * 32),
                      now=1_700_000_000.0)  # fmt: skip
    status, out, _ = run_cli(service, "unreadable")
    assert status == 0 and "broadcast.fanout  task=broadcast.fan_out  id=t-1  12 bytes" in out
    assert "sha256=" + "ab" * 32 in out and "the body is empty" in out
    status, out, _ = run_cli(service, "unreadable", "--queue", "broadcast.fanout", "--json")
    assert status == 0 and json.loads(out)[0]["task_id"] == "t-1"
    status, _, err = run_cli(service, "unreadable", "--actor", "user:eve")
    assert status == 2 and "unrecognized arguments: --actor" in err
    status, _, err = run_cli(service, "unreadable", "--queue", "nope")
    assert status == 2 and "--queue: one of broadcast.fanout" in err
    status, _, err = run_cli(service, "unreadable", "--limit", "0")
    assert status == 2 and "--limit: must be at least 1" in err


def test_the_metric_counts_per_queue(unreadable, store):
    unreadable.record(entry(), now=1.0)
    sources = Sources(store=store, broker_url="redis://127.0.0.1:1/0", broker_timeout=0.2,
                      unreadable=unreadable)  # fmt: skip
    family = next(f for f in BroadcastCollector(lambda: sources).collect()
                  if f.name == "broadcast_unreadable_messages")  # fmt: skip
    samples = {s.labels["queue"]: s.value for s in family.samples}
    assert samples["broadcast.fanout"] == 1 and samples["broadcast.deliver"] == 0
