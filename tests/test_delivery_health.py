"""Delivery health end to end: circuit, backlogs that wait, credentials, re-validation,
dead letters, replay, lost tasks.

A real worker runs every delivery; the beat jobs (`tasks.maintenance`) are called here
with a controllable clock instead of sleeping through hours. The worker's own clock is
real: where a test stands for hours passing, it moves the destination's next attempt
(`probe_at`) to now, which is what those hours would have done.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from broadcast_broker.stream_transport import GROUP, stream_key
from broadcast_broker.topology import TASK_QUEUES
from broadcast_engine.backlog_upkeep import wants_task
from broadcast_engine.dead_letters import letter_json
from broadcast_engine.housekeeping import (
    check_destination_now,
    flush_notifications,
    revalidate_due,
    sweep,
    trim_dead_letters,
)
from harness.receiver import ReceivedRequest, Reply
from harness.samples import chat_event
from harness.waiting import wait_for
from settings import keys
from settings.models import Circuit, Health
from tasks import broadcast

pytestmark = pytest.mark.integration
HOUR = 3600.0
NOTIFY_SECRET = "whsec_bm90aWZpY2F0aW9uLXNpZ25pbmctc2VjcmV0LTAx"


class Vendor:
    """A webhook vendor emulator whose behaviour the test switches: `up`, `down` (503),
    `rejecting` payloads (422), and refusing every token but `valid_token` (401); `script`
    answers the next deliveries first. It counts deliveries by `webhook-id`, the way a
    vendor keyed on our deterministic ids de-duplicates them."""

    def __init__(self) -> None:
        self.mode = "up"
        self.valid_token = "Bearer t0"
        self.script: list[Reply] = []
        self.accepted: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, request: ReceivedRequest) -> Reply:
        if request.headers.get("authorization", "") != self.valid_token:
            return Reply(401, b"invalid token")
        if self.mode == "down":
            return Reply(503, b"maintenance")
        if request.headers.get("x-test-connection"):
            return Reply(200)
        with self._lock:
            if self.script:
                return self.script.pop(0)
        if self.mode == "rejecting":
            return Reply(422, b"unprocessable")
        message_id = request.headers["webhook-id"]
        with self._lock:
            self.accepted[message_id] = self.accepted.get(message_id, 0) + 1
        return Reply(200)

    def unique(self) -> int:
        return len(self.accepted)


@pytest.fixture
def rt(service):
    from broadcast_engine.runtime import runtime

    return runtime()


def hook(service, owner, sink, token="Bearer t0", **options):
    config = {
        "url": sink.url,
        "headers": {"Authorization": token},
        "signing_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    }
    return service.add_destination(
        owner, "webhook", f"hook-{uuid.uuid4().hex[:4]}", config, **options
    )["id"]


def send(user_id, indexes):
    for index in indexes:
        broadcast.delay(chat_event(index, user_id=user_id, id=f"{user_id}-{index}"))


def backlog(rt, destination_id):
    return rt.backlog.stats(destination_id, time.time()).depth


def probe_now(rt, destination_id):
    """Stand for the wait until the next probe having passed (the worker's clock is real):
    the probe is due, and the hold that kept fan-out from sending tasks has expired."""
    record = rt.store.get_destination(destination_id)
    rt.store.set_health(record, {"probe_at": repr(time.time() - 1)})
    rt.store.redis.delete(keys.destination_part(destination_id, "queued"))


def kicked(rt, destination_id) -> bool:
    """Run beat's sweep; True when it started a task for this destination."""
    record = rt.store.get_destination(destination_id)
    wanted = wants_task(rt, record, time.time())
    sweep(rt, time.time())
    return wanted


def test_outage_opens_the_circuit_the_backlog_waits_and_recovers_exactly_once(
    worker, service, user_id, receiver, rt
):
    vendor = Vendor()
    flaky_sink, healthy_sink = receiver(vendor), receiver()
    owner = f"user:{user_id}"
    flaky = hook(service, owner, flaky_sink)
    healthy = service.add_destination(owner, "webhook", "healthy", {"url": healthy_sink.url})["id"]
    healthy_sink.clear()
    vendor.mode = "down"

    send(user_id, range(30))
    wait_for(lambda: rt.store.health(flaky).circuit is Circuit.OPEN, what="the circuit to open")
    wait_for(lambda: rt.store.counters(healthy)["delivered"] == 30, what="the healthy one")
    wait_for(lambda: backlog(rt, flaky) == 30, what="every flaky trace waiting in its backlog")
    attempts_while_down = len(flaky_sink.requests())
    # The backlog waits: at most the failures that open the circuit (the rate rule's minimum
    # attempts, or the failed batches in a row, whichever comes first), plus requests already
    # in flight then, plus Test Connection — not 30 traces x a few tries each.
    bound = 1 + rt.config.circuit_min_attempts + rt.config.max_in_flight
    assert attempts_while_down <= bound
    status = {row["id"]: row for row in service.status(owner)}
    assert status[flaky]["circuit"] == "open" and status[flaky]["backlog"] == 30
    assert status[flaky]["health"] == "circuit_open"
    assert status[flaky]["delivery"].startswith("circuit open")
    assert status[healthy]["circuit"] == "closed" and status[healthy]["backlog"] == 0
    opened = [e for e in service.events(owner) if e["type"] == "destination.circuit_opened"]
    assert len(opened) == 1

    # While the circuit is open a new trace waits without a worker attempt.
    send(user_id, [30])
    wait_for(lambda: backlog(rt, flaky) == 31)
    assert len(flaky_sink.requests()) == attempts_while_down

    # Still down: the sweep lets one probe through when it is due, and it fails.
    probe_now(rt, flaky)
    assert kicked(rt, flaky)
    wait_for(lambda: len(flaky_sink.requests()) == attempts_while_down + 1, what="the probe")
    wait_for(lambda: rt.store.health(flaky).probe_step == 1, what="the probe's failure")
    assert not kicked(rt, flaky)  # the next probe waits longer
    assert backlog(rt, flaky) == 31

    vendor.mode = "up"
    probe_now(rt, flaky)
    sweep(rt, time.time())
    wait_for(lambda: vendor.unique() == 31, what="every waiting trace at the vendor")
    assert sorted(vendor.accepted.values()) == [1] * 31  # each exactly once
    # The vendor has them before the run settles them: the counters follow.
    counters = wait_for(lambda: (c := rt.store.counters(flaky))["delivered"] == 31 and c)
    assert (counters["delivered"], counters["failed"], counters["dropped_overflow"]) == (31, 0, 0)
    assert rt.store.health(flaky).circuit is Circuit.CLOSED
    kinds = [e["type"] for e in service.events(owner)]
    assert kinds.count("destination.circuit_opened") == 1
    assert kinds.count("destination.circuit_closed") == 1


def test_rejected_credentials_wait_until_updated(worker, service, user_id, receiver, rt):
    vendor = Vendor()
    sink = receiver(vendor)
    owner = f"user:{user_id}"
    destination_id = hook(service, owner, sink)
    vendor.valid_token = "Bearer t1"  # the key is revoked at the vendor
    send(user_id, range(5))
    wait_for(lambda: rt.store.health(destination_id).status is Health.AUTH_FAILED)
    wait_for(lambda: backlog(rt, destination_id) == 5)
    assert [e["type"] for e in service.events(owner)] == ["destination.auth_failed"]
    attempts = len(sink.requests())
    assert attempts <= rt.config.max_in_flight  # after the first 401s nothing is attempted
    # A 401 on delivery schedules the 15-minute re-check at once.
    next_check = rt.health.next_check(destination_id)
    assert next_check - time.time() <= rt.config.auth_failed_recheck_seconds + 5

    service.update_destination(destination_id, config={"headers": {"Authorization": "Bearer t1"}})
    assert rt.store.health(destination_id).status is Health.HEALTHY
    wait_for(lambda: vendor.unique() == 5, what="the backlog to drain after recovery")
    assert sorted(vendor.accepted.values()) == [1] * 5
    assert service.events(owner)[0]["type"] == "destination.recovered"
    wait_for(lambda: rt.store.counters(destination_id)["delivered"] == 5)  # settled after


def test_credentials_never_fixed_disable_dead_letter_and_notify(
    worker, service, user_id, receiver, rt
):
    vendor = Vendor()
    sink, inbox = receiver(vendor), receiver()
    owner = f"user:{user_id}"
    service.set_notification_target(owner, inbox.url + "/events", NOTIFY_SECRET)
    destination_id = hook(service, owner, sink)
    vendor.valid_token = "Bearer revoked-for-good"
    send(user_id, range(4))
    wait_for(lambda: backlog(rt, destination_id) == 4)
    wait_for(lambda: rt.store.health(destination_id).status is Health.AUTH_FAILED)

    # Re-validation a day later: still rejected, not yet past the window.
    check = check_destination_now(rt, destination_id, time.time() + 24 * HOUR)
    assert check is not None and not check.ok
    assert rt.store.get_destination(destination_id).enabled
    # Three days later: disabled; beat's sweep turns the backlog into dead letters.
    check_destination_now(rt, destination_id, time.time() + 3 * 24 * HOUR + 60)
    assert not rt.store.get_destination(destination_id).enabled
    sweep(rt, time.time())
    assert backlog(rt, destination_id) == 0
    letters = service.dead_letters(destination_id)
    assert sorted(letter.request_id for letter in letters) == [f"{user_id}-{i}" for i in range(4)]
    assert all("credentials rejected for 3 days" in letter.reason for letter in letters)
    assert all(letter.trace and letter.trace["request_id"] for letter in letters)

    assert flush_notifications(rt) == 2  # auth_failed, then disabled
    posted = wait_for(lambda: len(r := inbox.requests("/events")) == 2 and r)
    verifier = Webhook(NOTIFY_SECRET)
    kinds = sorted(verifier.verify(r.body, r.headers)["type"] for r in posted)
    assert kinds == ["destination.auth_failed", "destination.disabled"]

    listing = subprocess.run(
        [str(Path(sys.executable).parent / "broadcast"), "dead-letters", destination_id],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0
    assert listing.stdout.count(f"{user_id}-") == 4 and "credentials rejected" in listing.stdout


def test_revalidation_detects_a_revoked_and_a_restored_key(worker, service, user_id, receiver, rt):
    vendor = Vendor()
    sink = receiver(vendor)
    owner = f"user:{user_id}"
    destination_id = hook(service, owner, sink)
    vendor.valid_token = "Bearer other"  # revoked at the vendor

    rt.health.schedule_check(destination_id, time.time() - 1)
    assert destination_id in revalidate_due(rt, time.time())
    wait_for(
        lambda: rt.store.health(destination_id).status is Health.AUTH_FAILED,
        what="the beat check to notice",
    )
    row = service.status(owner)[0]
    assert row["health"] == "auth_failed" and "rejected" in row["health_reason"]
    # Rejected destinations are re-checked every 15 minutes, not every 6 hours.
    next_check = rt.health.next_check(destination_id)
    assert next_check - time.time() <= rt.config.auth_failed_recheck_seconds + 5

    vendor.valid_token = "Bearer t0"  # restored
    rt.health.schedule_check(destination_id, time.time() - 1)
    revalidate_due(rt, time.time())
    wait_for(
        lambda: rt.store.health(destination_id).status is Health.HEALTHY,
        what="the beat check to notice the restored key",
    )
    assert service.status(owner)[0]["health"] == "healthy"
    assert rt.health.next_check(destination_id) - time.time() > 5 * HOUR


def test_concurrent_rejections_announce_one_outage_once(service, user_id, receiver, rt):
    """Health transitions are compare-and-set: 8 threads noticing the same 401 at once
    record one change and one owner event."""
    owner = f"user:{user_id}"
    destination_id = hook(service, owner, receiver())
    record = rt.store.get_destination(destination_id)
    start = threading.Barrier(8)
    changed: list[bool] = []

    def notice() -> None:
        start.wait()
        changed.append(rt.health.credentials_rejected(record, "HTTP 401", time.time()))

    threads = [threading.Thread(target=notice) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert changed.count(True) == 1
    assert [e["type"] for e in service.events(owner)] == ["destination.auth_failed"]
    opened: list[bool] = []
    start = threading.Barrier(8)

    def open_circuit() -> None:
        start.wait()
        opened.append(rt.health.open_circuit(record, time.time() + 30, "HTTP 503", time.time()))

    threads = [threading.Thread(target=open_circuit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert opened.count(True) == 1
    kinds = [e["type"] for e in service.events(owner)]
    assert kinds.count("destination.circuit_opened") == 1


def replay(*argv: str) -> subprocess.CompletedProcess[str]:
    """`broadcast replay ...` as a real process (the console script beside this Python)."""
    command = [str(Path(sys.executable).parent / "broadcast"), "replay", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def replayed(*argv: str) -> dict:
    run = replay(*argv, "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_replay_skips_what_a_replay_delivered_unless_again(worker, service, user_id, receiver, rt):
    vendor = Vendor()
    sink = receiver(vendor)
    destination_id = hook(service, f"user:{user_id}", sink)
    vendor.mode = "rejecting"  # a permanent failure: dead letters at once
    send(user_id, range(6))
    wait_for(lambda: rt.dead_letters.count(destination_id) == 6)
    vendor.mode = "up"

    def counters() -> dict[str, int]:
        return service.store.counters(destination_id)

    first = replayed(destination_id)
    assert (first["sent"], first["skippedDelivered"]) == (6, 0)
    assert sorted(first["requestIds"]) == sorted(f"{user_id}-{i}" for i in range(6))
    wait_for(lambda: counters()["replay_delivered"] == 6, timeout=60, what="the replays")
    assert sum(vendor.accepted.values()) == 6

    second = replay(destination_id)
    assert second.returncode == 0, second.stderr
    assert second.stdout == (
        f"sent 0 trace(s) of {destination_id} again; skipped 6 already replayed and "
        "delivered (--again sends them anyway)\n"
    )
    assert counters()["replayed"] == 6 and backlog(rt, destination_id) == 0  # nothing queued

    again = replayed(destination_id, "--again")
    assert (again["sent"], again["skippedDelivered"]) == (6, 0)
    wait_for(lambda: sum(vendor.accepted.values()) == 12, timeout=60, what="the forced replays")
    assert vendor.unique() == 6  # replayed with --again, still once at the vendor
    # `delivered` and `failed` count each trace once; replays are counted on their own.
    wait_for(lambda: counters()["replay_delivered"] == 12, timeout=60)
    final = counters()
    assert (final["delivered"], final["failed"], final["replayed"]) == (0, 6, 12)
    listing = service.dead_letters(destination_id)
    assert all(letter.replayed_at and letter.replay_delivered_at for letter in listing)
    assert replayed(destination_id, "--since", str(time.time() + 60))["sent"] == 0


def test_replay_by_request_id_resends_a_replay_that_failed_again(
    worker, service, user_id, receiver, rt
):
    vendor = Vendor()
    sink = receiver(vendor)
    destination_id = hook(service, f"user:{user_id}", sink)
    vendor.mode = "rejecting"
    send(user_id, range(2))
    wait_for(lambda: rt.dead_letters.count(destination_id) == 2)
    first, second = f"{user_id}-0", f"{user_id}-1"

    def counters() -> dict[str, int]:
        return service.store.counters(destination_id)

    # Replayed while the vendor still refuses: it fails again, a second letter of `first`.
    assert replayed(destination_id, "--id", first)["requestIds"] == [first]
    wait_for(lambda: counters()["replay_failed"] == 1, timeout=60, what="the replay to fail again")
    assert rt.dead_letters.count(destination_id) == 3
    vendor.mode = "up"
    # Not delivered, so sent again: once, though two letters hold the request.
    result = replayed(destination_id, "--id", first)
    assert (result["sent"], result["requestIds"], result["skippedDelivered"]) == (1, [first], 0)
    letters_of_first = service.dead_letters(destination_id, ids=[first])
    assert len(letters_of_first) == 2 and all(x.replayed_at for x in letters_of_first)
    wait_for(lambda: counters()["replay_delivered"] == 1, timeout=60, what="the second replay")
    assert replayed(destination_id, "--id", first) == {
        "id": destination_id,
        "sent": 0,
        "skippedDelivered": 1,
        "skippedNoTrace": 0,
        "requestIds": [],
        "skippedRequestIds": [first],
    }

    # A dead-letter id (the stream id `broadcast dead-letters` lists) works too.
    [letter] = [x for x in service.dead_letters(destination_id) if x.request_id == second]
    assert replayed(destination_id, "--id", letter.id)["requestIds"] == [second]
    wait_for(lambda: counters()["replay_delivered"] == 2, timeout=60)
    assert sorted(vendor.accepted.values()) == [1, 1]

    unknown = replay(destination_id, "--id", "gen-nope", "--id", second)
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr == (
        f"broadcast: error: no dead letter of {destination_id} has the id gen-nope: --id "
        "takes a request id or a dead-letter id (a stream id like 1733490000000-0, listed by "
        f"`broadcast dead-letters {destination_id}`)\n"
    )


def unacknowledged(rt) -> int:
    """Task messages handed to a worker and not acknowledged (the broker is this Redis)."""
    redis = rt.store.redis
    return sum(
        redis.xpending(stream_key(queue), GROUP)["pending"]
        for queue in TASK_QUEUES
        if redis.exists(stream_key(queue))
    )


def test_a_long_retry_after_waits_in_redis_not_in_the_broker(
    worker, service, user_id, receiver, rt
):
    vendor = Vendor()
    sink = receiver(vendor)
    owner = f"user:{user_id}"
    destination_id = hook(service, owner, sink)
    # A Retry-After longer than the short tier's cap: the destination waits it out.
    vendor.script = [Reply(429, b"slow down", {"Retry-After": str(2 * HOUR)})]
    send(user_id, [1])
    wait_for(lambda: rt.store.health(destination_id).circuit is Circuit.OPEN)
    health = rt.store.health(destination_id)
    assert health.probe_at - time.time() > HOUR  # longer than any visibility timeout
    assert backlog(rt, destination_id) == 1
    # Nothing waits in the broker (no ETA message that Redis could hand out twice).
    wait_for(lambda: unacknowledged(rt) == 0, timeout=60, what="no unacknowledged message")
    assert not kicked(rt, destination_id)  # not due yet

    probe_now(rt, destination_id)
    sweep(rt, time.time())
    wait_for(lambda: vendor.unique() == 1)
    wait_for(lambda: backlog(rt, destination_id) == 0)
    assert list(vendor.accepted.values()) == [1]
    assert rt.store.counters(destination_id)["delivered"] == 1


def test_a_claimed_batch_whose_task_was_lost_comes_back_once(
    worker, service, user_id, receiver, rt
):
    """A batch claimed by a task that vanished (its worker died) is claimed again after the
    lease, through the sweep, and delivered once, with the same vendor ids."""
    vendor = Vendor()
    sink = receiver(vendor)
    owner = f"user:{user_id}"
    destination_id = hook(service, owner, sink)
    # What fan-out writes, without kicking a task; then a task claims the entry and dies.
    from broadcast_engine.events import build_trace
    from broadcast_engine.trace_store import Written

    trace = build_trace(chat_event(1, user_id=user_id, id=f"{user_id}-lost"))
    written, stored = rt.traces.claim(trace)
    assert written is Written.NEW
    with rt.store.redis.pipeline(transaction=False) as pipe:
        rt.backlog.append(
            pipe, destination_id, trace.request_id, time.time(), stored.size, kick=False
        )
        rt.traces.write_for(trace, 1).set_holds(pipe)
        pipe.execute()
    [claimed] = rt.backlog.claim(destination_id, "a-worker-that-died", 10, time.time()).entries
    assert claimed.request_id == trace.request_id
    # Work and no task: the sweep kicks one, which leaves the entry leased to the dead task
    # alone until the lease runs out; a later sweep's task takes it then.
    assert kicked(rt, destination_id)

    def swept_and_delivered() -> bool:  # beat's sweep, every second here
        sweep(rt, time.time())
        return vendor.unique() == 1

    lease = rt.config.claim_lease_seconds
    wait_for(swept_and_delivered, timeout=lease + 30, interval=1.0, what="the lease to run out")
    wait_for(lambda: backlog(rt, destination_id) == 0)
    assert list(vendor.accepted.values()) == [1]
    assert rt.store.counters(destination_id)["delivered"] == 1


def test_dead_letters_expire_after_the_retention(service, user_id, rt):
    destination_id = f"dst_{uuid.uuid4().hex[:12]}"
    rt.dead_letters.add(
        destination_id,
        letter_json(
            request_id="r1",
            owner="user:x",
            reason="HTTP 400",
            trace=None,
            accepted_at=0.0,
            attempts=1,
            now=time.time(),
        ),
    )
    assert rt.dead_letters.count(destination_id) == 1
    assert rt.dead_letters.trim(destination_id, time.time() + 6 * 24 * HOUR) == 0
    assert rt.dead_letters.trim(destination_id, time.time() + 8 * 24 * HOUR) == 1
    assert rt.dead_letters.count(destination_id) == 0
    assert trim_dead_letters(rt, time.time()) >= 0


def test_real_beat_restarts_a_backlog_whose_task_was_lost(
    worker, service, user_id, receiver, rt, workdir
):
    """The schedule in celeryconfig.py, run by a real `celery beat`: a backlog with work and
    no task (its task was lost) gets one from the sweep, and beat's heartbeat is written."""
    import os

    from broadcast_engine.events import build_trace
    from harness.processes import celery_beat

    vendor = Vendor()
    sink = receiver(vendor)
    destination_id = hook(service, f"user:{user_id}", sink)
    trace = build_trace(chat_event(1, user_id=user_id, id=f"{user_id}-beat"))
    _, stored = rt.traces.claim(trace)
    with rt.store.redis.pipeline(transaction=False) as pipe:
        rt.backlog.append(
            pipe, destination_id, trace.request_id, time.time(), stored.size, kick=False
        )
        rt.traces.write_for(trace, 1).set_holds(pipe)
        pipe.execute()
    beat = celery_beat(os.environ, workdir)
    try:
        wait_for(lambda: vendor.unique() == 1, timeout=45, what="beat's sweep to deliver it")
    finally:
        beat.stop()
    assert backlog(rt, destination_id) == 0
    assert float(rt.store.redis.get("bc:heartbeat:beat")) > time.time() - 60
