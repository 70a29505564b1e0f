"""Amazon Data Firehose: end to end through moto (its Firehose delivers to its S3, read
back), and, since moto ignores Firehose's limits and never fails a record, the splitting
and the per-record outcomes against a loopback Firehose that answers `FailedPutCount`."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest

from broadcast_engine.events import build_trace
from broadcast_interfaces.service import SettingsError
from destinations.base import DeliveryContext
from destinations.firehose import (
    MAX_CALL_BYTES,
    MAX_RECORD_BYTES,
    FirehoseConfig,
    FirehoseDestination,
    base64_size,
    record,
)
from destinations.outcomes import Outcome
from destinations.registry import destination_class
from destinations.trace import Message, Trace
from destinations.transport import HttpTransport
from harness.samples import BASE_TIME, chat_event
from harness.waiting import wait_for
from tasks import broadcast
from tests.emulators import recent_event
from tests.emulators.firehose import FirehoseEmulator, aws_error

DESTINATION = "dst_firehose"
CONTEXT = DeliveryContext(DESTINATION, "user:user_demo", BASE_TIME + timedelta(hours=1))
ACCESS_KEY = "AKIAEXAMPLEFIREHOSE"
SECRET_KEY = "fh-secret-" + uuid.uuid4().hex


def traces(count: int, start: int = 0, content: str | None = None) -> list[Trace]:
    out = [build_trace(chat_event(start + i)) for i in range(count)]
    if content is not None:
        out = [
            dataclasses.replace(t, input_messages=(Message(role="user", content=content),))
            for t in out
        ]
    return out


def test_a_record_is_the_trace_document_newline_terminated_and_the_same_on_retry() -> None:
    trace = build_trace(chat_event(1, trace={"trace_id": "wf-1"}))
    data = record(trace, DESTINATION)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    document = json.loads(data)
    assert document["schema"] == "broadcast.trace/v1"
    assert (document["id"], document["requestId"]) == ("wf-1", trace.request_id)
    assert record(trace, DESTINATION) == data


# --- against the loopback Firehose ------------------------------------------------------


@pytest.fixture(scope="module")
def firehose_server() -> Iterator[FirehoseEmulator]:
    with FirehoseEmulator() as emulator:
        yield emulator


@pytest.fixture
def firehose(firehose_server: FirehoseEmulator) -> FirehoseEmulator:
    firehose_server.reset()
    return firehose_server


def destination(
    emulator: FirehoseEmulator, transport: HttpTransport, **overrides: Any
) -> FirehoseDestination:
    config = {
        "stream_name": emulator.stream_name,
        "endpoint_url": emulator.url,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        **overrides,
    }
    return FirehoseDestination(FirehoseConfig().load(config), transport)


def test_calls_carry_at_most_500_records(
    firehose: FirehoseEmulator, transport: HttpTransport
) -> None:
    batch = traces(1200)
    results = destination(firehose, transport).deliver_batch(batch, CONTEXT)
    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert [len(call) for call in firehose.calls] == [500, 500, 200]
    assert firehose.accepted == [record(t, DESTINATION) for t in batch]


def test_calls_stay_within_4_mib_counted_after_base64(
    firehose: FirehoseEmulator, transport: HttpTransport
) -> None:
    batch = traces(12, content="x" * 900_000)
    results = destination(firehose, transport).deliver_batch(batch, CONTEXT)
    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert len(firehose.calls) >= 4
    for call in firehose.calls:
        assert sum(base64_size(len(data)) for data in call) <= MAX_CALL_BYTES
    assert sum(len(call) for call in firehose.calls) == 12


def test_a_record_over_1000_kib_is_truncated_and_one_that_cannot_fit_refused(
    firehose: FirehoseEmulator, transport: HttpTransport
) -> None:
    (big,) = traces(1, content="y" * 3_000_000)
    many = dataclasses.replace(
        big, input_messages=tuple(Message(role="user", content="z" * 300) for _ in range(5000))
    )
    results = destination(firehose, transport).deliver_batch([big, many], CONTEXT)
    assert results[0].outcome is Outcome.DELIVERED
    assert results[1].outcome is Outcome.PERMANENT and "payload too large" in results[1].error
    ((data,),) = firehose.calls
    assert len(data) <= MAX_RECORD_BYTES and b"\xe2\x80\xa6[truncated " in data


def test_failed_records_settle_their_own_traces_and_only_they_are_sent_again(
    firehose: FirehoseEmulator, transport: HttpTransport
) -> None:
    batch = traces(6)
    busy = {batch[1].request_id, batch[4].request_id}
    bad = batch[2].request_id

    def failing(data: bytes) -> tuple[str, str] | None:
        request_id = json.loads(data)["requestId"]
        if request_id in busy:
            return ("ServiceUnavailableException", "Slow down.")
        if request_id == bad:
            return ("InvalidKMSResourceException", "KMS key disabled")
        return None

    firehose.failing = failing
    target = destination(firehose, transport)
    results = target.deliver_batch(batch, CONTEXT)
    outcomes = [r.outcome for r in results]
    assert outcomes == [
        Outcome.DELIVERED,
        Outcome.RETRYABLE,
        Outcome.PERMANENT,
        Outcome.DELIVERED,
        Outcome.RETRYABLE,
        Outcome.DELIVERED,
    ]
    assert "ServiceUnavailableException" in results[1].error
    assert "InvalidKMSResourceException: KMS key disabled" in results[2].error
    assert all(r.status_code == 200 for r in results)

    firehose.failing = lambda _data: None
    again = [t for t, r in zip(batch, results, strict=True) if r.outcome is Outcome.RETRYABLE]
    assert [r.outcome for r in target.deliver_batch(again, CONTEXT)] == [Outcome.DELIVERED] * 2
    assert firehose.calls[-1] == [record(t, DESTINATION) for t in again]  # same bytes
    accepted_ids = sorted(json.loads(data)["requestId"] for data in firehose.accepted)
    assert accepted_ids == sorted(t.request_id for t in batch if t.request_id != bad)


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (aws_error(400, "UnrecognizedClientException", "bad token"), Outcome.AUTH_FAILED),
        (aws_error(400, "AccessDeniedException", "not allowed"), Outcome.AUTH_FAILED),
        (aws_error(400, "ExpiredTokenException", "expired"), Outcome.AUTH_FAILED),
        (aws_error(503, "ServiceUnavailableException", "busy"), Outcome.RETRYABLE),
        (aws_error(400, "ThrottlingException", "rate"), Outcome.RETRYABLE),
        (aws_error(500, "InternalFailure", "oops"), Outcome.RETRYABLE),
        (aws_error(400, "ResourceNotFoundException", "gone"), Outcome.PERMANENT),
        (aws_error(400, "InvalidArgumentException", "bad"), Outcome.PERMANENT),
    ],
)
def test_a_failed_call_settles_every_record(
    firehose: FirehoseEmulator, transport: HttpTransport, reply: Any, outcome: Outcome
) -> None:
    firehose.scripted.append(reply)
    results = destination(firehose, transport).deliver_batch(traces(3), CONTEXT)
    assert [r.outcome for r in results] == [outcome] * 3
    assert SECRET_KEY not in (results[0].error or "")


def test_a_failure_of_the_destination_stops_the_batch(
    firehose: FirehoseEmulator, transport: HttpTransport
) -> None:
    firehose.scripted.append(aws_error(503, "ServiceUnavailableException", "busy"))
    results = destination(firehose, transport).deliver_batch(traces(700), CONTEXT)
    assert [r.attempted for r in results[:500]] == [True] * 500
    assert {r.attempted for r in results[500:]} == {False}
    assert firehose.calls == []  # the one call failed as a whole; the rest never went


def test_connection_check_describes_the_stream(
    firehose: FirehoseEmulator, transport: HttpTransport
) -> None:
    target = destination(firehose, transport, headers={"X-Tenant": "t1"})
    check = target.test_connection(CONTEXT)
    assert check.ok and "ACTIVE" in check.message
    missing = destination(firehose, transport, stream_name="nope").test_connection(CONTEXT)
    assert missing.outcome is Outcome.PERMANENT and "no delivery stream 'nope'" in missing.message
    firehose.scripted.append(aws_error(400, "AccessDeniedException", "no describe"))
    denied = target.test_connection(CONTEXT)
    assert denied.outcome is Outcome.AUTH_FAILED
    assert "firehose:DescribeDeliveryStream" in denied.message
    probes = firehose.receiver.requests()
    assert len(probes) == 3
    assert all(probe.headers["x-test-connection"] == "true" for probe in probes)
    assert probes[0].headers["x-tenant"] == "t1"
    # Deliveries carry the custom headers but are not probes.
    target.deliver(traces(1)[0], CONTEXT)
    (put,) = firehose.requests_for("PutRecordBatch")
    assert put.headers["x-tenant"] == "t1" and "x-test-connection" not in put.headers
    assert firehose.calls  # nothing was written by the probes before it


def test_config() -> None:
    assert destination_class("firehose") is FirehoseDestination
    assert FirehoseDestination.secret_fields() == {"secret_access_key", "session_token", "headers"}
    assert FirehoseDestination.url_fields() == {"endpoint_url"}
    loaded = FirehoseConfig().load(
        {"stream_name": "s", "access_key_id": "a", "secret_access_key": "b"}
    )
    assert loaded["region"] == "us-east-1"
    from marshmallow import ValidationError

    for bad in ({"stream_name": "a b"}, {"region": "Mars"}):
        with pytest.raises(ValidationError):
            FirehoseConfig().load(
                {"stream_name": "s", "access_key_id": "a", "secret_access_key": "b", **bad}
            )


# --- end to end: a real worker, moto's Firehose delivering into moto's S3 ----------------


@pytest.fixture
def moto_stream(moto_server: Any) -> tuple[Any, str, str]:
    """A bucket and a DirectPut stream delivering into it, in moto."""
    bucket, stream = f"fh-{uuid.uuid4().hex[:10]}", f"traces-{uuid.uuid4().hex[:8]}"
    options = {
        "endpoint_url": moto_server.url,
        "region_name": "us-east-1",
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
    }
    s3 = boto3.client("s3", **options)
    s3.create_bucket(Bucket=bucket)
    boto3.client("firehose", **options).create_delivery_stream(
        DeliveryStreamName=stream,
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::123456789012:role/firehose",
            "BucketARN": f"arn:aws:s3:::{bucket}",
            "Prefix": "traces/",
        },
    )
    return s3, bucket, stream


@pytest.mark.integration
def test_end_to_end_through_moto(
    worker: Any, service: Any, user_id: str, moto_server: Any, moto_stream: Any
) -> None:
    s3, bucket, stream = moto_stream
    owner = f"user:{user_id}"
    config = {
        "stream_name": stream,
        "region": "us-east-1",
        "endpoint_url": moto_server.url,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
    }
    with pytest.raises(SettingsError, match="no delivery stream 'missing'"):
        service.add_destination(owner, "firehose", "Firehose", {**config, "stream_name": "missing"})
    view = service.add_destination(owner, "firehose", "Firehose", config)
    assert view["config"]["secret_access_key"].startswith("****")
    events = [recent_event(user_id, i, "firehose", trace={"trace_id": "wf-3"}) for i in range(4)]
    for item in events:
        broadcast.delay(item)
    wait_for(lambda: service.store.counters(view["id"])["delivered"] == 4)

    lines: list[bytes] = []
    for item in s3.list_objects_v2(Bucket=bucket, Prefix="traces/").get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        assert body.endswith(b"\n")
        lines += body.splitlines()
    documents = [json.loads(line) for line in lines]
    assert sorted(d["requestId"] for d in documents) == sorted(e["id"] for e in events)
    assert {d["id"] for d in documents} == {"wf-3"}
    assert documents[0]["observations"][-1]["usage"]["total"] == 28
