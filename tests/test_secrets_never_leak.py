"""After real deliveries, no plaintext secret is in Redis, the broker, logs or CLI output."""

from __future__ import annotations

import io
import json
import uuid
from contextlib import redirect_stdout

import pytest
from celery.signals import before_task_publish

from broadcast_interfaces.cli import main as cli
from harness.receiver import Reply
from harness.samples import chat_event
from harness.waiting import wait_for
from tasks import broadcast, fan_out
from tests.warehouse_destinations import add_warehouse_destinations

pytestmark = pytest.mark.integration


def redis_dump(client) -> bytes:
    """Every key and every value in the server, whatever its type."""
    chunks = []
    for key in client.scan_iter(count=1000):
        chunks.append(key)
        kind = client.type(key)
        if kind == b"string":
            chunks.append(client.get(key) or b"")
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                chunks += [field, value]
        elif kind == b"list":
            chunks += client.lrange(key, 0, -1)
        elif kind == b"set":
            chunks += list(client.smembers(key))
        elif kind == b"zset":
            chunks += [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
    return b"\n".join(chunks)


def test_no_plaintext_secret_anywhere(
    worker, service, user_id, receiver, moto_server, clickhouse, snowflake, bigquery
):
    header_secret = "Bearer hdr_" + uuid.uuid4().hex
    signing_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    s3_secret = "s3key_" + uuid.uuid4().hex
    secrets = [header_secret, header_secret.split(" ")[1], signing_secret, s3_secret]

    def echo_401(request):  # a vendor that echoes the credential in its error
        if request.headers.get("x-test-connection"):
            return Reply(200)
        return Reply(401, f"invalid credential {request.headers['authorization']}".encode())

    hook = receiver()
    leaky = receiver(echo_401)
    owner = f"user:{user_id}"
    ok_hook = service.add_destination(
        owner,
        "webhook",
        "Hook",
        {
            "url": hook.url,
            "headers": {"Authorization": header_secret},
            "signing_secret": signing_secret,
        },
    )
    bad_hook = service.add_destination(
        owner,
        "webhook",
        "Leaky",
        {
            "url": leaky.url,
            "headers": {"Authorization": header_secret},
        },
    )
    import boto3

    boto3.client(
        "s3",
        endpoint_url=moto_server.url,
        region_name="us-east-1",
        aws_access_key_id="AKIA1",
        aws_secret_access_key=s3_secret,
    ).create_bucket(Bucket="leak-check")
    archive = service.add_destination(
        owner,
        "s3",
        "Archive",
        {
            "bucket": "leak-check",
            "endpoint_url": moto_server.url,
            "access_key_id": "AKIA1",
            "secret_access_key": s3_secret,
        },
    )

    # ClickHouse, Snowflake and BigQuery on their real engines (password, programmatic
    # access token, service-account key).
    warehouses = add_warehouse_destinations(service, owner, clickhouse, snowflake, bigquery)
    secrets += warehouses.secrets

    published: list[bytes] = []

    def capture(body, headers, **_):
        published.append(json.dumps([body, headers], default=str).encode())

    before_task_publish.connect(capture)
    try:
        fan_out.apply(args=(chat_event(1, user_id=user_id, id=f"{user_id}-1"),))
    finally:
        before_task_publish.disconnect(capture)
    broadcast.delay(chat_event(2, user_id=user_id, id=f"{user_id}-2"))
    wait_for(lambda: service.store.counters(ok_hook["id"])["delivered"] == 2)
    wait_for(lambda: service.store.counters(archive["id"])["delivered"] == 2)
    wait_for(lambda: service.store.counters(bad_hook["id"])["retried"] >= 1)
    wait_for(
        lambda: all(service.store.counters(i)["delivered"] == 2 for i in warehouses.ids),
        timeout=60,
    )
    secrets += warehouses.issued_tokens()  # BigQuery's access tokens, made at run time
    assert warehouses.issued_tokens()

    assert len(published) == 6  # one deliver message per destination, ids only
    outputs = []
    for argv in (
        ["destination", "list", "--owner", owner],
        ["status", "--owner", owner],
        ["deliveries", bad_hook["id"]],
        ["destination", "show", archive["id"]],
        *(["destination", "show", warehouse_id] for warehouse_id in warehouses.ids),
        *(["deliveries", warehouse_id] for warehouse_id in warehouses.ids),
    ):
        for fmt in ([], ["--json"]):
            buffer = io.StringIO()
            with redirect_stdout(buffer):
                assert cli(argv + fmt, service=service) == 0
            outputs.append(buffer.getvalue())
    cli_text = "\n".join(outputs)
    assert "[redacted]" in cli_text  # the echoed credential was there, and was redacted

    places = {
        "redis (settings and broker)": redis_dump(service.store.redis),
        "published task messages": b"\n".join(published),
        "worker log": worker.log_path.read_bytes(),
        "CLI output": cli_text.encode(),
    }
    for secret in secrets:
        for place, content in places.items():
            assert secret.encode() not in content, f"a secret appears in {place}"
