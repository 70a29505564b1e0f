"""The settings store and its neighbours on a real 3-master Redis Cluster on loopback.

Every key is hash-tagged (settings/keys.py), so each multi-key operation stays in one
slot; a CROSSSLOT error here means a key lost its tag. The cluster starts once per test
session; the client comes from `settings.redis_client.connect`, as production's would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from redis.cluster import RedisCluster

from broadcast_engine.backlog import Backlog
from broadcast_engine.dead_letters import DeadLetters, letter_json
from broadcast_engine.notifications import Notifications
from harness.redis_cluster import RedisClusterServer
from settings import keys
from settings.config import load_config
from settings.crypto import SecretBox, generate_key
from settings.models import DestinationRecord, Health
from settings.redis_client import connect
from settings.store import SettingsStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def redis_cluster(workdir) -> Iterator[RedisClusterServer]:
    server = RedisClusterServer(workdir)
    yield server
    server.stop()


@pytest.fixture
def client(redis_cluster) -> Iterator[RedisCluster]:
    cluster = connect(redis_cluster.url)
    assert isinstance(cluster, RedisCluster)
    yield cluster
    cluster.close()


@pytest.fixture
def store(client) -> SettingsStore:
    return SettingsStore(client, delivery_log_size=3)


@pytest.fixture
def owner() -> str:
    return f"user:c{uuid.uuid4().hex[:10]}"


def record(owner: str, name: str = "hook", **changes) -> DestinationRecord:
    values = {
        "id": f"dst_{uuid.uuid4().hex[:16]}",
        "owner": owner,
        "type": "webhook",
        "name": name,
        "config": {"url": "https://hooks.example.com/in"},
        "sealed_secrets": "",
        **changes,
    }
    return DestinationRecord(**values)


def test_the_cluster_spreads_slots_over_three_masters(client):
    masters = {node.name for node in client.get_primaries()}
    assert len(masters) == 3
    slots = {client.keyslot(keys.destination(f"d{i}")) for i in range(50)}
    assert len(slots) > 10, "destinations must not all share one slot"
    assert client.keyslot(keys.destination_part("d1", "backlog")) == client.keyslot(
        keys.destination_part("d1", "counters")
    )


def test_destinations_add_list_update_remove(store, owner):
    store.set_enabled(owner, True)
    first, second = record(owner, "one"), record(owner, "two")
    store.add_destination(first, max_per_type=5)
    store.add_destination(second, max_per_type=5)
    assert owner in store.owners()
    assert {r.id for r in store.list_destinations(owner)} == {first.id, second.id}
    assert {first.id, second.id} <= set(store.all_destination_ids())
    store.replace_destination(record(owner, "renamed", id=first.id))
    assert store.get_destination(first.id).name == "renamed"
    snapshot = store.owner_snapshot(owner)
    assert snapshot.enabled and {route.id for route in snapshot.routes} == {first.id, second.id}
    store.remove_destination(second)
    assert [r.id for r in store.list_destinations(owner)] == [first.id]
    assert store.get_destination(second.id) is None


def test_health_counters_and_delivery_log(store, owner):
    destination = record(owner)
    store.add_destination(destination, max_per_type=5)
    store.set_health(destination, {"status": Health.AUTH_FAILED, "reason": "401"})
    assert store.health(destination.id).status is Health.AUTH_FAILED
    version = store.owner_version(owner)
    store.bump_version(owner)
    assert store.owner_version(owner) == version + 1
    store.count(destination.id, "delivered", 2)
    store.count_many([(destination.id, "retried"), (destination.id, "delivered")])
    counters = store.counters(destination.id)
    assert (counters["delivered"], counters["retried"], counters["failed"]) == (3, 1, 0)
    for attempt in range(5):
        store.record_attempt(destination.id, {"attempt": attempt, "outcome": "delivered"})
    assert [e["attempt"] for e in store.attempts(destination.id, limit=10)] == [4, 3, 2]
    assert store.latency_histogram(destination.id).count == 0


def test_rejected_events(store, owner):
    store.set_enabled(owner, True)  # rejections are counted for owners that have settings
    store.record_rejected_event(owner, {"id": "gen-x", "owner": owner, "reason": "field 'model'"})
    assert store.rejected_count(owner) == 1
    assert store.rejected_events(owner)[0]["reason"] == "field 'model'"


def test_dead_letters(client, owner):
    letters = DeadLetters(client, retention_seconds=3600)
    destination_id = f"dst_{uuid.uuid4().hex[:16]}"
    now = time.time()
    for index in range(3):
        letters.add(destination_id, letter_json(
            request_id=f"gen-{index}", owner=owner, reason="HTTP 400", trace={"id": index},
            accepted_at=now, attempts=1, now=now,
        ))  # fmt: skip
    listed = letters.list(destination_id)
    assert sorted(letter.request_id for letter in listed) == ["gen-0", "gen-1", "gen-2"]
    letters.mark_replayed(destination_id, listed[0].id, now)
    assert letters.count(destination_id) == 3
    assert letters.list(destination_id, ids=[listed[0].id])[0].replayed_at == pytest.approx(now)


def test_notifications(client, owner):
    notes = Notifications(client, SecretBox([generate_key()]))
    notes.set_target(owner, "https://example.com/notify", "whsec_" + "a" * 32)
    url, secret = notes.target(owner)
    assert url == "https://example.com/notify" and secret == "whsec_" + "a" * 32
    notes.record(owner, "destination.auth_failed", {"destination": "d1"}, time.time())
    assert notes.events(owner)[0]["type"] == "destination.auth_failed"
    assert any(event["owner"] == owner for event in notes.take_outbox(100))


def test_backlog_append_and_stats(client, owner):
    backlog = Backlog(client, max_in_flight=2, lease_seconds=30, log_size=10)
    destination_id = f"dst_{uuid.uuid4().hex[:16]}"
    backlog.create(destination_id)
    now = time.time()
    with client.pipeline(transaction=False) as pipe:
        for index in range(3):
            backlog.append(pipe, destination_id, f"gen-{index}", now - 10 + index, 100,
                           kick=index == 0)  # fmt: skip
        pipe.execute()
    stats = backlog.stats(destination_id, now)
    assert stats.depth == 3 and stats.oldest_accepted_at == pytest.approx(now - 10, abs=0.01)
    assert [entry.request_id for entry in backlog.entries(destination_id)] == [
        "gen-0", "gen-1", "gen-2",
    ]  # fmt: skip


def test_the_runtime_accepts_a_cluster_store_url(redis_cluster):
    from broadcast_engine.runtime import Runtime

    runtime = Runtime(load_config(store_url=redis_cluster.url))
    assert isinstance(runtime.store.redis, RedisCluster)


def test_connect_picks_the_client_by_scheme(redis_cluster):
    import redis

    from settings.config import ConfigurationError

    assert type(connect("redis://127.0.0.1:6379/0")) is redis.Redis
    with pytest.raises(ConfigurationError, match="host:port") as refused:
        connect("redis+cluster://admin:s3cret-pw@node-without-port")
    assert "s3cret-pw" not in str(refused.value)
    cluster = connect("redis+cluster://" + redis_cluster.url.split(",")[-1].split("//")[-1])
    assert len(cluster.get_primaries()) == 3  # one node given, the rest discovered
    cluster.close()
