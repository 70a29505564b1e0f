"""The backlog (`broadcast_engine.backlog`) and its upkeep (`broadcast_engine.backlog_upkeep`)
on a real Redis: claim order, leases, exactly-once settling, in-flight slots, overflow and
budget drops, how long a stored trace lives. Deliveries are run in this process through
`broadcast_engine.delivery_run.DeliveryRun` (the task's own code, called directly), against
real local HTTP receivers."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from broadcast_engine.backlog import Backlog, Begin, ClaimKind, Settled, Settlement
from broadcast_engine.backlog_upkeep import drop_oldest, enforce_budget, enforce_caps
from broadcast_engine.delivery_run import DeliveryRun, delivery_policy
from broadcast_engine.events import build_trace
from broadcast_engine.trace_store import Written, encode
from harness.samples import chat_event
from harness.waiting import wait_for
from settings import keys


@pytest.fixture
def rt(service):
    from broadcast_engine.runtime import runtime

    return runtime()


@pytest.fixture
def fresh(rt):
    """A backlog with a short lease on the test Redis, for a new destination id."""
    destination_id = f"dst_{uuid.uuid4().hex[:12]}"
    backlog = Backlog(rt.store.redis, max_in_flight=2, lease_seconds=0.3, log_size=50)
    backlog.create(destination_id)
    return backlog, destination_id


def stored_trace(rt, user_id: str, index: int, holders: int = 1, **event):
    """What fan-out writes for one event held by `holders` backlogs, without the appends:
    (trace, size)."""
    trace = build_trace(chat_event(index, user_id=user_id, id=f"{user_id}-{index}", **event))
    written, stored = rt.traces.claim(trace)
    assert written is Written.NEW
    with rt.store.redis.pipeline(transaction=False) as pipe:
        rt.traces.write_for(trace, holders).set_holds(pipe)
        pipe.execute()
    return trace, stored.size


def append(backlog: Backlog, destination_id: str, count: int, accepted_at: float | None = None):
    with backlog.redis.pipeline(transaction=False) as pipe:
        for index in range(count):
            backlog.append(
                pipe, destination_id, f"r{index}", accepted_at or time.time(), 100, kick=False
            )
        pipe.execute()


def names(claim) -> list[str]:
    return [entry.request_id for entry in claim.entries]


def test_claims_take_orphans_then_due_retries_then_new(fresh):
    backlog, destination_id = fresh
    append(backlog, destination_id, 7)
    now = time.time()
    first = backlog.claim(destination_id, "task-a", 2, now)  # then task-a dies holding r0, r1
    assert (first.kind, names(first)) == (ClaimKind.NEW, ["r0", "r1"])
    second = backlog.claim(destination_id, "task-b", 3, now)
    assert names(second) == ["r2", "r3", "r4"]
    # task-b: r2 failed and retries now, r3 failed and retries in a minute, r4 delivered.
    r2, r3, r4 = second.entries
    settled = [
        Settlement(r2, "w", due=now),
        Settlement(r3, "w", due=now + 60),
        Settlement(r4, "d", "0.05", 10.0),
    ]
    backlog.settle(destination_id, settled, {}, now=now)
    retry = backlog.claim(destination_id, "task-c", 2, time.time())
    assert (retry.kind, names(retry)) == (ClaimKind.RETRY, ["r2"])  # alone: its own batch
    new = backlog.claim(destination_id, "task-c", 2, time.time())
    assert names(new) == ["r5", "r6"]
    done = [Settlement(e, "d", "0.05", 1.0) for e in retry.entries + new.entries]
    backlog.settle(destination_id, done, {}, now=time.time())
    time.sleep(0.35)  # the lease of task-a's entries (0.3 s) runs out
    orphans = backlog.claim(destination_id, "task-d", 2, time.time())
    assert (orphans.kind, names(orphans)) == (ClaimKind.ORPHANS, ["r0", "r1"])
    # r3 waits for its minute (a probe would take it at once).
    assert backlog.claim(destination_id, "task-e", 2, time.time()).entries == []
    probe = backlog.claim(destination_id, "task-e", 1, time.time(), probe=True)
    assert names(probe) == ["r3"]


def test_orphans_come_back_as_the_batch_they_were(fresh):
    """A dead run's batch is sent again alone, not topped up with new entries: the same
    batch, so a vendor that already holds it sees the same batch-level id."""
    backlog, destination_id = fresh
    append(backlog, destination_id, 4)
    held = backlog.claim(destination_id, "task-a", 2, time.time())  # task-a dies mid-request
    time.sleep(0.35)  # the lease of task-a's entries (0.3 s) runs out
    again = backlog.claim(destination_id, "task-b", 4, time.time())
    assert names(again) == names(held) == ["r0", "r1"]
    assert names(backlog.claim(destination_id, "task-b", 4, time.time())) == ["r2", "r3"]


def test_a_renewed_lease_keeps_a_slow_run_s_batch_its_own(fresh):
    backlog, destination_id = fresh
    append(backlog, destination_id, 2)
    held = backlog.claim(destination_id, "slow-run", 2, time.time()).entries
    for _ in range(3):  # the vendor takes 0.45 s: three renewals, every 0.15 s
        time.sleep(0.15)
        assert backlog.renew(destination_id, "token", "slow-run", held, time.time()) == 2
        assert backlog.claim(destination_id, "other-run", 2, time.time()).entries == []
    time.sleep(0.35)  # then the run dies: no renewal, the batch comes back
    assert [e.id for e in backlog.claim(destination_id, "other-run", 2, time.time()).entries] == [
        e.id for e in held
    ]
    assert backlog.renew(destination_id, "token", "slow-run", held, time.time()) == 0


def test_an_entry_settles_once_even_when_two_tasks_raced_for_it(fresh, rt):
    backlog, destination_id = fresh
    append(backlog, destination_id, 3)
    claimed = backlog.claim(destination_id, "slow-task", 3, time.time()).entries
    time.sleep(0.35)
    reclaimed = backlog.claim(destination_id, "other-task", 3, time.time()).entries
    assert [e.id for e in reclaimed] == [e.id for e in claimed]  # lease ran out: taken again
    delivered = [Settlement(e, "d", "0.05", 5.0) for e in claimed]
    first = backlog.settle(destination_id, delivered, {"n": 1}, now=time.time())
    assert first == Settled(3, 0, ["r0", "r1", "r2"])
    late = backlog.settle(destination_id, delivered, {"n": 2}, now=time.time())  # the slow one
    assert late == Settled(0, 0, [])  # counts nothing, releases no trace
    assert rt.store.counters(destination_id)["delivered"] == 3
    assert rt.backlog.stats(destination_id, time.time()).depth == 0
    histogram = rt.store.latency_histogram(destination_id)
    assert histogram.count == 3 and histogram.sum_seconds == pytest.approx(0.015)


def test_in_flight_slots_backoff_pause_and_one_probe(fresh, rt):
    backlog, destination_id = fresh
    now = time.time()
    assert (
        backlog.begin(destination_id, "t1", now, probe_seconds=30, recheck_seconds=900) is Begin.RUN
    )
    assert (
        backlog.begin(destination_id, "t2", now, probe_seconds=30, recheck_seconds=900) is Begin.RUN
    )
    assert (
        backlog.begin(destination_id, "t3", now, probe_seconds=30, recheck_seconds=900)
        is Begin.BUSY
    )  # max_in_flight 2
    backlog.release(destination_id, "t1")
    assert (
        backlog.begin(destination_id, "t3", now, probe_seconds=30, recheck_seconds=900) is Begin.RUN
    )
    health = keys.destination_part(destination_id, "health")
    rt.store.redis.hset(health, "backoff_until", repr(now + 60))
    assert (
        backlog.begin(destination_id, "t4", now, probe_seconds=30, recheck_seconds=900)
        is Begin.WAIT
    )
    # While it waits, fan-out sends no task: the queued flag holds until the backoff ends.
    assert not backlog.mark_queued(destination_id)
    assert 0 < rt.store.redis.pttl(keys.destination_part(destination_id, "queued")) <= 60_000
    rt.store.redis.hset(health, mapping={"backoff_until": "0", "circuit": "open"})
    rt.store.redis.hset(health, "probe_at", repr(now - 1))
    backlog.release(destination_id, "t2")
    backlog.release(destination_id, "t3")
    assert (
        backlog.begin(destination_id, "p1", now, probe_seconds=30, recheck_seconds=900)
        is Begin.PROBE
    )
    assert (
        backlog.begin(destination_id, "p2", now, probe_seconds=30, recheck_seconds=900)
        is Begin.WAIT
    )  # one probe at a time
    rt.store.redis.hset(health, "status", "auth_failed")
    assert (
        backlog.begin(destination_id, "t5", now, probe_seconds=30, recheck_seconds=900)
        is Begin.PAUSED
    )


def begin(backlog: Backlog, destination_id: str, token: str) -> Begin:
    return backlog.begin(destination_id, token, time.time(), probe_seconds=30, recheck_seconds=900)


def test_finish_goes_on_while_work_is_due_and_says_when_a_retry_falls_due(fresh):
    backlog, destination_id = fresh
    assert begin(backlog, destination_id, "t1") is Begin.RUN
    append(backlog, destination_id, 2)
    left = backlog.finish(destination_id, "t1", time.time(), 10)
    assert left.go_on and left.unread == 2  # entries arrived: the next task reads them
    assert not backlog.mark_queued(destination_id)  # the flag is kept for that task
    assert begin(backlog, destination_id, "t2") is Begin.RUN
    first, second = backlog.claim(destination_id, "t2", 5, time.time()).entries
    now = time.time()
    settled = [Settlement(first, "d", "0.05", 1.0), Settlement(second, "w", due=now + 30)]
    backlog.settle(destination_id, settled, {}, now=now)
    left = backlog.finish(destination_id, "t2", time.time(), 10)
    assert not left.go_on and left.next_retry == pytest.approx(now + 30, abs=0.01)
    assert not backlog.needs_task(destination_id, time.time())  # nothing due for 30 s
    assert backlog.needs_task(destination_id, now + 31)  # then the sweep sends a task
    assert backlog.mark_queued(destination_id)  # the last run left: fan-out may send again


def test_overflow_drops_the_oldest_entries_no_task_holds_and_counts_them(
    service, user_id, receiver, rt
):
    owner = f"user:{user_id}"
    destination_id = service.add_destination(owner, "webhook", "w", {"url": receiver().url})["id"]
    record = rt.store.get_destination(destination_id)
    append(rt.backlog, destination_id, 12, accepted_at=time.time() - 5)
    in_flight = rt.backlog.claim(destination_id, "busy-task", 3, time.time()).entries  # r0-r2
    tight = dataclasses.replace(rt.config, backlog_max_entries=5)
    dropped = enforce_caps(dataclasses.replace(rt, config=tight), record, time.time())
    assert dropped == 7
    left = [e.request_id for e in rt.backlog.entries(destination_id)]
    assert left == ["r0", "r1", "r2", "r10", "r11"]  # held entries stay; the oldest others go
    assert [e.id for e in in_flight] == [e.id for e in rt.backlog.entries(destination_id)[:3]]
    assert rt.store.counters(destination_id)["dropped_overflow"] == 7
    [event] = [e for e in service.events(owner) if e["type"] == "destination.dropped"]
    assert event["data"]["count"] == 7 and "cap" in event["data"]["reason"]
    log = service.deliveries(destination_id)
    assert log[0]["outcome"] == "dropped" and log[0]["traces"] == 7
    assert "dropped_overflow=7" in _status_text(destination_id)


def test_the_budget_drops_from_whoever_is_furthest_behind(service, user_id, receiver, rt):
    owner = f"user:{user_id}"
    lagging = service.add_destination(owner, "webhook", "lag", {"url": receiver().url})["id"]
    healthy = service.add_destination(owner, "webhook", "ok", {"url": receiver().url})["id"]
    old = time.time() - 120
    sizes = {}
    for index in range(10):
        trace, size = stored_trace(rt, user_id, index, holders=2 if index < 2 else 1)
        sizes[trace.request_id] = size
        with rt.store.redis.pipeline(transaction=False) as pipe:
            rt.backlog.append(pipe, lagging, trace.request_id, old, size, kick=False)
            if index < 2:
                rt.backlog.append(pipe, healthy, trace.request_id, old, size, kick=False)
            pipe.execute()
    records = [rt.store.get_destination(i) for i in (lagging, healthy)]
    budget = sum(sizes.values()) // 2
    tight = dataclasses.replace(
        rt, config=dataclasses.replace(rt.config, trace_budget_bytes=budget)
    )
    dropped = enforce_budget(tight, records, time.time())
    assert dropped >= 4
    assert rt.store.counters(lagging)["dropped_overflow"] == dropped
    assert rt.store.counters(healthy)["dropped_overflow"] == 0  # never the one keeping up
    assert rt.backlog.stats(healthy, time.time()).depth == 2


def test_a_stored_trace_lives_while_a_backlog_holds_it(service, user_id, receiver, rt):
    """Fan-out's TTL covers the retry horizon; each backlog that ends its entry (a delivery
    here, a drop there) releases one hold; the last release keeps the trace only
    `trace_keep_after_seconds` more, in which a redelivered fan-out is still recognised."""
    owner = f"user:{user_id}"
    healthy = service.add_destination(owner, "webhook", "ok", {"url": receiver().url})["id"]
    lagging = service.add_destination(owner, "webhook", "lag", {"url": receiver().url})["id"]
    trace, size = stored_trace(rt, user_id, 1, holders=2)
    key = keys.trace(owner, trace.request_id)
    with rt.store.redis.pipeline(transaction=False) as pipe:
        for destination_id in (healthy, lagging):
            rt.backlog.append(pipe, destination_id, trace.request_id, time.time(), size, kick=False)
        pipe.execute()
    assert rt.store.redis.ttl(key) > rt.config.retry_horizon_seconds
    summary = DeliveryRun(rt, delivery_policy(rt), healthy, "unit-run").run()
    assert summary.outcomes == {"delivered": 1}
    assert rt.store.redis.ttl(key) > rt.config.retry_horizon_seconds  # the other still holds it
    record = rt.store.get_destination(lagging)
    assert drop_oldest(rt, record, 1, "test drop", time.time()) == 1
    assert 0 < rt.store.redis.ttl(key) <= rt.config.trace_keep_after_seconds
    assert rt.traces.holds(owner, trace.request_id) == 0
    assert rt.traces.claim(trace)[0] is Written.COMPLETE  # a redelivered fan-out: nothing to do


def test_a_trace_an_earlier_version_stored_is_read_and_released_where_it_is(
    service, user_id, receiver, rt
):
    """Earlier versions stored a trace and its hold count under two keys; a rolling upgrade leaves
    some: a run of this version delivers them and releases the count they have."""
    owner = f"user:{user_id}"
    sink = receiver()
    destination_id = service.add_destination(owner, "webhook", "old", {"url": sink.url})["id"]
    trace = build_trace(chat_event(1, user_id=user_id, id=f"{user_id}-old"))
    blob = encode(trace.to_wire())
    legacy, legacy_refs = (
        keys.legacy_trace(owner, trace.request_id),
        keys.legacy_trace_refs(owner, trace.request_id),
    )
    redis_client = rt.store.redis
    with redis_client.pipeline(transaction=False) as pipe:
        pipe.set(legacy, blob, px=3_600_000)
        pipe.set(legacy_refs, 2, px=3_600_000)
        rt.backlog.append(
            pipe, destination_id, trace.request_id, time.time(), len(blob), kick=False
        )
        pipe.execute()
    summary = DeliveryRun(rt, delivery_policy(rt), destination_id, "unit-run").run()
    assert summary.outcomes == {"delivered": 1}
    [sent] = [r for r in sink.requests() if not r.headers.get("x-test-connection")]
    assert trace.request_id.encode() in sent.body
    assert redis_client.get(legacy_refs) == b"1"  # one release, where the count was
    assert not redis_client.exists(keys.trace(owner, trace.request_id))  # none written here
    rt.traces.release(owner, [trace.request_id])
    assert redis_client.get(legacy_refs) == b"0"
    assert 0 < redis_client.ttl(legacy) <= rt.config.trace_keep_after_seconds


def test_a_fan_out_that_died_before_its_appends_is_seen_as_interrupted(service, user_id, rt):
    trace = build_trace(chat_event(1, user_id=user_id, id=f"{user_id}-cut"))
    assert rt.traces.claim(trace)[0] is Written.NEW  # then the worker dies
    assert rt.traces.claim(trace)[0] is Written.INTERRUPTED


def test_a_release_before_fan_out_sets_the_count_leaves_the_trace(service, user_id, rt):
    """On a Redis Cluster, fan-out stores the trace not yet complete, then appends and sets
    the count in a pipeline across nodes: a deliver run may settle one entry first. Its
    release must not take the trace from the other backlogs, and a redelivered fan-out still
    finds the fan-out interrupted."""
    owner = f"user:{user_id}"
    trace = build_trace(chat_event(1, user_id=user_id, id=f"{user_id}-early"))
    assert rt.traces.claim(trace)[0] is Written.NEW
    rt.traces.release(owner, [trace.request_id])  # a deliver run settled its entry first
    assert rt.traces.get_many(owner, [trace.request_id])[trace.request_id] == trace
    assert rt.traces.claim(trace)[0] is Written.INTERRUPTED
    with rt.store.redis.pipeline(transaction=False) as pipe:  # the fan-out completes
        rt.traces.write_for(trace, 2).set_holds(pipe)
        pipe.execute()
    assert rt.traces.claim(trace)[0] is Written.COMPLETE


def test_items_settle_on_their_own_inside_one_batch(service, user_id, rt):
    """One Datadog intake call carries the batch; a trace Datadog would refuse for its age
    is dead-lettered with the reason while the others are delivered by the same request."""
    from tests.emulators.datadog import API_KEY, DatadogEmulator

    with DatadogEmulator() as emulator:
        _run_partial_batch(service, user_id, rt, emulator, API_KEY)


def _run_partial_batch(service, user_id, rt, emulator, api_key):
    owner = f"user:{user_id}"
    config = {"api_key": api_key, "ml_app": "batch-app", "url": emulator.url}
    destination_id = service.add_destination(owner, "datadog", "dd", config)["id"]
    emulator.reset()
    stale = "2020-01-01T00:00:00Z"
    fresh = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # the samples' date ages
    entries = []
    for index in range(4):
        moment = stale if index == 2 else fresh
        event = {"started_at": moment, "finished_at": moment}
        trace, size = stored_trace(rt, user_id, index, **event)
        entries.append((trace.request_id, size))
    with rt.store.redis.pipeline(transaction=False) as pipe:
        for request_id, size in entries:
            rt.backlog.append(pipe, destination_id, request_id, time.time(), size, kick=False)
        pipe.execute()
    summary = DeliveryRun(rt, delivery_policy(rt), destination_id, "unit-run").run()
    assert summary.outcomes == {"delivered": 3, "dead_letter": 1}
    [request] = emulator.intake_requests()  # one request for the batch, accepted
    spans = json.loads(request.body)["data"]["attributes"]["spans"]
    assert len({s["trace_id"] for s in spans}) == 3 and len(emulator.spans()) == len(spans)
    counters = rt.store.counters(destination_id)
    assert (counters["delivered"], counters["failed"]) == (3, 1)
    [letter] = service.dead_letters(destination_id)
    assert letter.request_id == f"{user_id}-2" and "older than 24 h" in letter.reason
    [entry] = service.deliveries(destination_id, limit=1)
    assert entry["outcome"] == "partial" and entry["traces"] == 4
    assert wait_for(lambda: rt.backlog.stats(destination_id, time.time()).depth == 0)


def _status_text(destination_id: str) -> str:
    from broadcast_engine.runtime import runtime

    owner = runtime().store.get_destination(destination_id).owner
    run = subprocess.run(
        [str(Path(sys.executable).parent / "broadcast"), "status", "--verbose", "--owner", owner],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout
