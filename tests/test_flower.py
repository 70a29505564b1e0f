"""Flower against the Redis broker (issue 17, item 7): its Broker page and queue-length API
answer instead of erroring; and (issue 21, item 1) the states it shows mean outcomes.

The stream transport's connection URL reads `redis://`, so
Flower picks its Redis client; the counts it shows are kombu's list lengths (messages a
list client pushed that the workers have not moved into the streams yet): the supported
queue depth is the metric `broadcast_queue_depth` (docs/production.md)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import pytest
import requests

from harness.processes import ManagedProcess, celery_beat, free_port
from harness.receiver import Reply
from harness.samples import chat_event
from harness.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def flower(worker, workdir) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"}
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "flower"]
    argv += [f"--port={port}", "--address=127.0.0.1"]
    process = ManagedProcess("flower", argv, env, workdir)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not process.alive():
            raise RuntimeError(f"flower exited:\n{process.log_tail()}")
        try:
            return requests.get(url + "/healthcheck", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=60, what="Flower to answer")
    yield url
    process.stop()


def test_flowers_broker_page_answers_for_the_redis_broker(flower):
    page = requests.get(flower + "/broker", timeout=10)
    assert page.status_code == 200
    assert "redis://" in page.text and "not supported" not in page.text


def test_flowers_queue_length_api_answers_for_the_redis_broker(flower):
    answer = requests.get(flower + "/api/queues/length", timeout=10)
    assert answer.status_code == 200
    assert isinstance(answer.json()["active_queues"], list)


# Issue 21 item 1: states that mean outcomes, and a trace followed from fan_out to its
# vendor, in a real Flower reading the session worker's task events.


STREAM_PERIOD = 2.0


def flower_task(flower: str, task_id: str, state: str | None = None) -> dict:
    """The task as Flower's API shows it, once it has reached `state` (any final one)."""

    def seen() -> dict | None:
        answer = requests.get(f"{flower}/api/task/info/{task_id}", timeout=10)
        if answer.status_code != 200:
            return None
        task = answer.json()
        wanted = {state} if state else {"SUCCESS", "FAILURE", "REJECTED"}
        return task if task.get("state") in wanted else None

    return wait_for(seen, timeout=60, what=f"Flower to show task {task_id} {state or 'done'}")


def deliver_tasks_for(flower: str, request_id: str) -> list[dict]:
    """The deliver tasks Flower lists whose arguments name `request_id`."""
    answer = requests.get(
        f"{flower}/api/tasks", params={"taskname": "broadcast.deliver"}, timeout=10
    )
    answer.raise_for_status()
    return [task for task in answer.json().values() if request_id in (task.get("args") or "")]


def traces_received(sink) -> list:
    """The receiver's requests that carried traces (not Test Connection's)."""
    return [r for r in sink.requests() if not r.headers.get("x-test-connection")]


def test_an_invalid_event_is_rejected_without_a_traceback(flower, user_id):
    from tasks import broadcast

    sent = broadcast.delay({"id": f"{user_id}-invalid", "user_id": user_id})
    task = flower_task(flower, sent.id, "REJECTED")
    assert task["traceback"] is None
    assert f"{user_id}-invalid" in task["exception"] and "model" in task["exception"]
    assert task.get("rejected") is None  # Flower would print a raw epoch under that name
    page = requests.get(f"{flower}/task/{sent.id}", timeout=10)
    assert page.status_code == 200 and "REJECTED" in page.text
    assert "Traceback" not in page.text and "FAILURE" not in page.text


def test_a_trace_is_followed_from_fan_out_to_its_vendor(flower, service, user_id, receiver):
    from tasks import broadcast

    sink = receiver()
    service.add_destination(f"user:{user_id}", "webhook", "flower", {"url": sink.url})
    request_id = f"{user_id}-followed"
    sent = broadcast.delay(chat_event(1, user_id=user_id, id=request_id))
    fanned = flower_task(flower, sent.id, "SUCCESS")
    assert request_id in fanned["args"] and request_id in fanned["result"]
    delivered = wait_for(
        lambda: [t for t in deliver_tasks_for(flower, request_id) if t["state"] == "SUCCESS"],
        timeout=60,
        what="the deliver task of the trace, named by its request id",
    )
    assert "webhook" in delivered[0]["args"]
    assert "'destination_type': 'webhook'" in delivered[0]["result"]
    assert f"'request_ids': ['{request_id}']" in delivered[0]["result"]
    assert "'delivered': 1" in delivered[0]["result"]
    assert len(traces_received(sink)) == 1


def test_a_run_that_dead_letters_its_whole_batch_is_a_failure(flower, service, user_id, receiver):
    from tasks import broadcast

    # Test Connection passes; every trace is refused (400: permanent, dead-lettered).
    sink = receiver(
        lambda r: Reply(200) if r.headers.get("x-test-connection") else Reply(400, b"{}")
    )
    service.add_destination(f"user:{user_id}", "webhook", "refusing", {"url": sink.url})
    request_id = f"{user_id}-refused"
    broadcast.delay(chat_event(1, user_id=user_id, id=request_id))
    failed = wait_for(
        lambda: [t for t in deliver_tasks_for(flower, request_id) if t["state"] == "FAILURE"],
        timeout=60,
        what="the deliver run that dead-lettered the trace, FAILURE",
    )
    task = failed[0]
    assert "every trace dead-lettered" in task["exception"] and task["traceback"] is None
    assert f"'request_ids': ['{request_id}']" in task["result"]
    assert "'dead_lettered': 1" in task["result"]
    assert not [t for t in deliver_tasks_for(flower, request_id) if t["state"] == "SUCCESS"]


def test_beats_housekeeping_does_not_crowd_flowers_task_list(
    flower, worker, workdir, service, user_id, receiver
):
    """Under a steady stream of events (one every `STREAM_PERIOD` seconds, the rate of a
    quiet gateway, where housekeeping weighs most), with beat running for at least 25 s
    and its sweep reaching the worker at least twice, beat's housekeeping is at most 10 %
    of the tasks Flower lists. (Before, at this rate: about a fifth.)"""
    from tasks import broadcast

    sink = receiver()
    service.add_destination(f"user:{user_id}", "webhook", "steady", {"url": sink.url})
    sweeps_before = worker.log_path.read_text(errors="replace").count("maintenance.sweep[")
    started = time.time()
    beat = celery_beat(os.environ, workdir)
    sent = 0
    try:
        while True:
            sent += 1
            due = time.monotonic() + STREAM_PERIOD
            broadcast.delay(chat_event(sent, user_id=user_id, id=f"{user_id}-s{sent}"))
            wait_for(
                lambda n=sent: len(traces_received(sink)) >= n, timeout=60, what="the delivery"
            )
            log = worker.log_path.read_text(errors="replace")
            swept = log.count("maintenance.sweep[") - sweeps_before
            if time.time() - started >= 25 and swept >= 2:
                break
            assert time.time() - started < 240, "beat's sweep never reached the worker"
            # The stream's pace (not a wait for work): the next event is due at `due`.
            wait_for(lambda d=due: time.monotonic() >= d, timeout=STREAM_PERIOD + 1)
    finally:
        beat.stop()

    def listed_since_start() -> list[dict] | None:
        """Flower's tasks received since the test began, once this test's fan-out and
        deliver tasks are all among them (task events reach Flower in batches, up to
        0.25 s after the task)."""
        answer = requests.get(f"{flower}/api/tasks", params={"limit": 5000}, timeout=10)
        tasks = [t for t in answer.json().values() if (t.get("received") or 0) >= started]
        ours = [t for t in tasks if t["name"] in ("broadcast.fan_out", "broadcast.deliver")]
        return tasks if len(ours) >= 2 * sent else None

    listed = wait_for(listed_since_start, timeout=30, what="Flower to list the stream's tasks")
    housekeeping = [t for t in listed if t["name"].startswith("broadcast.maintenance.")]
    assert len(housekeeping) <= 0.10 * len(listed), (len(housekeeping), len(listed))


def test_a_failed_circuit_probe_is_a_failure(flower, service, user_id, receiver):
    """A vendor that is down opens the circuit; the probe that follows fails: both runs
    show FAILURE with the reason, neither SUCCESS."""
    from tasks import broadcast

    sink = receiver(lambda r: Reply(200) if r.headers.get("x-test-connection") else Reply(503))
    destination = service.add_destination(f"user:{user_id}", "webhook", "down", {"url": sink.url})[
        "id"
    ]
    for n in range(10):
        broadcast.delay(chat_event(n, user_id=user_id, id=f"{user_id}-down{n}"))

    def runs(reason: str) -> list[dict]:
        answer = requests.get(
            f"{flower}/api/tasks", params={"taskname": "broadcast.deliver"}, timeout=10
        )
        return [
            task
            for task in answer.json().values()
            if destination in (task.get("args") or "") and reason in (task.get("exception") or "")
        ]

    probe = wait_for(
        lambda: runs("circuit probe failed"), timeout=90, what="the failed probe's run"
    )[0]
    assert probe["state"] == "FAILURE" and probe["traceback"] is None
    assert "'destination_type': 'webhook'" in probe["result"]
    assert runs("circuit opened")[0]["state"] == "FAILURE"


def test_a_retried_task_that_succeeds_shows_no_exception(flower, service, user_id, receiver):
    """A task retried (same id) and then successful: Flower shows SUCCESS with its
    retries, not the last retry's `Retry(...)` as its exception."""
    from tasks.maintenance import notify

    answers = iter([503, 503])
    sink = receiver(lambda _r: Reply(next(answers, 200)))
    owner = f"user:{user_id}"
    service.set_notification_target(owner, sink.url)
    event = {"id": f"evt_{user_id}", "type": "destination.recovered", "owner": owner}
    sent = notify.apply_async(args=[event])
    task = flower_task(flower, sent.id, "SUCCESS")
    assert len(sink.requests()) == 3
    assert task["retries"] == 2
    assert task["exception"] is None and task["traceback"] is None
