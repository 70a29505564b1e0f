"""`BROADCAST_LOG_FORMAT=json`: the stable event names and fields as JSON log lines."""

from __future__ import annotations

import json
import logging
import os

import pytest

from broadcast_interfaces.log_format import JsonFormatter, parse_message
from harness.processes import celery_worker
from harness.samples import chat_event
from harness.waiting import wait_for
from settings.config import ConfigurationError, load_config


@pytest.mark.parametrize(
    ("message", "event", "fields"),
    [
        (
            "broadcast.fan_out.enqueued request=gen-1 owner=user:u1 destinations=2 parked=0",
            "broadcast.fan_out.enqueued",
            {"request": "gen-1", "owner": "user:u1", "destinations": 2, "parked": 0},
        ),
        (
            "broadcast.deliver.retry destination=d1 wait=2.5 error=read timed out (30 s)",
            "broadcast.deliver.retry",
            {"destination": "d1", "wait": 2.5, "error": "read timed out (30 s)"},
        ),
        (
            "broadcast.event.rejected event gen-9: field 'model': Missing data",
            "broadcast.event.rejected",
            {"text": "event gen-9: field 'model': Missing data"},
        ),
        ("broadcast.x.y level=3 time=None", "broadcast.x.y", {"level_": 3, "time_": None}),
        ("Task broadcast.fan_out[abc] received", None, {}),
        ("celery@host ready.", None, {}),
    ],
)
def test_parse_message(message, event, fields):
    assert parse_message(message) == (event, fields)


def test_formatter_writes_one_json_object_per_line():
    record = logging.LogRecord(
        "broadcast.deliver", logging.WARNING, __file__, 1,
        "broadcast.deliver.failed destination=%s status=%d", ("d1", 400), None,
    )  # fmt: skip
    line = JsonFormatter().format(record)
    assert "\n" not in line
    document = json.loads(line)
    assert document["event"] == "broadcast.deliver.failed"
    assert document["destination"] == "d1" and document["status"] == 400
    assert document["logger"] == "broadcast.deliver" and document["level"] == "WARNING"
    assert document["message"] == "broadcast.deliver.failed destination=d1 status=400"
    assert document["time"].endswith("+00:00")


def test_an_unknown_format_is_a_start_up_error():
    with pytest.raises(ConfigurationError, match="BROADCAST_LOG_FORMAT"):
        load_config({"BROADCAST_LOG_FORMAT": "xml"})
    assert load_config({"BROADCAST_LOG_FORMAT": "json"}).log_format == "json"


def test_a_real_worker_logs_json(redis_server, workdir, service, user_id, receiver):
    """A worker started with the setting logs JSON lines with the stable event names."""
    from tasks import broadcast

    # Its own queue, so this worker (not the session's) handles the events sent below.
    queue = "bc-test.jsonlog"
    env = dict(os.environ, BROADCAST_LOG_FORMAT="json")
    worker = celery_worker(env, workdir, name="jsonlog", queues=queue, concurrency=2)
    try:
        sink = receiver()
        service.add_destination(f"user:{user_id}", "webhook", "json", {"url": sink.url})
        broadcast.apply_async(args=[{"id": f"{user_id}-broken", "user_id": user_id}], queue=queue)
        broadcast.apply_async(
            args=[chat_event(1, user_id=user_id, id=f"{user_id}-j1")], queue=queue
        )

        def logged_events() -> set[str]:
            lines = worker.log_path.read_text(errors="replace").splitlines()
            documents = [json.loads(line) for line in lines if line.startswith("{")]
            return {d["event"] for d in documents if "event" in d}

        events = wait_for(
            lambda: {"broadcast.event.rejected"} <= (found := logged_events()) and found,
            timeout=30,
            what="the worker's JSON log lines",
        )
        assert all(name.startswith("broadcast.") for name in events)
        text_lines = [
            line
            for line in worker.log_path.read_text(errors="replace").splitlines()
            if line.strip() and not line.startswith("{")
        ]
        # Celery's start-up banner is printed before logging is set up; everything after is JSON.
        assert not [line for line in text_lines if "broadcast." in line and "=" in line]
    finally:
        worker.stop()
