"""S3 and S3-compatible stores: one JSON trace document per request, through boto3.

| what | where |
| --- | --- |
| object key | `{path_template}/{name}.json` |
| `object_name: request` (default) | name `{requestId}-{timestamp}` (start, unix seconds) |
| `object_name: trace` | OpenRouter's `{traceId}-{timestamp}`: the `trace_id` (else the request |
|  | id) and the start in unix **milliseconds** (requests of one trace must not collide) |
| template variables (OpenRouter's) | `{prefix}` (config `prefix`), `{date}` (YYYY-MM-DD), |
|  | `{year}`, `{month}`, `{day}` (UTC start), `{apiKeyName}` (key name, else id, else `keyless`) |
| body | the `broadcast.trace/v1` document; its `id` groups requests by `trace_id` |

The key is deterministic, so a retry overwrites the same object instead of adding one.
With `object_name: request` the request id (unique per request) names the object, so two
requests of one trace never overwrite each other. Test Connection writes a small object
under the rendered path (the one call a PutObject-only policy is sure to allow), then
removes it; a policy without DeleteObject still passes, and the message names the object
left behind. boto3 clients come from `aws_clients` (cached, pinned, custom `headers` and
`X-Test-Connection` added before signing).
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

import botocore.exceptions
from marshmallow import ValidationError, fields, validate

from destinations.aws_clients import ClientCache
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
from destinations.transport import added_headers
from destinations.url_guard import BlockedUrl, check_url

TEMPLATE_VARIABLES = frozenset({"prefix", "date", "year", "month", "day", "apiKeyName"})
DEFAULT_PREFIX = "broadcast-traces"
OBJECT_NAMES = ("request", "trace")
PROBE_NAME = "_broadcast_connection_test.json"
_VARIABLE = re.compile(r"\{([^{}]*)\}")
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._=-]")


def _validate_template(value: str) -> None:
    unknown = sorted(set(_VARIABLE.findall(value)) - TEMPLATE_VARIABLES)
    if unknown:
        raise ValidationError(f"Unknown variable(s) {', '.join(unknown)}.")
    if value.startswith("/"):
        raise ValidationError("Must not start with '/'.")


# What botocore accepts for a bucket (`botocore.handlers.VALID_BUCKET`, S3-compatible
# stores included) and a region (`botocore.utils.validate_region_name`): checked on save,
# rather than raised by botocore as ParamValidationError at the first request.
_BUCKET = validate.Regexp(
    r"^[a-zA-Z0-9.\-_]{3,63}\Z", error="Must be 3 to 63 letters, digits, '.', '-' or '_'."
)
_REGION = validate.Regexp(
    r"^(?![0-9]+\Z)(?!-)[a-zA-Z0-9-]{1,63}(?<!-)\Z",
    error="Must be a region name: letters, digits and inner '-' (e.g. us-east-1).",
)


class S3Config(ConfigSchema):
    bucket = fields.String(required=True, validate=_BUCKET)
    region = fields.String(load_default="us-east-1", validate=_REGION)
    endpoint_url = url_field(load_default=None, allow_none=True)
    access_key_id = fields.String(required=True, validate=validate.Length(min=1))
    secret_access_key = secret_field()
    session_token = fields.String(load_default=None, allow_none=True, metadata={"secret": True})
    path_template = fields.String(load_default="{prefix}/{date}", validate=_validate_template)
    prefix = fields.String(load_default=DEFAULT_PREFIX, validate=validate.Length(max=256))
    object_name = fields.String(load_default="request", validate=validate.OneOf(OBJECT_NAMES))


def render_path(
    template: str, moment: datetime, api_key_name: str, prefix: str = DEFAULT_PREFIX
) -> str:
    """The object's folder: `template` with OpenRouter's variables filled in."""
    values = {
        "prefix": prefix.strip("/"),
        "date": moment.strftime("%Y-%m-%d"),
        "year": moment.strftime("%Y"),
        "month": moment.strftime("%m"),
        "day": moment.strftime("%d"),
        "apiKeyName": _UNSAFE_KEY_CHARS.sub("_", api_key_name),
    }
    return _VARIABLE.sub(lambda match: values[match.group(1)], template).strip("/")


def object_key(
    trace: Trace, template: str, prefix: str = DEFAULT_PREFIX, object_name: str = "request"
) -> str:
    """Pure and deterministic: where this trace's document goes (see the module table)."""
    key_name = trace.api_key_name or trace.api_key_id or "keyless"
    path = render_path(template, trace.started_at, key_name, prefix)
    if object_name == "trace":
        millis = int(trace.started_at.timestamp() * 1000)
        name = f"{_UNSAFE_KEY_CHARS.sub('_', trace.grouping_id)}-{millis}"
    else:
        seconds = int(trace.started_at.timestamp())
        name = f"{_UNSAFE_KEY_CHARS.sub('_', trace.request_id)}-{seconds}"
    return f"{path}/{name}.json" if path else f"{name}.json"


def object_body(trace: Trace, destination_id: str) -> bytes:
    document = trace_document(trace, destination_id)
    return compact_json(document)


_CLIENTS = ClientCache("s3")


@register
class S3Destination(Destination):
    slug = "s3"
    display_name = "Amazon S3 / S3-compatible"
    config_schema = S3Config

    def deliver(self, trace: Trace, context: DeliveryContext) -> DeliveryResult:
        key = object_key(
            trace,
            self.config["path_template"],
            self.config.get("prefix", DEFAULT_PREFIX),
            self.config.get("object_name", "request"),
        )
        return self._put(key, object_body(trace, context.destination_id))

    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        """Write a probe object under the rendered path, then remove it."""
        path = render_path(
            self.config["path_template"],
            context.now,
            "connection-test",
            self.config.get("prefix", DEFAULT_PREFIX),
        )
        key = f"{path}/{PROBE_NAME}" if path else PROBE_NAME
        result = self._put(key, b'{"test": true}')
        if result.outcome is Outcome.DELIVERED:
            if self._delete(key):
                return ConnectionCheck(result.outcome, "write access ok", result.status_code)
            return ConnectionCheck(
                result.outcome,
                f"write access ok; the probe object {key} stays (no permission to delete it)",
                result.status_code,
            )
        if result.outcome is Outcome.AUTH_FAILED:
            return ConnectionCheck(
                result.outcome, f"credentials rejected: {result.error}", result.status_code
            )
        return ConnectionCheck(result.outcome, result.error or "failed", result.status_code)

    def _delete(self, key: str) -> bool:
        """Remove the probe object; False when the store refused or could not be reached."""
        try:
            client = self._client()
            client.delete_object(Bucket=self.config["bucket"], Key=key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False
        return True

    def _put(self, key: str, body: bytes) -> DeliveryResult:
        started = time.perf_counter()
        endpoint = self.config.get("endpoint_url")
        try:
            if endpoint:
                # Refused early with a clear reason; the connection itself is pinned too
                # (`_pin_connections`).
                check_url(endpoint, self.transport.policy)
            client = self._client()
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
        except botocore.exceptions.HTTPClientError as exc:
            # botocore wraps what the pinned connection raised when it refused the address.
            cause = exc.kwargs.get("error")
            if isinstance(cause, BlockedUrl):
                return self._result(
                    started, Outcome.PERMANENT, None, f"endpoint_url blocked: {cause}"
                )
            return self._result(
                started, Outcome.RETRYABLE, None, f"connection error: {type(exc).__name__}"
            )
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 200)
        return self._result(started, Outcome.DELIVERED, status, None)

    def _client(self) -> Any:
        """The cached client; its requests carry what the transport adds (custom `headers`,
        and `X-Test-Connection: true` during Test Connection)."""
        return _CLIENTS.get(
            self.config,
            self.transport.timeouts,
            self.transport.policy,
            added_headers(self.transport),
        )

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
