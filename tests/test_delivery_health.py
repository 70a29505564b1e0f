"""Delivery health end to end: circuit, parking, credentials, re-validation, dead letters.

A real worker runs every delivery; the beat jobs (`tasks.maintenance`) are called here
with a controllable clock instead of sleeping through hours.
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

from harness.receiver import ReceivedRequest, Reply
from harness.samples import chat_event
from harness.waiting import wait_for
from settings.models import Circuit, Health
from tasks import broadcast
from tasks.events import build_trace
from tasks.maintenance import (
    check_destination_now,
    flush_notifications,
    revalidate_due,
    sweep_parked,
    trim_dead_letters,
)

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
    from tasks.runtime import runtime

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


def drain(rt, destination_id, *, now, what):
    """Run the sweep (at `now`) until nothing of the destination is parked."""

    def settled():
        sweep_parked(rt, now)
        return rt.parking.count(destination_id) == 0

    wait_for(settled, timeout=60, interval=0.2, what=what)


def test_outage_opens_the_circuit_parks_and_recovers_exactly_once(
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
    wait_for(lambda: rt.parking.count(flaky) == 30, what="every flaky delivery parked")
    wait_for(lambda: rt.store.counters(healthy)["delivered"] == 30, what="the healthy one")
    attempts_while_down = len(flaky_sink.requests())
    # Parked, not retried in workers: far fewer attempts than 30 deliveries x 5 tries.
    assert attempts_while_down < 30
    status = {row["id"]: row for row in service.status(owner)}
    assert status[flaky]["circuit"] == "open" and status[flaky]["parked"] == 30
    assert status[healthy]["circuit"] == "closed" and status[healthy]["parked"] == 0

    # While the circuit is open a new trace is parked at fan-out, without a worker attempt.
    send(user_id, [30])
    wait_for(lambda: rt.parking.count(flaky) == 31)
    assert len(flaky_sink.requests()) == attempts_while_down

    # Still down: one probe goes through per interval, and fails.
    later = time.time() + rt.config.circuit_probe_seconds + 1
    assert sweep_parked(rt, later)["probes"] == 1
    wait_for(lambda: len(flaky_sink.requests()) == attempts_while_down + 1, what="the probe")
    assert sweep_parked(rt, later)["probes"] == 0  # one per interval
    wait_for(lambda: rt.parking.count(flaky) == 31)

    vendor.mode = "up"
    drain(rt, flaky, now=later + 2 * HOUR, what="the parked deliveries to drain")
    wait_for(lambda: vendor.unique() == 31, what="every parked trace at the vendor")
    assert sorted(vendor.accepted.values()) == [1] * 31  # each exactly once
    assert rt.store.health(flaky).circuit is Circuit.CLOSED
    assert rt.store.counters(flaky)["delivered"] == 31


def test_rejected_credentials_park_until_updated(worker, service, user_id, receiver, rt):
    vendor = Vendor()
    sink = receiver(vendor)
    owner = f"user:{user_id}"
    destination_id = hook(service, owner, sink)
    vendor.valid_token = "Bearer t1"  # the key is revoked at the vendor
    send(user_id, range(5))
    wait_for(lambda: rt.parking.count(destination_id) == 5)
    assert rt.store.health(destination_id).status is Health.AUTH_FAILED
    assert [e["type"] for e in service.events(owner)] == ["destination.auth_failed"]
    attempts = len(sink.requests())
    assert attempts < 5  # after the first 401 nothing is attempted

    service.update_destination(destination_id, config={"headers": {"Authorization": "Bearer t1"}})
    assert rt.store.health(destination_id).status is Health.HEALTHY
    drain(rt, destination_id, now=time.time(), what="the parked deliveries")
    wait_for(lambda: vendor.unique() == 5)
    assert sorted(vendor.accepted.values()) == [1] * 5
    assert service.events(owner)[0]["type"] == "destination.recovered"
    assert service.events(owner)[0]["data"]["released_deliveries"] == 5


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
    wait_for(lambda: rt.parking.count(destination_id) == 4)

    # Re-validation a day later: still rejected, not yet past the window.
    check = check_destination_now(rt, destination_id, time.time() + 24 * HOUR)
    assert check is not None and not check.ok
    assert rt.store.get_destination(destination_id).enabled
    # Three days later: disabled, parked deliveries become dead letters.
    check_destination_now(rt, destination_id, time.time() + 3 * 24 * HOUR + 60)
    assert not rt.store.get_destination(destination_id).enabled
    assert rt.parking.count(destination_id) == 0
    letters = service.dead_letters(destination_id)
    assert sorted(letter.request_id for letter in letters) == [f"{user_id}-{i}" for i in range(4)]
    assert all("credentials rejected for 3 days" in letter.reason for letter in letters)

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


def test_replay_delivers_each_once_even_when_replayed_twice(worker, service, user_id, receiver, rt):
    vendor = Vendor()
    sink = receiver(vendor)
    owner = f"user:{user_id}"
    destination_id = hook(service, owner, sink)
    vendor.mode = "rejecting"  # a permanent failure: dead letters at once
    send(user_id, range(6))
    wait_for(lambda: rt.dead_letters.count(destination_id) == 6)
    vendor.mode = "up"
    broadcast_cli = str(Path(sys.executable).parent / "broadcast")
    for round_ in (1, 2):
        run = subprocess.run(
            [broadcast_cli, "replay", destination_id], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
        assert f"replayed 6 dead letter(s) of {destination_id}" in run.stdout
        wait_for(lambda n=round_: sum(vendor.accepted.values()) == 6 * n)
    assert vendor.unique() == 6  # twice replayed, once at the vendor
    listing = service.dead_letters(destination_id)
    assert all(letter.replayed_at for letter in listing)
    since_future = subprocess.run(
        [broadcast_cli, "replay", destination_id, "--since", str(time.time() + 60), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(since_future.stdout)["replayed"] == 0


def test_a_delivery_parked_past_the_visibility_timeout_runs_once(
    worker, service, user_id, receiver, rt
):
    vendor = Vendor()
    sink = receiver(vendor)
    owner = f"user:{user_id}"
    destination_id = hook(service, owner, sink)
    # A Retry-After longer than the short tier's cap parks the delivery in Redis.
    vendor.script = [Reply(429, b"slow down", {"Retry-After": str(2 * HOUR)})]
    send(user_id, [1])
    wait_for(lambda: rt.parking.count(destination_id) == 1)
    [entry] = rt.parking.for_destination(destination_id)
    assert entry.due_at - time.time() > HOUR  # longer than the visibility timeout

    assert sweep_parked(rt, time.time() + HOUR)["requeued"] == 0  # not due yet
    visibility = 3600.0
    much_later = entry.due_at + visibility + 60
    assert sweep_parked(rt, much_later)["requeued"] == 1
    wait_for(lambda: vendor.unique() == 1)
    for hours in (1, 2, 5, 10):
        sweep_parked(rt, much_later + hours * HOUR)
    wait_for(lambda: rt.parking.count(destination_id) == 0)
    assert vendor.accepted == {next(iter(vendor.accepted)): 1}
    # Nothing waits in the broker either (no ETA message that Redis could hand out twice).
    assert rt.store.redis.hlen("unacked") == 0


def test_a_claimed_delivery_whose_task_was_lost_comes_back_once(
    worker, service, user_id, receiver, rt
):
    vendor = Vendor()
    sink = receiver(vendor)
    destination_id = hook(service, f"user:{user_id}", sink)
    now = time.time()
    trace = build_trace(chat_event(1, user_id=user_id, id=f"{user_id}-lost")).to_wire()
    entry = rt.parking.park(
        destination_id, trace, accepted_at=now, now=now, due_at=now, step=0, reason="test"
    )
    assert rt.parking.claim(entry, now, rt.config.claim_lease_seconds)  # ... and the worker died
    assert sweep_parked(rt, now + 1)["requeued"] == 0  # leased: not taken twice
    assert sweep_parked(rt, now + rt.config.claim_lease_seconds + 1)["requeued"] == 1
    wait_for(lambda: vendor.unique() == 1 and rt.parking.count(destination_id) == 0)
    assert list(vendor.accepted.values()) == [1]


def test_dead_letters_expire_after_the_retention(service, user_id, rt):
    destination_id = f"dst_{uuid.uuid4().hex[:12]}"
    rt.dead_letters.add(
        destination_id,
        trace={"request_id": "r1"},
        accepted_at=0.0,
        reason="HTTP 400",
        now=time.time(),
    )
    assert rt.dead_letters.count(destination_id) == 1
    assert rt.dead_letters.trim(destination_id, time.time() + 6 * 24 * HOUR) == 0
    assert rt.dead_letters.trim(destination_id, time.time() + 8 * 24 * HOUR) == 1
    assert rt.dead_letters.count(destination_id) == 0
    assert trim_dead_letters(rt, time.time()) >= 0


def test_real_beat_sweeps_parked_deliveries(worker, service, user_id, receiver, rt, workdir):
    """The schedule in celeryconfig.py, run by a real `celery beat`, brings parked work back."""
    import os

    from harness.processes import celery_beat

    vendor = Vendor()
    sink = receiver(vendor)
    destination_id = hook(service, f"user:{user_id}", sink)
    now = time.time()
    trace = build_trace(chat_event(1, user_id=user_id, id=f"{user_id}-beat")).to_wire()
    rt.parking.park(
        destination_id, trace, accepted_at=now, now=now, due_at=now, step=0, reason="test"
    )
    beat = celery_beat(os.environ, workdir)
    try:
        wait_for(lambda: vendor.unique() == 1, timeout=45, what="beat's sweep to deliver it")
    finally:
        beat.stop()
    assert rt.parking.count(destination_id) == 0
