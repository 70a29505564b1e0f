"""Webhook: the trace document to any URL, optionally signed with Standard Webhooks.

| what | wire |
| --- | --- |
| body | `{"type": "trace.completed", "timestamp": ISO, "data": <broadcast.trace/v1 document>}` |
| `format: otlp` body | OTLP JSON `{"resourceSpans": ...}`, as `otel-collector` sends it |
| `headers` config | sent as given (secret: masked on read, encrypted at rest) |
| `signing_secret` (`whsec_...`) | `webhook-timestamp`, `webhook-signature` headers |
| `webhook-id` (always, signed or not) | `msg_` + hash of (request id, destination id): the same |
|  | on every retry, so a receiver can de-duplicate without a signing secret |
| `max_body_bytes` (default 5 MiB) | content truncated to fit, else a permanent `PayloadTooLarge` |
| `batch_size` > 1 (opt-in) | `{"type": "trace.batch", "timestamp": ISO, "data": [<doc>, ...]}` |

With `batch_size` above 1, one request carries up to that many traces when several wait
(a trace never waits for a batch to fill: alone, it goes out alone, in the batch format).
The batch's `webhook-id` is derived from its request ids; de-duplicate each document by
its own `requestId` (a retried batch may be cut differently). `format: otlp` batches are
one OTLP export with every trace's spans.

Test Connection sends `{}` (`format: otlp`: one span marked `broadcast.connection_test`,
see `otlp/exporter.py`) with `X-Test-Connection: true` (signed when a secret is set) and
expects a 2xx.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from marshmallow import ValidationError, fields, validate
from standardwebhooks.webhooks import Webhook

from destinations.base import (
    BatchLimits,
    ConfigSchema,
    ConnectionCheck,
    DeliveryContext,
    EncodedItem,
    HttpDestination,
    check_from_transport,
)
from destinations.budget import fit_to_budget
from destinations.config_fields import custom_headers_field, url_field
from destinations.document import TraceDocument, trace_document
from destinations.ids import derived_hex
from destinations.json_body import compact_json
from destinations.otlp import otlp_json_body
from destinations.otlp.encoding import Encoding, encode, merge_bodies
from destinations.otlp.spans import connection_test_export
from destinations.registry import register
from destinations.trace import Trace
from destinations.transport import HttpRequest, HttpTransport

EVENT_TYPE = "trace.completed"
BATCH_EVENT_TYPE = "trace.batch"
MAX_BATCH_SIZE = 500
MAX_BATCH_BYTES = 8 * 1024 * 1024
FORMAT_JSON, FORMAT_OTLP = "json", "otlp"
FORMATS = (FORMAT_JSON, FORMAT_OTLP)
DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
MIN_BODY_BYTES = 16 * 1024
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "webhook-id", "webhook-timestamp", "webhook-signature"}
) | {"x-test-connection"}  # marks Test Connection's probes only


def _validate_signing_secret(value: str) -> None:
    if not value.startswith("whsec_"):
        raise ValidationError("Must start with 'whsec_'.")
    try:
        raw = base64.b64decode(value[len("whsec_") :] + "==", validate=False)
    except (binascii.Error, ValueError):
        raise ValidationError("Must be whsec_ followed by base64.") from None
    if not 24 <= len(raw) <= 64:
        raise ValidationError("Must encode 24 to 64 random bytes.")


class WebhookConfig(ConfigSchema):
    url = url_field(required=True)
    method = fields.String(load_default="POST", validate=validate.OneOf(["POST", "PUT"]))
    format = fields.String(load_default=FORMAT_JSON, validate=validate.OneOf(FORMATS))
    headers = custom_headers_field(RESERVED_HEADERS)
    signing_secret = fields.String(
        load_default=None,
        allow_none=True,
        validate=_validate_signing_secret,
        metadata={"secret": True},
    )
    batch_size = fields.Integer(
        load_default=1, strict=True, validate=validate.Range(min=1, max=MAX_BATCH_SIZE)
    )
    # What the receiver accepts: many servers refuse bodies above a few MB with 413.
    max_body_bytes = fields.Integer(
        load_default=DEFAULT_MAX_BODY_BYTES,
        strict=True,
        validate=validate.Range(min=MIN_BODY_BYTES, max=MAX_BATCH_BYTES),
    )


def webhook_id(trace: Trace, destination_id: str) -> str:
    return "msg_" + derived_hex(trace.request_id, destination_id, "webhook", nbytes=16)


def webhook_body(trace: Trace, context: DeliveryContext) -> bytes:
    """Pure: the JSON body for one trace."""
    envelope = {
        "type": EVENT_TYPE,
        "timestamp": context.now.isoformat().replace("+00:00", "Z"),
        "data": trace_document(trace, context.destination_id),
    }
    return compact_json(envelope)


def signed_headers(
    config: Mapping[str, Any], message_id: str, now: datetime, body: bytes
) -> dict[str, str]:
    """Content type, the user's headers, `webhook-id` (the de-duplication id, always) and
    the Standard Webhooks timestamp and signature when a secret is set."""
    headers = {
        **config.get("headers", {}),
        "Content-Type": "application/json",
        "webhook-id": message_id,
    }
    secret = config.get("signing_secret")
    if secret:
        headers["webhook-timestamp"] = str(int(now.timestamp()))
        headers["webhook-signature"] = Webhook(secret).sign(message_id, now, body.decode("utf-8"))
    return headers


def batch_body(documents: list[TraceDocument], context: DeliveryContext) -> bytes:
    """Pure: the opt-in batch format, a list of trace documents in one envelope."""
    envelope = {
        "type": BATCH_EVENT_TYPE,
        "timestamp": context.now.isoformat().replace("+00:00", "Z"),
        "data": documents,
    }
    return compact_json(envelope)


@register
class WebhookDestination(HttpDestination):
    slug = "webhook"
    display_name = "Webhook"
    config_schema = WebhookConfig

    def __init__(self, config: Mapping[str, Any], transport: HttpTransport) -> None:
        super().__init__(config, transport)
        size = int(config.get("batch_size") or 1)
        self.batch_limits = BatchLimits(size, MAX_BATCH_BYTES)

    def encode_item(self, trace: Trace, context: DeliveryContext) -> EncodedItem:
        if self.batch_limits.max_items == 1:
            return super().encode_item(trace, context)
        if self.config.get("format") == FORMAT_OTLP:
            body = otlp_json_body(trace, context.destination_id)
            return EncodedItem((trace.request_id, body), len(body))
        document = trace_document(trace, context.destination_id)
        return EncodedItem((trace.request_id, document), len(compact_json(document)))

    def batch_request(self, payloads: Sequence[Any], context: DeliveryContext) -> HttpRequest:
        if self.batch_limits.max_items == 1:
            return super().batch_request(payloads, context)
        request_ids = [request_id for request_id, _ in payloads]
        if self.config.get("format") == FORMAT_OTLP:
            body = merge_bodies([part for _, part in payloads], Encoding.JSON)
        else:
            body = batch_body([document for _, document in payloads], context)
        message_id = "msg_" + derived_hex(*sorted(request_ids), context.destination_id, nbytes=16)
        headers = signed_headers(self.config, message_id, context.now, body)
        return HttpRequest(self.config["method"], self.config["url"], headers, body)

    def build_request(self, trace: Trace, context: DeliveryContext) -> HttpRequest:
        """Pure. Raises `PayloadTooLarge` when even truncated content exceeds
        `max_body_bytes` (permanent for the trace, with the sizes in the reason)."""
        otlp = self.config.get("format") == FORMAT_OTLP

        def body_of(candidate: Trace) -> bytes:
            if otlp:
                return otlp_json_body(candidate, context.destination_id)
            return webhook_body(candidate, context)

        limit = int(self.config.get("max_body_bytes") or DEFAULT_MAX_BODY_BYTES)
        body = fit_to_budget(trace, body_of, limit)
        headers = signed_headers(
            self.config, webhook_id(trace, context.destination_id), context.now, body
        )
        return HttpRequest(self.config["method"], self.config["url"], headers, body)

    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        # `format: otlp`: the OTLP destinations' one marked span, as some receivers answer
        # 400 to an export without spans.
        otlp = self.config.get("format") == FORMAT_OTLP
        body = encode(connection_test_export(context), Encoding.JSON) if otlp else b"{}"
        message_id = "msg_" + derived_hex("connection-test", context.destination_id, nbytes=16)
        headers = signed_headers(self.config, message_id, context.now, body)
        headers["X-Test-Connection"] = "true"
        result = self.transport.send(
            HttpRequest(self.config["method"], self.config["url"], headers, body)
        )
        return check_from_transport(result, rejected_message="the endpoint rejected the request")
