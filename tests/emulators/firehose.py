"""Amazon Data Firehose's JSON API on loopback, for what moto does not do: its limits and
partial failures.

Requests are AWS JSON 1.1 (`POST /`, `X-Amz-Target: Firehose_20150804.<Operation>`).
`PutRecordBatch` refuses more than 500 records, a record over 1,000 KiB or a call over
4 MiB of records (400 `InvalidArgumentException`, as Firehose documents); otherwise it
answers 200 with `FailedPutCount` and one `RequestResponses` entry per record, in order:
`{"RecordId"}`, or `{"ErrorCode", "ErrorMessage"}` for a record `failing` picks (by its
decoded data). `DescribeDeliveryStream` describes `stream_name` (ACTIVE) and answers
`ResourceNotFoundException` for any other. `scripted` replies go first, in order.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from typing import Any

from harness.receiver import ReceivedRequest, Reply
from tests.emulators import Emulator

TARGET_PREFIX = "Firehose_20150804."
MAX_RECORDS = 500
MAX_RECORD_BYTES = 1000 * 1024
MAX_CALL_BYTES = 4 * 1024 * 1024
CONTENT_TYPE = "application/x-amz-json-1.1"

# Picks the records that fail: decoded data -> (ErrorCode, ErrorMessage), or None.
Failing = Callable[[bytes], tuple[str, str] | None]


def aws_error(status: int, code: str, message: str) -> Reply:
    """An AWS JSON 1.1 error answer."""
    body = json.dumps({"__type": code, "message": message}).encode()
    return Reply(status, body, {"Content-Type": CONTENT_TYPE, "x-amzn-ErrorType": code})


class FirehoseEmulator(Emulator):
    """`with FirehoseEmulator() as firehose:` serves on `firehose.url` (the `endpoint_url`)."""

    def __init__(self, stream_name: str = "traces") -> None:
        self.stream_name = stream_name
        self._lock = threading.Lock()
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.scripted: list[Reply] = []
        self.failing: Failing = lambda _data: None
        self.calls: list[list[bytes]] = []  # each PutRecordBatch's decoded records
        self.accepted: list[bytes] = []
        self.receiver.clear()

    def requests_for(self, operation: str) -> list[ReceivedRequest]:
        return [
            r
            for r in self.receiver.requests()
            if r.headers.get("x-amz-target") == TARGET_PREFIX + operation
        ]

    def _respond(self, request: ReceivedRequest) -> Reply:
        with self._lock:
            if self.scripted:
                return self.scripted.pop(0)
        target = request.headers.get("x-amz-target", "")
        payload = json.loads(request.body or b"{}")
        if target == TARGET_PREFIX + "DescribeDeliveryStream":
            return self._describe(payload)
        if target == TARGET_PREFIX + "PutRecordBatch":
            return self._put(payload)
        return aws_error(400, "UnknownOperationException", target)

    def _describe(self, payload: dict[str, Any]) -> Reply:
        name = payload.get("DeliveryStreamName")
        if name != self.stream_name:
            return aws_error(400, "ResourceNotFoundException", f"Firehose {name} not found.")
        description = {
            "DeliveryStreamName": name,
            "DeliveryStreamARN": f"arn:aws:firehose:us-east-1:123456789012:deliverystream/{name}",
            "DeliveryStreamStatus": "ACTIVE",
            "DeliveryStreamType": "DirectPut",
            "VersionId": "1",
            "Destinations": [],
            "HasMoreDestinations": False,
        }
        return Reply(
            200,
            json.dumps({"DeliveryStreamDescription": description}).encode(),
            {"Content-Type": CONTENT_TYPE},
        )

    def _put(self, payload: dict[str, Any]) -> Reply:
        if payload.get("DeliveryStreamName") != self.stream_name:
            return aws_error(400, "ResourceNotFoundException", "stream not found")
        records = [base64.b64decode(item["Data"]) for item in payload.get("Records", [])]
        if not 1 <= len(records) <= MAX_RECORDS:
            return aws_error(400, "InvalidArgumentException", f"{len(records)} records")
        if any(len(data) > MAX_RECORD_BYTES for data in records):
            return aws_error(400, "InvalidArgumentException", "a record is over 1000 KiB")
        if sum(len(data) for data in records) > MAX_CALL_BYTES:
            return aws_error(400, "InvalidArgumentException", "the call is over 4 MiB")
        answers: list[dict[str, str]] = []
        with self._lock:
            self.calls.append(records)
            for index, data in enumerate(records):
                failure = self.failing(data)
                if failure:
                    answers.append({"ErrorCode": failure[0], "ErrorMessage": failure[1]})
                else:
                    self.accepted.append(data)
                    answers.append({"RecordId": f"rec-{len(self.calls)}-{index}"})
        body = {
            "FailedPutCount": sum(1 for answer in answers if "ErrorCode" in answer),
            "Encrypted": False,
            "RequestResponses": answers,
        }
        return Reply(200, json.dumps(body).encode(), {"Content-Type": CONTENT_TYPE})
