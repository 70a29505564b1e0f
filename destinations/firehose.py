"""Amazon Data Firehose: one JSON record per request through `PutRecordBatch`.

| trace | Firehose |
| --- | --- |
| every request | one record: the `broadcast.trace/v1` document (as `webhook` and `s3` send |
|  | it; `document.py` has its table), compact JSON, terminated by `\\n` |
| `trace_id` (else the request id) | the document's `id`, for grouping downstream |
| request id | the document's `requestId`: the key to de-duplicate on downstream |

Firehose concatenates records into the objects it writes (S3, ...): the newline lets a
reader split them back (JSON Lines).

**At least once, no idempotency key.** Firehose has none: a record sent again (a retry
after a timeout whose request did arrive, a replay) is written again. Every retry sends
the same bytes (the document has no send-time fields), so downstream de-duplicates on
`requestId`.

Limits (Firehose's, fixed): at most 500 records and 4 MiB per call, 1,000 KiB per
record. A record over 1,000 KiB has its content truncated to fit, else it is
`PayloadTooLarge` (permanent). The 4 MiB are counted after base64 (as the records travel
in the JSON request), so a call never exceeds them whichever way AWS counts.

Outcomes: a call that fails as a whole goes by the outcome table (`ServiceUnavailable
Exception` / throttling / 5xx / no answer retryable; `AccessDeniedException`,
`UnrecognizedClientException`, `InvalidSignatureException`, expired or invalid tokens:
credentials rejected; `ResourceNotFoundException`, `InvalidArgumentException` and other
4xx permanent). A call that succeeds may still fail some records (`FailedPutCount` > 0):
each record's own `ErrorCode` settles its trace: `ServiceUnavailableException`,
`InternalFailure` and throttling are retryable (only those traces are sent again),
anything else permanent, with the code and message.

Config: `stream_name`, `region` (default `us-east-1`), `access_key_id`,
`secret_access_key` (secret), `session_token` (secret), `endpoint_url` (a VPC endpoint,
LocalStack, ...), `headers`. IAM: `firehose:PutRecordBatch` to deliver and
`firehose:DescribeDeliveryStream` for Test Connection, which describes the stream (it
must exist and not be deleting); the probe writes nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import botocore.exceptions
from marshmallow import fields, validate

from destinations.aws_clients import ClientCache
from destinations.base import (
    BatchLimits,
    ConfigSchema,
    ConnectionCheck,
    DeliveryContext,
    DeliveryResult,
    Destination,
    EncodedItem,
    ItemRefused,
    PayloadTooLarge,
    not_attempted,
    pack,
)
from destinations.budget import fit_to_budget
from destinations.config_fields import secret_field, url_field
from destinations.document import trace_document
from destinations.json_body import compact_json
from destinations.outcomes import Outcome, classify_status
from destinations.registry import register
from destinations.trace import Trace
from destinations.transport import added_headers
from destinations.url_guard import BlockedUrl, check_url

MAX_RECORDS = 500
MAX_RECORD_BYTES = 1000 * 1024
MAX_CALL_BYTES = 4 * 1024 * 1024
# Room for the JSON around the records (stream name, keys, brackets).
CALL_ENVELOPE_BYTES = 64 * 1024
AUTH_ERRORS = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignature",
        "InvalidClientTokenId",
        "MissingAuthenticationToken",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
    }
)
RETRYABLE_ERRORS = frozenset(
    {
        "ServiceUnavailableException",
        "InternalFailure",
        "ThrottlingException",
        "Throttling",
        "LimitExceededException",
        "RequestTimeout",
    }
)
_STREAM_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,64}$")
_CLIENTS = ClientCache("firehose")


class FirehoseConfig(ConfigSchema):
    stream_name = fields.String(
        required=True,
        validate=validate.Regexp(
            _STREAM_NAME, error="Must be a Firehose stream name (1-64 of a-z A-Z 0-9 _ . -)."
        ),
    )
    region = fields.String(
        load_default="us-east-1", validate=validate.Regexp(r"^[a-z]{2}(-[a-z]+)+-\d+$")
    )
    access_key_id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    secret_access_key = secret_field()
    session_token = fields.String(load_default=None, allow_none=True, metadata={"secret": True})
    endpoint_url = url_field(load_default=None, allow_none=True)


def record(trace: Trace, destination_id: str) -> bytes:
    """Pure: the record for one request, newline-terminated (see the module table)."""
    return compact_json(trace_document(trace, destination_id)) + b"\n"


def base64_size(size: int) -> int:
    """How many bytes `size` raw bytes take in the request (base64)."""
    return 4 * ((size + 2) // 3)


@register
class FirehoseDestination(Destination):
    slug = "firehose"
    display_name = "Amazon Data Firehose"
    config_schema = FirehoseConfig
    batch_limits = BatchLimits(
        max_items=MAX_RECORDS, max_bytes=MAX_CALL_BYTES - CALL_ENVELOPE_BYTES
    )

    def encode_item(self, trace: Trace, context: DeliveryContext) -> EncodedItem:
        """The record, content truncated to the record limit. Raises `PayloadTooLarge`."""
        data = fit_to_budget(trace, lambda t: record(t, context.destination_id), MAX_RECORD_BYTES)
        return EncodedItem(data, base64_size(len(data)))

    def deliver(self, trace: Trace, context: DeliveryContext) -> DeliveryResult:
        return self.deliver_batch([trace], context)[0]

    def deliver_batch(
        self, traces: Sequence[Trace], context: DeliveryContext
    ) -> list[DeliveryResult]:
        """`PutRecordBatch` calls within the limits; each trace settled by its record's
        answer. Stops at the first failure that concerns the destination."""
        results: dict[int, DeliveryResult] = {}
        items: list[tuple[int, EncodedItem]] = []
        for index, trace in enumerate(traces):
            try:
                items.append((index, self.encode_item(trace, context)))
            except PayloadTooLarge as exc:
                results[index] = _result(Outcome.PERMANENT, None, 0.0, f"payload too large: {exc}")
            except ItemRefused as exc:
                results[index] = _result(Outcome.PERMANENT, None, 0.0, str(exc))
        stopped: DeliveryResult | None = None
        for group in pack(items, self.batch_limits):
            indexes = [index for index, _ in group]
            if stopped is not None:
                results.update((index, not_attempted(stopped)) for index in indexes)
                continue
            answers = self.put_records([item.payload for _, item in group])
            results.update(zip(indexes, answers, strict=True))
            stopped = next((a for a in answers if a.concerns_destination), None)
        return [results[index] for index in range(len(traces))]

    def put_records(self, records: Sequence[bytes]) -> list[DeliveryResult]:
        """One `PutRecordBatch`; a result per record, in order. Never raises for AWS or
        network trouble."""
        started = time.perf_counter()
        try:
            response = self._call(
                "put_record_batch",
                DeliveryStreamName=self.config["stream_name"],
                Records=[{"Data": data} for data in records],
            )
        except _CallFailed as failed:
            return [failed.result(started)] * len(records)
        elapsed = _elapsed(started)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 200)
        answers = response.get("RequestResponses") or []
        if len(answers) != len(records):
            # Firehose aligns its answers with the records; anything else is not Firehose.
            error = f"{len(answers)} answers for {len(records)} records"
            return [_result(Outcome.RETRYABLE, status, elapsed, error)] * len(records)
        return [_record_result(answer, status, elapsed) for answer in answers]

    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        """Describe the stream (`firehose:DescribeDeliveryStream`): it must exist and not be
        deleting or failed."""
        started = time.perf_counter()
        name = self.config["stream_name"]
        try:
            response = self._call("describe_delivery_stream", DeliveryStreamName=name)
        except _CallFailed as failed:
            result = failed.result(started)
            message = result.error or "failed"
            if failed.code == "ResourceNotFoundException":
                message = f"no delivery stream {name!r} in {self.config['region']}"
            elif failed.code == "AccessDeniedException":
                message = (
                    "credentials rejected: Test Connection needs "
                    f"firehose:DescribeDeliveryStream ({result.error})"
                )
            elif result.outcome is Outcome.AUTH_FAILED:
                message = f"credentials rejected: {result.error}"
            return ConnectionCheck(result.outcome, message, result.status_code)
        description = response.get("DeliveryStreamDescription") or {}
        status = description.get("DeliveryStreamStatus")
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 200)
        if status in ("DELETING", "CREATING_FAILED", "DELETING_FAILED"):
            return ConnectionCheck(Outcome.PERMANENT, f"delivery stream {name!r} is {status}", code)
        return ConnectionCheck(
            Outcome.DELIVERED, f"delivery stream {name!r} {status or 'found'}", code
        )

    def _call(self, operation: str, **arguments: Any) -> dict[str, Any]:
        """One API call. Raises `_CallFailed` for every AWS or network failure."""
        endpoint = self.config.get("endpoint_url")
        try:
            if endpoint:
                check_url(endpoint, self.transport.policy)
            client = _CLIENTS.get(
                self.config,
                self.transport.timeouts,
                self.transport.policy,
                added_headers(self.transport),
            )
            response: dict[str, Any] = getattr(client, operation)(**arguments)
            return response
        except BlockedUrl as exc:
            raise _CallFailed(Outcome.PERMANENT, None, f"endpoint_url blocked: {exc}") from None
        except botocore.exceptions.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in AUTH_ERRORS:
                outcome = Outcome.AUTH_FAILED
            elif code in RETRYABLE_ERRORS:
                outcome = Outcome.RETRYABLE
            else:
                outcome = classify_status(status) if status else Outcome.RETRYABLE
            text = f"{code}: {error.get('Message', '')}".strip(": ")
            raise _CallFailed(outcome, status, f"Firehose {status} {text}", code) from None
        except botocore.exceptions.HTTPClientError as exc:
            cause = exc.kwargs.get("error")
            if isinstance(cause, BlockedUrl):
                raise _CallFailed(
                    Outcome.PERMANENT, None, f"endpoint_url blocked: {cause}"
                ) from None
            raise _CallFailed(
                Outcome.RETRYABLE, None, f"connection error: {type(exc).__name__}"
            ) from None
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise _CallFailed(
                Outcome.RETRYABLE, None, f"connection error: {type(exc).__name__}"
            ) from None


class _CallFailed(Exception):
    def __init__(self, outcome: Outcome, status: int | None, error: str, code: str = "") -> None:
        super().__init__(error)
        self.outcome, self.status, self.error, self.code = outcome, status, error, code

    def result(self, started: float) -> DeliveryResult:
        return _result(self.outcome, self.status, _elapsed(started), self.error)


def _record_result(answer: dict[str, Any], status: int, elapsed: float) -> DeliveryResult:
    """A record's own answer inside a successful call."""
    code = answer.get("ErrorCode")
    if not code:
        return _result(Outcome.DELIVERED, status, elapsed, None)
    outcome = Outcome.RETRYABLE if code in RETRYABLE_ERRORS else Outcome.PERMANENT
    return _result(outcome, status, elapsed, f"record {code}: {answer.get('ErrorMessage', '')}")


def _result(
    outcome: Outcome, status: int | None, duration_ms: float, error: str | None
) -> DeliveryResult:
    return DeliveryResult(outcome=outcome, status_code=status, duration_ms=duration_ms, error=error)


def _elapsed(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
