"""What holds for every destination type, old and new: Test Connection requests carry
`X-Test-Connection: true` and deliveries do not; OpenRouter's optional `headers` (secret)
go on every request, under the destination's own; every type is listed by
`broadcast types`, the management API's `/types` and its OpenAPI document, and the README.
"""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from marshmallow import ValidationError

from broadcast_engine.events import build_trace
from broadcast_interfaces.cli import main as cli
from destinations.base import DeliveryContext
from destinations.registry import destination_class, known_types
from destinations.transport import HttpTransport
from destinations.url_guard import NetworkPolicy
from harness.receiver import Reply
from harness.samples import chat_event, destination_configs

NEW_TYPES = {"posthog", "opik", "sentry", "raindrop", "ramp", "firehose"}
CONTEXT = DeliveryContext("dst_every", "user:u1", datetime(2026, 11, 23, tzinfo=UTC))
README = Path(__file__).resolve().parent.parent / "README.md"


def configured(type_: str, url: str) -> dict[str, Any]:
    config = destination_configs(url)[type_]
    return {**config, "headers": {**config.get("headers", {}), "X-Custom": "custom-1"}}


@pytest.mark.parametrize("type_", known_types())
def test_probes_are_marked_and_every_request_carries_the_custom_headers(
    type_: str, receiver: Any
) -> None:
    sink = receiver(lambda _r: Reply(200, b"{}"))
    cls = destination_class(type_)
    destination = cls(
        cls.config_schema().load(configured(type_, sink.url)),
        HttpTransport(NetworkPolicy(allow_private_networks=True)),
    )
    destination.test_connection(CONTEXT)
    probes = sink.requests()
    assert probes, f"{type_}: Test Connection sent nothing"
    for request in probes:
        assert request.headers.get("x-test-connection") == "true", (type_, request.path)
        assert request.headers.get("x-custom") == "custom-1", (type_, request.path)
    sink.clear()
    destination.deliver(build_trace(chat_event(1)), CONTEXT)
    deliveries = sink.requests()
    assert deliveries, f"{type_}: delivery sent nothing"
    for request in deliveries:
        assert "x-test-connection" not in request.headers, (type_, request.path)
        assert request.headers.get("x-custom") == "custom-1", (type_, request.path)


@pytest.mark.parametrize("type_", known_types())
def test_every_type_takes_secret_headers_and_refuses_transport_ones(type_: str) -> None:
    cls = destination_class(type_)
    assert "headers" in cls.secret_fields()
    schema = cls.config_schema()
    base = destination_configs("https://public.test")[type_]
    for name in ("Content-Length", "X-Test-Connection"):
        with pytest.raises(ValidationError, match="set by Broadcast"):
            schema.load({**base, "headers": {name: "1"}})
    with pytest.raises(ValidationError, match="no control character"):
        schema.load({**base, "headers": {"X-A": "v\r\nX-B: injected"}})


def test_a_destinations_own_header_wins_over_a_custom_one(receiver: Any) -> None:
    sink = receiver(lambda _r: Reply(200, b"{}"))
    cls = destination_class("braintrust")
    config = {
        "api_key": "bt_key",
        "project_id": "p1",
        "base_url": sink.url,
        "headers": {"authorization": "Bearer other", "X-Extra": "1"},
    }
    destination = cls(
        cls.config_schema().load(config), HttpTransport(NetworkPolicy(allow_private_networks=True))
    )
    destination.deliver(build_trace(chat_event(2)), CONTEXT)
    (request,) = sink.requests()
    assert request.headers["authorization"] == "Bearer bt_key"
    assert request.headers["x-extra"] == "1"


def test_broadcast_types_lists_every_type(service: Any) -> None:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert cli(["types", "--json"], service=service) == 0
    listed = json.loads(buffer.getvalue())
    assert NEW_TYPES <= set(listed)
    assert set(listed) == set(known_types())


def test_the_readme_table_has_every_type() -> None:
    table = {
        match.group(1)
        for match in re.finditer(r"^\| `([a-z0-9-]+)` \|", README.read_text(), re.MULTILINE)
    }
    assert set(known_types()) <= table
