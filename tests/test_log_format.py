"""`BROADCAST_LOG_FORMAT=json`: the stable event names and fields as JSON log lines."""

from __future__ import annotations

import json
import logging
import os

import pytest

from broadcast_interfaces.log_format import (
    CONTINUATION,
    JsonFormatter,
    SingleLineFormatter,
    parse_message,
    parse_record,
)
from harness.processes import RedisServer, celery_beat, celery_worker
from harness.receiver import Receiver, Reply
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


JSON_DELIVERY_FIELDS = {
    "outcome", "destination", "type", "owner", "task", "traces", "requests", "status",
    "duration_ms", "next", "error",
}  # fmt: skip


def test_every_line_a_json_worker_and_beat_write_is_json(workdir):
    """Issue 21 item 3: with `BROADCAST_LOG_FORMAT=json`, every line a prefork worker and
    beat write on stdout and stderr is one JSON object, from the first (Celery's banner,
    Python warnings) to the last (the shutdown notice); a delivery line names its owner,
    destination id and type, task, duration, outcome and request ids."""
    from broadcast_broker.task_client import task_client
    from broadcast_engine.runtime import Runtime
    from broadcast_interfaces.service import settings_service

    root = workdir / "jsonlog"
    root.mkdir(exist_ok=True)
    server = RedisServer(root, name="redis")
    env = {
        **os.environ,
        "BROADCAST_BROKER_URL": server.url,
        "BROADCAST_STORE_URL": server.url,
        "BROADCAST_LOG_FORMAT": "json",
        # A warning before Celery sets up its logging: it must come out as JSON too.
        "PYTHONWARNINGS": "always::DeprecationWarning",
    }
    worker = celery_worker(env, root, name="jsonlog", pool=None, concurrency=2)
    beat = celery_beat(env, root)
    sink = Receiver(lambda _r: Reply(200, b"{}")).start()
    try:
        service = settings_service(Runtime(load_config(environ=env)))
        service.set_enabled("user:ujson", True)
        destination = service.add_destination("user:ujson", "webhook", "json", {"url": sink.url})[
            "id"
        ]
        client = task_client(server.url)
        client.send_task("broadcast.fan_out", args=[{"id": "broken-1", "user_id": "ujson"}])
        client.send_task("broadcast.fan_out", args=[chat_event(1, user_id="ujson", id="jl-1")])

        def documents(process) -> list[dict]:
            lines = process.log_path.read_text(errors="replace").splitlines()
            return [json.loads(line) for line in lines if line.startswith("{")]

        delivered = wait_for(
            lambda: [
                d for d in documents(worker) if d.get("event") == "broadcast.deliver.delivered"
            ],
            timeout=60,
            what="the worker's JSON delivery line",
        )
        wait_for(
            lambda: any(d.get("event") == "broadcast.event.rejected" for d in documents(worker)),
            what="the rejection's JSON line",
        )
        wait_for(
            lambda: any(d.get("event") == "broadcast.beat.starting" for d in documents(beat)),
            what="beat's JSON start line",
        )
    finally:
        worker.stop()
        beat.stop()
        sink.stop()
        server.stop()
    line = delivered[0]
    assert JSON_DELIVERY_FIELDS <= set(line), line
    assert line["level"] == "INFO" and line["destination"] == destination
    assert line["event"] == "broadcast.deliver.delivered" and line["outcome"] == "delivered"
    assert line["type"] == "webhook" and line["owner"] == "user:ujson"
    assert line["requests"] == "jl-1" and line["traces"] == 1 and line["status"] == 200
    assert isinstance(line["duration_ms"], float | int) and line["task"]
    for process in (worker, beat):
        lines = [x for x in process.log_path.read_text(errors="replace").splitlines() if x.strip()]
        not_json = [x for x in lines if not _is_json_object(x)]
        assert not not_json, f"{process.name} wrote text lines: {not_json[:5]}"
        events = {d.get("event") for d in map(json.loads, lines)}
        assert f"broadcast.{'worker' if process is worker else 'beat'}.starting" in events
    worker_events = {
        d.get("event") for d in map(json.loads, worker.log_path.read_text().splitlines())
    }
    assert "broadcast.worker.notice" in worker_events  # Celery's shutdown notice


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


# Logs that cannot be forged (issue 22): a value from outside stays inside its own line
# (text) and its own field (JSON).

FORGED = "[2026-01-01 00:00:00,000: INFO/ForkPoolWorker-1] broadcast.deliver.delivered"
CELERY_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


def record(template: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("broadcast.deliver", logging.INFO, __file__, 1, template, args,
                             exc_info)  # fmt: skip


@pytest.mark.parametrize("breaker", ["\n", "\r", "\r\n", "\u2028", "\x85", "\x1b[2K\r", "\x0b"])
def test_a_text_record_stays_one_line_whatever_its_arguments(breaker):
    formatter = SingleLineFormatter(logging.Formatter(CELERY_FORMAT))
    forged = f"gen-1{breaker}{FORGED} destination=dst_FORGED"
    line = formatter.format(
        record("broadcast.deliver.delivered destination=%s request=%s", "d1", forged)
    )
    assert len(line.splitlines()) == 1 and line.startswith("[")
    assert "gen-1\\" in line and "destination=dst_FORGED" in line  # shown, escaped


def test_a_traceback_cannot_start_a_line_of_its_own():
    try:
        raise ValueError(f"vendor said: no\n{FORGED} destination=dst_FORGED")
    except ValueError:
        import sys

        info = sys.exc_info()
    text = SingleLineFormatter(logging.Formatter(CELERY_FORMAT)).format(
        record("broadcast.deliver.crashed destination=%s", "d1", exc_info=info)
    )
    first, *rest = text.splitlines()
    assert first.startswith("[") and rest and all(line.startswith(CONTINUATION) for line in rest)
    assert not any(line.startswith("[") for line in rest)


def test_an_ordinary_text_record_is_left_to_the_inner_formatter():
    inner = logging.Formatter(CELERY_FORMAT)
    plain = record("broadcast.deliver.delivered destination=%s", "d1")
    assert SingleLineFormatter(inner).format(plain) == inner.format(plain)


def test_json_fields_come_from_the_template_not_from_the_arguments():
    forged = record(
        "broadcast.deliver.delivered destination=%s request=%s status=%d",
        "d1", "gen-1 destination=dst_FORGED status=200", 503,
    )  # fmt: skip
    event, fields = parse_record(forged)
    assert event == "broadcast.deliver.delivered"
    assert fields == {"destination": "d1", "request": "gen-1 destination=dst_FORGED status=200",
                      "status": 503}  # fmt: skip
    text_first = record("broadcast.event.rejected %s owner=%s", "event x rejected: a=b", "user:u")
    assert parse_record(text_first)[1] == {"text": "event x rejected: a=b", "owner": "user:u"}


def test_a_json_line_is_one_line_for_every_line_breaking_reader():
    line = JsonFormatter().format(
        record("broadcast.deliver.delivered request=%s", "a\u2028b\u2029c\x85d\x7fe\ud800f\ng")
    )
    assert len(line.splitlines()) == 1
    assert json.loads(line)["request"] == "a\u2028b\u2029c\x85d\x7fe\ud800f\ng"


def test_a_real_worker_logs_hostile_ids_on_their_own_line(worker, service, user_id, receiver):
    """Issue 22's forgery through the session's worker (text logs): a newline in an event
    id (accepted) and in a trace key (rejected with the key in the reason)."""
    from tasks import broadcast

    sink = receiver()
    service.add_destination(f"user:{user_id}", "webhook", "logs", {"url": sink.url})
    forged_id = f"{user_id}-id\n{FORGED} destination=dst_FORGED"
    broadcast.delay(chat_event(1, user_id=user_id, id=forged_id))
    deep: object = "x"
    for _ in range(70):
        deep = [deep]
    trace = {f"key\n{FORGED} destination=dst_KEY": deep}  # nested past the limit
    broadcast.delay(chat_event(2, user_id=user_id, id=f"{user_id}-key", trace=trace))
    wait_for(lambda: len(sink.requests()) == 2, what="the accepted event delivered")
    wait_for(lambda: service.rejected_events(f"user:{user_id}"), what="the rejection")
    wait_for(lambda: "dst_KEY" in worker.log_path.read_text(errors="replace"), what="logged")
    log = worker.log_path.read_text(errors="replace")
    assert f"{user_id}-id\\n[2026" in log
    assert not [line for line in log.splitlines() if "dst_FORGED" in line or "dst_KEY" in line
                if line.startswith("[2026-01-01")]  # fmt: skip


def test_the_api_server_logs_json_when_asked(redis_server, workdir):
    """`broadcast serve` with `BROADCAST_LOG_FORMAT=json`: its own lines and uvicorn's
    (start, access log, shutdown) are JSON objects, one per line."""
    import requests

    from harness.api_server import ApiServer

    own_dir = workdir / "json-api"  # workdir is the session's: api.log of other tests is there
    own_dir.mkdir(exist_ok=True)
    server = ApiServer(dict(os.environ, BROADCAST_LOG_FORMAT="json"), own_dir)
    try:
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
        wait_for(
            lambda: "/healthz" in server.process.log_path.read_text(errors="replace"),
            what="the access log line",
        )
    finally:
        server.stop()
    lines = [x for x in server.process.log_path.read_text(errors="replace").splitlines() if x]
    assert lines and all(_is_json_object(line) for line in lines), lines
    documents = [json.loads(line) for line in lines]
    assert any(d.get("event") == "broadcast.api.starting" for d in documents)
    assert any(d["logger"] == "uvicorn.access" and "/healthz" in d["message"] for d in documents)
