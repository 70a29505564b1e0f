"""S3 object layout (OpenRouter's path variables and object name) and the Test Connection
probe, written into moto running as a real server and then removed."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta
from typing import Any

import boto3
import marshmallow
import pytest

from broadcast_engine.events import build_trace
from destinations.base import DeliveryContext
from destinations.s3 import S3Config, S3Destination, object_key
from destinations.transport import HttpTransport
from destinations.url_guard import NetworkPolicy
from harness.samples import BASE_TIME, chat_event

ACCESS_KEY, SECRET_KEY = "AKIDLAYOUT", "layout-secret"
CONTEXT = DeliveryContext("dst_s3", "user:u", BASE_TIME + timedelta(hours=1))
TRACE = build_trace(chat_event(1, api_key_id="key_123", api_key_name="prod key"))
BASE_CONFIG = {"bucket": "b-1", "access_key_id": "a", "secret_access_key": "s"}


def test_every_variable_openrouter_documents_is_accepted() -> None:
    template = "{prefix}/{apiKeyName}/{year}/{month}/{day}/{date}"
    config = S3Config().load({**BASE_CONFIG, "path_template": template})
    key = object_key(TRACE, config["path_template"], config["prefix"])
    assert key == "broadcast-traces/prod_key/2026/11/23/2026-11-23/gen-000001-1795428001.json"
    with pytest.raises(marshmallow.ValidationError, match="Unknown variable"):
        S3Config().load({**BASE_CONFIG, "path_template": "{x}"})


def test_api_key_name_falls_back_to_the_id_then_keyless() -> None:
    by_id = dataclasses.replace(TRACE, api_key_name=None)
    keyless = dataclasses.replace(TRACE, api_key_name=None, api_key_id=None)
    assert object_key(by_id, "{apiKeyName}").startswith("key_123/")
    assert object_key(keyless, "{apiKeyName}").startswith("keyless/")


def test_openrouter_object_name_and_no_collision_within_a_trace() -> None:
    first = build_trace(chat_event(2, trace={"trace_id": "wf-1"}))
    second = build_trace(chat_event(3, trace={"trace_id": "wf-1"}))
    key = object_key(first, "t/{date}", object_name="trace")
    assert key == f"t/2026-11-23/wf-1-{int(first.started_at.timestamp() * 1000)}.json"
    assert key != object_key(second, "t/{date}", object_name="trace")
    assert object_key(first, "", prefix="p").startswith("gen-000002-")


def test_connection_check_removes_its_probe_object(moto_server: Any) -> None:
    name = f"probe-{uuid.uuid4().hex[:10]}"
    client = boto3.client(
        "s3",
        endpoint_url=moto_server.url,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    client.create_bucket(Bucket=name)
    config = S3Config().load(
        {
            "bucket": name,
            "endpoint_url": moto_server.url,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "prefix": "team-a",
        }
    )
    transport = HttpTransport(NetworkPolicy(allow_private_networks=True))
    try:
        check = S3Destination(config, transport).test_connection(CONTEXT)
    finally:
        transport.close()
    assert check.ok, check.message
    assert client.list_objects_v2(Bucket=name).get("KeyCount") == 0
