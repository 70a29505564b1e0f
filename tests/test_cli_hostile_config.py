"""Hostile destination configs through the `broadcast` console script as a real process:
one line, exit status 2, naming the field; nothing saved."""

from __future__ import annotations

import json
import uuid

import pytest

from harness.samples import destination_configs
from tests.test_cli_authorization import ok, refused


@pytest.fixture
def owner(redis_server) -> str:
    return f"user:hostile{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize("port", ["65536", "0", "99999999999"])
@pytest.mark.parametrize(
    ("type_", "field"),
    [
        ("webhook", "url"),
        ("otel-collector", "endpoint"),
        ("langfuse", "base_url"),
        ("s3", "endpoint_url"),
    ],
)
def test_a_bad_port_is_one_line_naming_the_field(owner, type_, field, port):
    config = {**destination_configs("http://127.0.0.1")[type_], field: f"http://127.0.0.1:{port}/x"}
    line = refused(
        "destination",
        "add",
        "--owner",
        owner,
        "--type",
        type_,
        "--name",
        "n",
        "--config",
        json.dumps(config),
    )
    assert line == (
        f"broadcast: error: config field {field!r}: has an invalid port (must be 1 to 65535)"
    )
    assert ok("destination", "list", "--owner", owner) == []


def test_notification_url_with_a_bad_port(owner):
    line = refused("notify", "set", "--owner", owner, "--url", "https://example.com:65536/")
    assert line == "broadcast: error: --url: has an invalid port (must be 1 to 65535)"


def test_an_oversized_config_is_refused(owner, tmp_path):
    config = {**destination_configs("http://127.0.0.1")["webhook"]}
    config["headers"] = {f"X-Pad-{i}": "p" * 1000 for i in range(80)}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(config))
    line = refused(
        "destination",
        "add",
        "--owner",
        owner,
        "--type",
        "webhook",
        "--name",
        "n",
        "--config",
        f"@{path}",
    )
    assert line.startswith("broadcast: error: config is ")
    assert line.endswith("bytes; at most 65536 are allowed")
    assert ok("destination", "list", "--owner", owner) == []
