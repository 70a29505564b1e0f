"""`broadcast keys rotate`, end to end: seal with key A, rotate with "B,A", drop A, and
every destination still delivers through a real worker that only has B.

The test has a Redis database of its own (settings and broker), so re-sealing does not
touch the secrets other tests' workers decrypt with the session's key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from standardwebhooks.webhooks import Webhook

from broadcast_engine.runtime import Runtime
from broadcast_interfaces.service import settings_service
from harness.processes import ManagedProcess, RedisServer
from harness.samples import chat_event
from harness.waiting import wait_for
from settings.config import load_config
from settings.crypto import SecretBox, SecretsCorrupted, generate_key

pytestmark = pytest.mark.integration
BROADCAST = str(Path(sys.executable).parent / "broadcast")
KEY_A, KEY_B = generate_key(), generate_key()


@pytest.fixture(scope="module")
def database(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url.rsplit("/", 1)[0] + "/9"
    redis.Redis.from_url(url).flushdb()
    yield url
    redis.Redis.from_url(url).flushdb()


def runtime_with(url: str, keys: str) -> Runtime:
    return Runtime(
        load_config(
            {},
            broker_url=url,
            store_url=url,
            encryption_keys=tuple(keys.split(",")),
            allow_private_networks=True,
        )
    )


def env_with(url: str, keys: str) -> dict[str, str]:
    return {
        **os.environ,
        "BROADCAST_BROKER_URL": url,
        "BROADCAST_STORE_URL": url,
        "BROADCAST_ENCRYPTION_KEYS": keys,
    }


def rotate(url: str, keys: str) -> dict[str, int]:
    result = subprocess.run(
        [BROADCAST, "keys", "rotate", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env_with(url, keys),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def start_worker(url: str, keys: str, workdir: Path) -> tuple[ManagedProcess, Celery]:
    client = Celery("rotation-test-client", set_as_current=False)
    client.config_from_object("celeryconfig")
    client.conf.broker_url = url
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "threads", "-c", "4"]
    argv += ["-n", f"rotation-{os.getpid()}@%h", "-l", "INFO", "--without-gossip"]
    argv += ["--without-mingle"]
    process = ManagedProcess("rotation-worker", argv, env_with(url, keys), workdir)

    def answered() -> bool:
        if not process.alive():
            raise RuntimeError(f"worker exited:\n{process.log_tail()}")
        return bool(client.control.ping(timeout=0.5))

    wait_for(answered, timeout=60, what="the worker with only key B to answer")
    return process, client


def test_rotate_then_drop_the_old_key(database, receiver, workdir):
    owner = f"user:rot{uuid.uuid4().hex[:8]}"
    signing_secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    hook, collector, notify = receiver(), receiver(), receiver()
    with_a = runtime_with(database, KEY_A)
    settings_service(with_a).set_enabled(owner, True)
    webhook = settings_service(with_a).add_destination(
        owner,
        "webhook",
        "signed",
        {
            "url": hook.url + "/in",
            "signing_secret": signing_secret,
            "headers": {"Authorization": "Bearer rot_" + uuid.uuid4().hex},
        },
    )
    otel = settings_service(with_a).add_destination(
        owner,
        "otel-collector",
        "collector",
        {"endpoint": collector.url + "/v1/traces", "headers": {"x-token": "t" + uuid.uuid4().hex}},
    )
    settings_service(with_a).set_notification_target(owner, notify.url, "whsec_" + "A" * 32)
    hook.clear()
    collector.clear()

    assert rotate(database, f"{KEY_B},{KEY_A}") == {
        "destinations": 2,
        "notification_secrets": 1,
        "already_current": 0,
    }
    assert rotate(database, f"{KEY_B},{KEY_A}") == {  # idempotent
        "destinations": 0,
        "notification_secrets": 0,
        "already_current": 3,
    }

    only_b = runtime_with(database, KEY_B)
    for view in (webhook, otel):
        record = only_b.store.get_destination(view["id"])
        assert settings_service(only_b).decrypted_config(record)  # opens with B alone
        with pytest.raises(SecretsCorrupted):
            SecretBox([KEY_A]).open(record.sealed_secrets)  # A no longer opens it
    assert only_b.notifications.target(owner)[1] == "whsec_" + "A" * 32

    process, client = start_worker(database, KEY_B, workdir)
    try:
        request_id = f"{owner}-after-rotation".replace(":", "-")
        event = chat_event(1, id=request_id, user_id=owner.split(":", 1)[1])
        client.send_task("broadcast.fan_out", args=[event])
        delivered = wait_for(lambda: hook.requests("/in"), timeout=30, what="the webhook")
        wait_for(lambda: collector.requests("/v1/traces"), timeout=30, what="the collector")
    finally:
        process.stop()
    request = delivered[0]
    Webhook(signing_secret).verify(request.body, dict(request.headers))  # signed with it
    assert json.loads(request.body)["data"]["requestId"] == request_id
    assert "SecretsCorrupted" not in process.log_path.read_text(errors="replace")


def test_rotation_refuses_when_a_secret_opens_with_no_key(database):
    owner = f"user:rot{uuid.uuid4().hex[:8]}"
    settings_service(runtime_with(database, KEY_A)).set_notification_target(
        owner, "http://127.0.0.1:9/hook", "whsec_" + "B" * 32
    )
    result = subprocess.run(
        [BROADCAST, "keys", "rotate"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env_with(database, generate_key()),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "broadcast: error: stored secrets do not decrypt with any configured key"
    ]


class ConcurrentWriterBox(SecretBox):
    """A real box whose first re-seal lets another writer change the record in between
    (what a worker or the API may do at any moment while `keys rotate` runs)."""

    def __init__(self, keys: list[str], concurrent_write) -> None:
        super().__init__(keys)
        self.concurrent_write = concurrent_write

    def rotate(self, token: str) -> str:
        write, self.concurrent_write = self.concurrent_write, None
        if write is not None:
            write()
        return super().rotate(token)


def test_a_concurrent_update_during_rotation_is_never_lost(database, receiver):
    from settings.key_rotation import rotate_all

    owner = f"user:rot{uuid.uuid4().hex[:8]}"
    sink = receiver()
    with_a = runtime_with(database, KEY_A)
    settings_service(with_a).set_enabled(owner, True)
    view = settings_service(with_a).add_destination(owner, "webhook", "before", {"url": sink.url})
    with_b_and_a = runtime_with(database, f"{KEY_B},{KEY_A}")

    def rename() -> None:
        settings_service(with_b_and_a).update_destination(view["id"], name="renamed meanwhile")

    box = ConcurrentWriterBox([KEY_B, KEY_A], rename)
    report = rotate_all(with_b_and_a.store, box)
    assert report.destinations == 1  # re-read after the change, then re-sealed
    record = with_b_and_a.store.get_destination(view["id"])
    assert record.name == "renamed meanwhile"  # the concurrent change survived
    assert SecretBox([KEY_B]).open(record.sealed_secrets)["headers"] == {}  # sealed with B
