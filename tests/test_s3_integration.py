"""S3 through boto3 into moto running as a real server on loopback."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from broadcast_interfaces.service import SettingsError
from harness.samples import chat_event
from harness.waiting import wait_for
from tasks import broadcast

pytestmark = pytest.mark.integration
ACCESS_KEY = "AKIAEXAMPLEBROADCAST"
SECRET_KEY = "s3cr3t-" + uuid.uuid4().hex


@pytest.fixture
def bucket(moto_server):
    name = f"traces-{uuid.uuid4().hex[:10]}"
    client = boto3.client(
        "s3",
        endpoint_url=moto_server.url,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    client.create_bucket(Bucket=name)
    return client, name


def s3_config(moto_server, bucket_name, **extra):
    return {
        "bucket": bucket_name,
        "region": "us-east-1",
        "endpoint_url": moto_server.url,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        **extra,
    }


def keys(client, bucket_name, prefix=""):
    listing = client.list_objects_v2(Bucket=bucket_name, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_objects_are_written_where_the_template_says(worker, service, user_id, moto_server, bucket):
    client, name = bucket
    view = service.add_destination(
        f"user:{user_id}",
        "s3",
        "Archive",
        s3_config(moto_server, name, path_template="traces/{year}/{month}/{day}/{apiKeyName}"),
    )
    assert view["config"]["secret_access_key"].startswith("****")
    assert keys(client, name) == []  # Test Connection removed its probe object

    events = [
        chat_event(i, user_id=user_id, id=f"{user_id}-{i}", trace={"trace_id": "wf-1"})
        for i in range(3)
    ]
    for item in events:
        broadcast.delay(item)
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 3)
    written = keys(client, name, "traces/2026/11/23/key_live_1/")
    assert written == [
        f"traces/2026/11/23/key_live_1/{user_id}-{i}-{1795428000 + i}.json" for i in range(3)
    ]
    document = json.loads(client.get_object(Bucket=name, Key=written[1])["Body"].read())
    assert document["id"] == "wf-1" and document["requestId"] == f"{user_id}-1"
    assert document["observations"][-1]["usage"]["total"] == 28
    assert document["observations"][-1]["output"][0]["content"] == "The answer is 2."


def test_an_event_sent_twice_is_delivered_once(worker, service, user_id, moto_server, bucket):
    client, name = bucket
    view = service.add_destination(f"user:{user_id}", "s3", "Archive", s3_config(moto_server, name))
    item = chat_event(7, user_id=user_id, id=f"{user_id}-7")
    broadcast.delay(item)
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 1)
    broadcast.delay(item)  # the gateway sent it twice: fan-out knows the stored trace
    wait_for(
        lambda: f"broadcast.fan_out.duplicate request={user_id}-7" in worker.log_path.read_text()
    )
    assert service.store.counters(view["id"])["delivered"] == 1
    assert keys(client, name, f"broadcast-traces/2026-11-23/{user_id}") == [
        f"broadcast-traces/2026-11-23/{user_id}-7-1795428007.json"
    ]


def test_missing_bucket_fails_test_connection(service, user_id, moto_server):
    with pytest.raises(SettingsError, match="NoSuchBucket"):
        service.add_destination(
            f"user:{user_id}", "s3", "Nowhere", s3_config(moto_server, "no-such-bucket-here")
        )
    assert service.list_destinations(f"user:{user_id}") == []
