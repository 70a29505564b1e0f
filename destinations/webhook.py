"""Webhook: the trace document to any URL, optionally signed with Standard Webhooks.

| what | wire |
| --- | --- |
| body | `{"type": "trace.completed", "timestamp": ISO, "data": <broadcast.trace/v1 document>}` |
| `format: otlp` body | OTLP JSON `{"resourceSpans": ...}`, as `otel-collector` sends it |
| `headers` config | sent as given (secret: masked on read, encrypted at rest) |
| `signing_secret` (`whsec_...`) | `webhook-id`, `webhook-timestamp`, `webhook-signature` headers |
| `webhook-id` | `msg_` + hash of (request id, destination id): the same on every retry |

Test Connection sends `{}` (`format: otlp`: an empty OTLP export) with
`X-Test-Connection: true` (signed when a secret is set) and expects a 2xx.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from marshmallow import ValidationError, fields, validate
from standardwebhooks.webhooks import Webhook

from destinations.base import (
    ConfigSchema,
    ConnectionCheck,
    DeliveryContext,
    HttpDestination,
    check_from_transport,
)
from destinations.config_fields import custom_headers_field, url_field
from destinations.document import trace_document
from destinations.ids import derived_hex
from destinations.json_body import compact_json
from destinations.otlp import otlp_json_body
from destinations.registry import register
from destinations.trace import Trace
from destinations.transport import HttpRequest

EVENT_TYPE = "trace.completed"
FORMAT_JSON, FORMAT_OTLP = "json", "otlp"
FORMATS = (FORMAT_JSON, FORMAT_OTLP)
EMPTY_OTLP = b'{"resourceSpans":[]}'
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "webhook-id", "webhook-timestamp", "webhook-signature"}
)


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
    """Content type, the user's headers, and the Standard Webhooks trio when a secret is set."""
    headers = {**config.get("headers", {}), "Content-Type": "application/json"}
    secret = config.get("signing_secret")
    if secret:
        headers["webhook-id"] = message_id
        headers["webhook-timestamp"] = str(int(now.timestamp()))
        headers["webhook-signature"] = Webhook(secret).sign(message_id, now, body.decode("utf-8"))
    return headers


@register
class WebhookDestination(HttpDestination):
    slug = "webhook"
    display_name = "Webhook"
    config_schema = WebhookConfig

    def build_request(self, trace: Trace, context: DeliveryContext) -> HttpRequest:
        if self.config.get("format") == FORMAT_OTLP:
            body = otlp_json_body(trace, context.destination_id)
        else:
            body = webhook_body(trace, context)
        headers = signed_headers(
            self.config, webhook_id(trace, context.destination_id), context.now, body
        )
        return HttpRequest(self.config["method"], self.config["url"], headers, body)

    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        body = EMPTY_OTLP if self.config.get("format") == FORMAT_OTLP else b"{}"
        message_id = "msg_" + derived_hex("connection-test", context.destination_id, nbytes=16)
        headers = signed_headers(self.config, message_id, context.now, body)
        headers["X-Test-Connection"] = "true"
        result = self.transport.send(
            HttpRequest(self.config["method"], self.config["url"], headers, body)
        )
        return check_from_transport(result, rejected_message="the endpoint rejected the request")
