"""S3 and S3-compatible stores: one JSON trace document per request, through boto3.

| what | where |
| --- | --- |
| object key | `{path_template}/{requestId}-{timestamp}.json` (start, unix seconds) |
| template variables | `{date}` (YYYY-MM-DD), `{year}`, `{month}`, `{day}` (UTC start), |
|  | `{apiKeyName}` (the key id, or `keyless`) |
| body | the `broadcast.trace/v1` document; its `id` groups requests by `trace_id` |

The key is deterministic, so a retry overwrites the same object instead of adding one.
The request id (unique per request) names the object, not the grouping `trace_id`, so two
requests of one trace never overwrite each other. Test Connection writes a small object
under the rendered path: the one call a PutObject-only policy is sure to allow.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
from marshmallow import ValidationError, fields, validate

from destinations.base import (
    ConfigSchema,
    ConnectionCheck,
    DeliveryContext,
    DeliveryResult,
    Destination,
)
from destinations.config_fields import secret_field, url_field
from destinations.document import trace_document
from destinations.json_body import compact_json
from destinations.outcomes import Outcome, classify_status
from destinations.registry import register
from destinations.trace import Trace
from destinations.url_guard import BlockedUrl, check_url

TEMPLATE_VARIABLES = frozenset({"date", "year", "month", "day", "apiKeyName"})
_VARIABLE = re.compile(r"\{([^{}]*)\}")
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._=-]")
CLIENT_CACHE_SIZE = 64
# Only the transport-level retry layer retries: boto3's own retries would hide attempts.
_BOTO_CONFIG = dict(retries={"max_attempts": 1, "mode": "standard"})


def _validate_template(value: str) -> None:
    unknown = sorted(set(_VARIABLE.findall(value)) - TEMPLATE_VARIABLES)
    if unknown:
        raise ValidationError(f"Unknown variable(s) {', '.join(unknown)}.")
    if value.startswith("/"):
        raise ValidationError("Must not start with '/'.")


class S3Config(ConfigSchema):
    bucket = fields.String(required=True, validate=validate.Length(min=3, max=63))
    region = fields.String(load_default="us-east-1")
    endpoint_url = url_field(load_default=None, allow_none=True)
    access_key_id = fields.String(required=True, validate=validate.Length(min=1))
    secret_access_key = secret_field()
    session_token = fields.String(load_default=None, allow_none=True, metadata={"secret": True})
    path_template = fields.String(
        load_default="broadcast-traces/{date}", validate=_validate_template
    )


def render_path(template: str, moment: datetime, api_key_name: str) -> str:
    values = {
        "date": moment.strftime("%Y-%m-%d"),
        "year": moment.strftime("%Y"),
        "month": moment.strftime("%m"),
        "day": moment.strftime("%d"),
        "apiKeyName": _UNSAFE_KEY_CHARS.sub("_", api_key_name),
    }
    return _VARIABLE.sub(lambda match: values[match.group(1)], template).strip("/")


def object_key(trace: Trace, template: str) -> str:
    """Pure and deterministic: where this trace's document goes."""
    path = render_path(template, trace.started_at, trace.api_key_id or "keyless")
    name = f"{_UNSAFE_KEY_CHARS.sub('_', trace.request_id)}-{int(trace.started_at.timestamp())}"
    return f"{path}/{name}.json" if path else f"{name}.json"


def object_body(trace: Trace, destination_id: str) -> bytes:
    document = trace_document(trace, destination_id)
    return compact_json(document)


class _ClientCache:
    """boto3 clients are costly to build and thread-safe to share: keep a few per process.

    Keyed by a hash of the full config, so changed credentials get a new client.
    """

    def __init__(self, size: int) -> None:
        self._clients: OrderedDict[str, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, config: Mapping[str, Any], timeouts: tuple[float, float]) -> Any:
        fingerprint = hashlib.sha256(
            json.dumps([config, timeouts], sort_keys=True, default=str).encode()
        ).hexdigest()
        with self._lock:
            client = self._clients.get(fingerprint)
            if client is not None:
                self._clients.move_to_end(fingerprint)
                return client
        client = boto3.session.Session().client(
            "s3",
            region_name=config["region"],
            endpoint_url=config.get("endpoint_url"),
            aws_access_key_id=config["access_key_id"],
            aws_secret_access_key=config["secret_access_key"],
            aws_session_token=config.get("session_token"),
            config=botocore.config.Config(
                connect_timeout=timeouts[0], read_timeout=timeouts[1], **_BOTO_CONFIG
            ),
        )
        with self._lock:
            self._clients[fingerprint] = client
            while len(self._clients) > self._size:
                self._clients.popitem(last=False)
        return client


_CLIENTS = _ClientCache(CLIENT_CACHE_SIZE)


@register
class S3Destination(Destination):
    slug = "s3"
    display_name = "Amazon S3 / S3-compatible"
    config_schema = S3Config

    def deliver(self, trace: Trace, context: DeliveryContext) -> DeliveryResult:
        return self._put(
            object_key(trace, self.config["path_template"]),
            object_body(trace, context.destination_id),
        )

    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        path = render_path(self.config["path_template"], context.now, "connection-test")
        key = (
            f"{path}/_broadcast_connection_test.json" if path else "_broadcast_connection_test.json"
        )
        result = self._put(key, b'{"test": true}')
        if result.outcome is Outcome.DELIVERED:
            return ConnectionCheck(result.outcome, "write access ok", result.status_code)
        if result.outcome is Outcome.AUTH_FAILED:
            return ConnectionCheck(
                result.outcome, f"credentials rejected: {result.error}", result.status_code
            )
        return ConnectionCheck(result.outcome, result.error or "failed", result.status_code)

    def _put(self, key: str, body: bytes) -> DeliveryResult:
        started = time.perf_counter()
        endpoint = self.config.get("endpoint_url")
        try:
            if endpoint:
                # Not pinned like the HTTP transport (botocore owns its connections); checked
                # right before each call instead.
                check_url(endpoint, self.transport.policy)
            client = _CLIENTS.get(self.config, self.transport.timeouts)
            response = client.put_object(
                Bucket=self.config["bucket"], Key=key, Body=body, ContentType="application/json"
            )
        except BlockedUrl as exc:
            return self._result(started, Outcome.PERMANENT, None, f"endpoint_url blocked: {exc}")
        except botocore.exceptions.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            error = exc.response.get("Error", {})
            code = error.get("Code", "")
            outcome = classify_status(status) if status else Outcome.RETRYABLE
            if code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
                outcome = Outcome.PERMANENT  # wrong region: retrying never helps
            text = f"{code}: {error.get('Message', '')}".strip(": ")
            return self._result(started, outcome, status, f"S3 {status} {text}")
        except (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ReadTimeoutError,
            botocore.exceptions.ConnectionClosedError,
            OSError,
        ) as exc:
            return self._result(
                started, Outcome.RETRYABLE, None, f"connection error: {type(exc).__name__}"
            )
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 200)
        return self._result(started, Outcome.DELIVERED, status, None)

    @staticmethod
    def _result(
        started: float, outcome: Outcome, status: int | None, error: str | None
    ) -> DeliveryResult:
        return DeliveryResult(
            outcome=outcome,
            status_code=status,
            duration_ms=(time.perf_counter() - started) * 1000.0,
            error=error,
        )
