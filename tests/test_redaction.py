"""Redaction of credentials in every form a destination sends them.

Each destination type sends real requests (Test Connection and a delivery) to a local
receiver; whatever went over the wire (headers, URL) is echoed back the way vendors echo
it in their errors, in several encodings, and `redact` must leave no credential in any
raw or derived form.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from broadcast_engine.events import build_trace
from destinations.base import DeliveryContext
from destinations.registry import destination_class, known_types
from destinations.transport import HttpTransport
from destinations.url_guard import NetworkPolicy
from harness.receiver import ReceivedRequest, Reply
from harness.samples import chat_event, destination_configs
from settings.redaction import REDACTED, redact

SECRET = "sk-lf-SeCrEt0123456789abcdef"
OTHER = "pk-lf-public0123456789"


def echoes(request: ReceivedRequest) -> list[str]:
    """What a vendor might put in an error about this request, in several encodings."""
    pairs = [(name, value) for name, value in request.headers.items()]
    pairs.append(("url", request.path))
    # PostHog's key travels in the JSON body, and a vendor may quote the body it refused.
    pairs.append(("body", request.body.decode("utf-8", "replace")))
    texts = [json.dumps(dict(pairs)), "\n".join(f"{n}: {v}" for n, v in pairs)]
    for _name, value in pairs:
        texts += [
            f"invalid credential {value}",
            f"?auth={quote(value, safe='')}&x=1",
            f"form auth={quote_plus(value)}",
            json.dumps({"error": {"header": value}}),
            f"hex {value.encode().hex()} / {value.encode().hex().upper()}",
        ]
        scheme, _, token = value.partition(" ")
        if token:
            texts.append(f"token {token!r} is not valid for {scheme}")
    return texts


def credential_forms(secrets: dict[str, Any], request_headers: dict[str, str]) -> set[str]:
    """Raw and derived forms that must not survive redaction."""
    values: list[str] = []
    for value in secrets.values():
        values += list(value.values()) if isinstance(value, dict) else [value]
    forms = set()
    for value in filter(None, values):
        core = value.removeprefix("whsec_")
        forms |= {value, core, base64.b64encode(core.encode()).decode().rstrip("=")}
        forms |= {quote(value, safe=""), core.encode().hex(), core.encode().hex().upper()}
    for name, value in request_headers.items():
        if name in (
            "authorization",
            "dd-api-key",
            "x-api-key",
            "wandb-api-key",
            "api-key",
            "x-token",
            "webhook-signature",
        ):
            forms.add(value)
            forms.add(value.partition(" ")[2] or value)
    sentry = request_headers.get("x-sentry-auth", "")
    if "sentry_key=" in sentry:
        forms.add(sentry.split("sentry_key=", 1)[1].split(",", 1)[0])
    if "authorization" in request_headers and "Signature=" in request_headers["authorization"]:
        forms.add(request_headers["authorization"].rsplit("Signature=", 1)[1])
    return {form for form in forms if len(form) >= 8}


@pytest.mark.parametrize("type_", known_types())
def test_every_credential_form_a_destination_sends_is_redacted(type_, receiver):
    sink = receiver(lambda _r: Reply(200, b"{}"))
    cls = destination_class(type_)
    config = cls.config_schema().load(destination_configs(sink.url, SECRET)[type_])
    destination = cls(config, HttpTransport(NetworkPolicy(allow_private_networks=True)))
    context = DeliveryContext("dst_1", "user:u1", datetime.now(UTC))
    destination.test_connection(context)
    destination.deliver(build_trace(chat_event(1)), context)
    requests = sink.requests()
    assert requests, f"{type_} sent nothing"
    secrets = {name: config[name] for name in cls.secret_fields() if config.get(name)}
    for request in requests:
        forms = credential_forms(secrets, dict(request.headers))
        for text in echoes(request):
            cleaned = redact(text, secrets)
            for form in forms:
                assert form not in cleaned, (type_, form, cleaned)
    sent = "\n".join("\n".join(echoes(r)) for r in requests)
    if type_ != "bigquery":  # its key never travels: only a signed assertion, in a body
        assert REDACTED in redact(sent, secrets)


@pytest.mark.parametrize(
    ("text", "secrets", "kept"),
    [
        (
            "Basic " + base64.b64encode(f"{OTHER}:{SECRET}".encode()).decode(),
            {"s": SECRET},
            "Basic ",
        ),
        (
            "x " + base64.urlsafe_b64encode(f"{SECRET}:x".encode()).decode().rstrip("="),
            {"s": SECRET},
            "x ",
        ),
        (
            "Basic%20" + quote(base64.b64encode(f"a:{SECRET}".encode()).decode()),
            {"s": SECRET},
            "Basic%",
        ),
        (f"https://h/v1?api_key={quote(SECRET + '/+')}", {"s": SECRET + "/+"}, "api_key="),
        ('{"key": "' + json.dumps('q"' + SECRET)[1:-1] + '"}', {"s": 'q"' + SECRET}, '"key"'),
        (f"X-Amz-Signature={'ab' * 32}&X-Amz-Date=1", {}, "X-Amz-Date=1"),
        ("webhook-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=", {}, "webhook-"),
    ],
    ids=["basic-pair", "urlsafe-unpadded", "url-encoded-basic", "query", "json", "sigv4", "whsig"],
)
def test_derived_forms(text, secrets, kept):
    cleaned = redact(text, secrets)
    assert REDACTED in cleaned and kept in cleaned
    assert SECRET not in cleaned


def test_ordinary_text_is_left_alone():
    text = "HTTP 400: invalid project_id 'proj_123' (see https://docs.example.com/errors)"
    assert redact(text, {"api_key": SECRET, "short": "abc"}) == text


def test_hex_forms_of_a_secret_are_redacted():
    raw = SECRET.encode()
    text = f"echo {raw.hex()} and {raw.hex().upper()} and {b'Bearer '.hex()}{raw.hex()}"
    redacted = redact(text, {"secret_key": SECRET})
    assert raw.hex() not in redacted and raw.hex().upper() not in redacted
    assert redacted.count(REDACTED) == 3
