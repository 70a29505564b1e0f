"""Hostile and broken events: limits, the broker codec, and a real prefork worker.

The prefork worker's main process decodes every message and pickles the arguments for
its child; these tests send what a careless gateway, another language's client, or an
attacker with broker access could send, and check the worker survives each one and the
event is rejected once with a reason naming the field.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broadcast_broker.message_codec import MessageCodec
from broadcast_engine.events import InvalidEvent, build_trace, event_id_of
from destinations.trace import Trace
from harness.processes import ManagedProcess, RedisServer
from harness.samples import chat_event, tool_call_event
from harness.waiting import wait_for
from settings.config import load_config
from settings.event_limits import LIMIT_MARKER, EventLimits, check_event

LIMITS = EventLimits()


def nested(depth: int, leaf: Any = "x") -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def deep_event(depth: int, **overrides: Any) -> dict[str, Any]:
    event = chat_event(1, **overrides)
    event["trace"] = {"trace_name": "t", "deep": nested(depth)}
    return event


# Limits, checked by build_trace


@pytest.mark.parametrize(
    ("event", "field", "words"),
    [
        (deep_event(900), "trace.deep.0.0.0.0", "nested deeper than 64 levels"),
        (deep_event(100_000), "trace.deep", "nested deeper than 64 levels"),
        (chat_event(1, user="u" * (LIMITS.max_string_chars + 1)), "user", "string longer"),
        (
            chat_event(1, request={"messages": [{"role": "user", "content": "hi"}] * 10_001}),
            "request.messages",
            "more than 10000 messages",
        ),
    ],
    ids=["depth-900", "depth-100000", "long-string", "too-many-messages"],
)
def test_limit_breaking_event_is_rejected_naming_the_field(event, field, words):
    with pytest.raises(InvalidEvent) as caught:
        build_trace(event)
    assert caught.value.event_id == "gen-000001"
    assert caught.value.reason.startswith(field)
    assert words in caught.value.reason
    assert str(caught.value).startswith("event gen-000001 rejected: ")


def test_total_size_limit():
    small = EventLimits(max_bytes=4096)
    event = chat_event(1, user="u" * 100)
    event["trace"] = {f"k{i}": "v" * 100 for i in range(60)}
    with pytest.raises(InvalidEvent, match=r"event: larger than 4096 bytes"):
        build_trace(event, small)
    build_trace(chat_event(1), small)


def test_event_at_the_depth_limit_is_accepted():
    # the event is level 1, trace level 2, the list levels 3..64
    event = deep_event(62)
    check_event(event, LIMITS)
    assert build_trace(event).metadata.extra["deep"]


def test_limits_come_from_the_config_with_explicit_over_environment():
    environ = {"BROADCAST_EVENT_MAX_DEPTH": "10", "BROADCAST_EVENT_MAX_BYTES": "1000"}
    config = load_config(environ, event_max_depth=5)
    limits = EventLimits.from_config(config)
    assert (limits.max_depth, limits.max_bytes) == (5, 1000)
    assert EventLimits.from_config(load_config({})) == EventLimits()


# The broker codec


def proto2(*args: Any) -> str:
    return json.dumps([list(args), {}, {"callbacks": None, "errbacks": None, "chain": None}])


def test_codec_decodes_ordinary_messages_like_kombu():
    codec = MessageCodec(LIMITS)
    body = proto2(tool_call_event(3))
    assert codec.loads(body) == json.loads(body)
    assert codec.loads(body.encode()) == json.loads(body)


@pytest.mark.parametrize("depth", [900, 3_000, 200_000])
def test_codec_cuts_a_deep_argument_into_a_marker(depth):
    event = chat_event(1, id="deep-id", org_id="acme")
    text = proto2(event)
    text = text.replace('"trace": {', '"trace": {"deep": ' + "[" * depth + "]" * depth + ", ", 1)
    args, _kwargs, _embed = MessageCodec(LIMITS).loads(text)
    marker = args[0]
    assert marker["id"] == "deep-id" and marker["org_id"] == "acme"
    assert marker[LIMIT_MARKER].startswith("trace.deep.0.0.0")
    with pytest.raises(InvalidEvent, match=r"event deep-id rejected: trace\.deep"):
        build_trace(marker)


def test_codec_cuts_protocol_1_messages_too():
    body = {"task": "broadcast.fan_out", "id": "x", "args": [deep_event(900)], "kwargs": {}}
    decoded = MessageCodec(LIMITS).loads(_deep_json_dumps(body))
    assert LIMIT_MARKER in decoded["args"][0]


def test_codec_marks_an_oversized_argument():
    codec = MessageCodec(EventLimits(max_bytes=1000))
    event = chat_event(1, user="u" * 400_000)
    args, _, _ = codec.loads(proto2(event))
    assert args[0][LIMIT_MARKER] == "event: larger than 1000 bytes"


def test_codec_refuses_a_deep_body_that_is_no_task_message():
    with pytest.raises(ValueError, match="nested deeper"):
        MessageCodec(LIMITS).loads("[" * 5_000 + "]" * 5_000)


def test_codec_encodes_a_too_deep_argument_as_a_marker_instead_of_failing():
    codec = MessageCodec(LIMITS)
    event = deep_event(5_000, id="enc-1")
    text = codec.dumps(((event,), {}, {"callbacks": None}))
    args, _, _ = json.loads(text)
    assert args[0]["id"] == "enc-1" and "nested deeper" in args[0][LIMIT_MARKER]


def _deep_json_dumps(value: Any) -> str:
    """json.dumps for a value nested deeper than the recursion limit allows."""
    parts: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Raw):
            parts.append(item.text)
        elif isinstance(item, dict):
            stack.append(_Raw("}"))
            for index, (key, child) in reversed(list(enumerate(item.items()))):
                stack += [child, _Raw(json.dumps(key) + ":")]
                if index:
                    stack.append(_Raw(","))
            stack.append(_Raw("{"))
        elif isinstance(item, list):
            stack.append(_Raw("]"))
            for index, child in reversed(list(enumerate(item))):
                stack.append(child)
                if index:
                    stack.append(_Raw(","))
            stack.append(_Raw("["))
        else:
            parts.append(json.dumps(item))
    return "".join(parts)


class _Raw:
    def __init__(self, text: str) -> None:
        self.text = text


# Property-based: any event is either accepted or rejected naming a field


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
FIELDS = [*sorted(chat_event(0)), "org_id", "error", "tools"]
NESTED_PATHS = [
    ("request", "messages"),
    ("request", "messages", 0),
    ("request", "messages", 0, "content"),
    ("request", "tools"),
    ("response", "choices"),
    ("response", "choices", 0, "message"),
    ("usage", "prompt_tokens"),
    ("cost", "total"),
    ("trace", "trace_id"),
    ("trace", "parent_span_id"),
]


@st.composite
def mutated_events(draw: st.DrawFn, keep_identity: bool = False) -> dict[str, Any]:
    """A valid event with a few fields replaced by arbitrary JSON (or removed)."""
    event = copy.deepcopy(draw(st.sampled_from([chat_event(1), tool_call_event(2)])))
    paths = [(name,) for name in FIELDS] + NESTED_PATHS
    if keep_identity:
        paths = [p for p in paths if p[0] not in ("id", "user_id", "org_id")]
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3)):
        parent: Any = event
        for part in path[:-1]:
            parent = parent[part] if _has(parent, part) else None
        if parent is None or not isinstance(parent, dict | list) or not _has(parent, path[-1]):
            if isinstance(parent, dict):
                parent[path[-1]] = draw(_json)
            continue
        if isinstance(parent, dict) and draw(st.booleans()) and len(path) > 1:
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(_json | st.just(nested(draw(st.integers(60, 200)))))
    return event


def _has(container: Any, key: Any) -> bool:
    if isinstance(container, dict):
        return key in container
    return isinstance(container, list) and isinstance(key, int) and key < len(container)


def _names_a_field(reason: str) -> bool:
    head = reason.split(":", 1)[0]
    return bool(head) and (head.split(".")[0] in [*FIELDS, "event"] or head.startswith("the "))


@settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(mutated_events())
def test_fuzzed_event_is_accepted_or_rejected_naming_a_field(event):
    try:
        trace = build_trace(event)
    except InvalidEvent as exc:
        assert _names_a_field(exc.reason), exc.reason
        assert exc.event_id == event_id_of(event)
        return
    assert isinstance(trace, Trace)
    json.dumps(trace.to_wire())  # what fan_out sends on must be encodable


# Through a real prefork worker


@pytest.fixture(scope="module")
def prefork(redis_server: RedisServer, workdir) -> Iterator[tuple[ManagedProcess, Celery]]:
    """A real prefork worker on its own broker database (the session's threads worker, if
    running, must not take these messages); the settings store is the shared one."""
    broker = redis_server.url.rsplit("/", 1)[0] + "/7"
    client = Celery("broadcast-test-client", set_as_current=False)
    client.config_from_object("celeryconfig")
    client.conf.broker_url = broker
    hostname = f"prefork-{os.getpid()}@%h"
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "prefork", "-c", "2"]
    argv += ["-Q", "broadcast.fanout,broadcast.deliver", "-n", hostname, "-l", "INFO"]
    argv += ["--without-gossip", "--without-mingle"]
    process = ManagedProcess(
        "prefork", argv, {**os.environ, "BROADCAST_BROKER_URL": broker}, workdir
    )

    def answered() -> bool:
        if not process.alive():
            raise RuntimeError(f"worker exited:\n{process.log_tail()}")
        return bool(client.control.ping(timeout=0.5))

    wait_for(answered, timeout=60, what="the prefork worker to answer a ping")
    yield process, client
    process.stop()


def raw_publish(client: Celery, body: bytes, headers: dict[str, Any], queue: str) -> None:
    """LPUSH a kombu envelope as the Redis transport stores it: what any client can send."""
    tag = str(uuid.uuid4())
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": headers.get("id", tag),
            "delivery_mode": 2,
            "delivery_info": {"exchange": queue, "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": tag,
        },
    }
    redis.Redis.from_url(client.conf.broker_url).lpush(queue, json.dumps(envelope))


def task_headers(task_id: str) -> dict[str, Any]:
    return {"lang": "go", "task": "broadcast.fan_out", "id": task_id, "root_id": task_id}


@pytest.fixture
def hook(service, user_id, receiver):
    sink = receiver()
    service.add_destination(f"user:{user_id}", "webhook", "hook", {"url": sink.url + "/in"})
    sink.clear()
    return sink


def rejected_reason(store, event_id: str) -> str | None:
    for entry in store.rejected_events(None, 500):
        if entry["id"] == event_id:
            return entry["reason"]
    return None


def delivered_ids(sink) -> set[str]:
    return {json.loads(r.body)["data"]["requestId"] for r in sink.requests("/in")}


@pytest.mark.integration
def test_poison_messages_leave_the_prefork_worker_alive(prefork, store, user_id, hook):
    process, client = prefork
    owner = f"user:{user_id}"
    queue = "broadcast.fanout"
    # 1. a raw depth-900 protocol-2 message, as any client could LPUSH it
    raw_id = f"{user_id}-raw900"
    event = chat_event(1, id=raw_id, user_id=user_id)
    text = proto2(event).replace('"trace": {', '"trace": {"deep": ' + "[" * 900 + "]" * 900 + ",")
    raw_publish(client, text.encode(), task_headers(str(uuid.uuid4())), queue)
    # 2. a foreign client's send_task with a depth-900 event (kombu encodes it fine)
    sent_id = f"{user_id}-sent900"
    client.send_task("broadcast.fan_out", args=[deep_event(900, id=sent_id, user_id=user_id)])
    # 3. a protocol-1 message (the body carries the task), nested 100,000 deep
    proto1_id = f"{user_id}-proto1"
    body = {
        "task": "broadcast.fan_out",
        "id": str(uuid.uuid4()),
        "args": [deep_event(100_000, id=proto1_id, user_id=user_id)],
        "kwargs": {},
    }
    raw_publish(client, _deep_json_dumps(body).encode(), {}, queue)
    # 4. garbage: not JSON, a deep array that is no task message, wrong arguments
    raw_publish(client, b"\xff{not json", task_headers(str(uuid.uuid4())), queue)
    raw_publish(client, b"[" * 50_000 + b"]" * 50_000, task_headers(str(uuid.uuid4())), queue)
    wrong_id = f"{user_id}-wrong-args"
    client.send_task("broadcast.fan_out", args=[chat_event(1, id=wrong_id, user_id=user_id), 2])

    for event_id, words in (
        (raw_id, "trace.deep.0.0.0.0.…: nested deeper than 64 levels"),
        (sent_id, "trace.deep.0.0.0.0.…: nested deeper than 64 levels"),
        (proto1_id, "trace.deep.0.0.0.0.…: nested deeper than 64 levels"),
        (wrong_id, "exactly one argument"),
    ):
        reason = wait_for(lambda e=event_id: rejected_reason(store, e), timeout=30, what=event_id)
        assert words in reason
    assert store.rejected_count(owner) == 4  # each rejected once, never retried

    normal_id = f"{user_id}-normal"
    client.send_task("broadcast.fan_out", args=[chat_event(2, id=normal_id, user_id=user_id)])
    wait_for(lambda: normal_id in delivered_ids(hook), timeout=30, what="a normal delivery")
    assert process.alive(), process.log_tail()
    log = process.log_path.read_text(errors="replace")
    assert "RecursionError" not in log and "Unrecoverable error" not in log
    assert "exited with" not in log, "a pool child died"


@pytest.mark.integration
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(events=st.lists(mutated_events(keep_identity=True), min_size=1, max_size=3))
def test_fuzzed_events_through_the_prefork_worker(prefork, store, user_id, hook, events):
    process, client = prefork
    expected: dict[str, bool] = {}
    for event in events:
        event["id"] = f"{user_id}-fz-{uuid.uuid4().hex[:10]}"
        event["user_id"], event["org_id"] = user_id, None
        try:
            build_trace(event)
            expected[event["id"]] = True
        except InvalidEvent:
            expected[event["id"]] = False
        client.send_task("broadcast.fan_out", args=[event])

    def settled() -> bool:
        delivered = delivered_ids(hook)
        return all(
            (event_id in delivered) if ok else rejected_reason(store, event_id) is not None
            for event_id, ok in expected.items()
        )

    wait_for(settled, timeout=30, what="every fuzzed event delivered or rejected")
    assert process.alive(), process.log_tail()
    log = process.log_path.read_text(errors="replace")
    assert " retry: " not in log and "Retry in" not in log
    assert "broadcast.task.failed" not in log, log[-3000:]
