"""A broken event's owner is validated before it touches storage, rejections are kept per
owner, and recording a rejection cannot raise for anything in the event.

Fan-out's work (`broadcast_engine.intake.accept`) is called directly on the tests' Redis: what it
records is what a worker records.
"""

from __future__ import annotations

import uuid

from broadcast_engine.intake import accept
from harness.samples import chat_event
from settings import keys
from settings.store import REJECTED_OWNER_TTL_SECONDS, REJECTED_PER_OWNER, UNKNOWN_OWNER


def test_a_huge_user_id_is_rejected_under_the_placeholder_without_a_key(store):
    marker = uuid.uuid4().hex
    before = set(store.redis.scan_iter(count=1000))
    for index in range(10):
        event_id = f"huge-{marker}-{index}"
        intake = accept(chat_event(index, id=event_id, user_id=marker + "u" * (4 * 1024 * 1024)))
        assert intake.rejected is not None and "user_id: Must be 1 to 128" in intake.rejected
    latest = store.rejected_events(None, 10)
    assert {entry["owner"] for entry in latest} == {UNKNOWN_OWNER}
    assert {entry["id"] for entry in latest} == {f"huge-{marker}-{i}" for i in range(10)}
    assert not list(store.redis.scan_iter(match=f"*{marker}u*", count=1000))
    # Only the all-owners list and its counts may have appeared (a first rejection
    # creates them): no key for the rejected owner. Another test's worker may still be
    # writing its own keys, so only the keys named like a rejection count.
    appeared = {k.decode() for k in set(store.redis.scan_iter(count=1000)) - before}
    assert {k for k in appeared if "rejected" in k} <= {keys.REJECTED, keys.REJECTED_COUNTS}


def test_a_lone_surrogate_in_an_id_is_recorded_not_raised(store):
    event_id = f"sur-{uuid.uuid4().hex[:8]}-\ud800"
    intake = accept(chat_event(1, id=event_id, user_id="u\udc00x"))
    assert intake.rejected is not None and "user_id" in intake.rejected
    entry = store.rejected_events(None, 1)[0]
    assert entry["id"] == event_id and entry["owner"] == UNKNOWN_OWNER


def test_an_owners_rejections_survive_another_owners_flood(service, store):
    quiet, noisy = f"q{uuid.uuid4().hex[:10]}", f"n{uuid.uuid4().hex[:10]}"
    service.set_enabled(f"user:{quiet}", True)
    accept(chat_event(1, id=f"{quiet}-bad", user_id=quiet, model=""))
    for index in range(REJECTED_PER_OWNER + 20):
        accept(chat_event(index, id=f"{noisy}-{index}", user_id=noisy, model=""))
    assert [e["id"] for e in store.rejected_events(f"user:{quiet}")] == [f"{quiet}-bad"]
    assert store.rejected_count(f"user:{quiet}") == 1
    noisy_key = keys.owner_part(f"user:{noisy}", "rejected")
    assert store.redis.llen(noisy_key) == REJECTED_PER_OWNER
    assert 0 < store.redis.ttl(noisy_key) <= REJECTED_OWNER_TTL_SECONDS
    # an owner without settings gets no owner record, only its expiring list
    assert not store.redis.exists(keys.owner(f"user:{noisy}"))


def test_an_actor_without_owner_sees_its_owners_rejections_only(service, store):
    alice, bob = f"a{uuid.uuid4().hex[:10]}", f"b{uuid.uuid4().hex[:10]}"
    for user in (alice, bob):
        service.set_enabled(f"user:{user}", True)
        accept(chat_event(1, id=f"{user}-bad", user_id=user, model=""))
    seen = service.rejected_events(actor=f"user:{alice}", limit=50)
    assert [entry["id"] for entry in seen] == [f"{alice}-bad"]
