"""Every OTLP destination against a real local server that emulates its vendor endpoint:
auth headers, encodings, gzip, outcomes (429 + Retry-After, 400, 401, 5xx, partial
success), byte budget and Test Connection."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from broadcast_engine.events import build_trace
from destinations.base import DeliveryContext, Destination
from destinations.budget import truncation_marker
from destinations.otlp.encoding import Encoding, parse
from destinations.otlp.spans import CONNECTION_TEST_NAME
from destinations.outcomes import Outcome
from destinations.registry import destination_class
from destinations.transport import HttpTransport
from destinations.url_guard import NetworkPolicy
from harness.receiver import ReceivedRequest, Receiver, Reply, always
from harness.samples import chat_event
from tests.emulators.otlp_receiver import (
    ALL_ENCODINGS,
    OtlpEmulator,
    all_spans,
    attribute_dict,
    success,
)

CONTEXT = DeliveryContext(
    destination_id="dst_outcomes", owner="user:user_demo", now=datetime(2026, 11, 23, tzinfo=UTC)
)
TRACE = build_trace(chat_event(1, trace={"trace_name": "T", "span_name": "S"}))


@dataclass(frozen=True)
class Vendor:
    """How one vendor is emulated and configured against the emulator at `base`."""

    slug: str
    traces_path: str
    headers: dict[str, str]  # what the vendor requires, as sent for `config`
    config: Callable[[str], dict[str, Any]]  # base URL → config
    bad_config: Callable[[str], dict[str, Any]]  # base URL → config with a wrong credential
    encodings: frozenset[Encoding] = ALL_ENCODINGS
    read_paths: tuple[str, ...] = ()
    gzip: bool = True
    also_sent: dict[str, str] = field(default_factory=dict)  # checked, not required


def _sentry(base: str, key: str) -> dict[str, str]:
    """A Sentry config at `base`: the DSN and the OTLP endpoint of project 456."""
    return {
        "otlp_endpoint": base + "/api/456/integration/otlp/v1/traces",
        "dsn": base.replace("://", f"://{key}@") + "/456",
    }


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


VENDORS = [
    Vendor(
        "otel-collector",
        "/v1/traces",
        {"authorization": "Bearer tok"},
        lambda base: {
            "endpoint": base + "/v1/traces",
            "headers": {"Authorization": "Bearer tok"},
            "compression": "gzip",
        },
        lambda base: {"endpoint": base + "/v1/traces", "headers": {"Authorization": "Bearer no"}},
    ),
    Vendor(
        "phoenix",
        "/v1/traces",
        {"authorization": "Bearer px"},
        lambda base: {"endpoint": base, "api_key": "px", "project_name": "p"},
        lambda base: {"endpoint": base, "api_key": "wrong", "project_name": "p"},
        encodings=frozenset({Encoding.PROTOBUF}),
        read_paths=("/v1/projects",),
    ),
    Vendor(
        "arize",
        "/v1/traces",
        {"authorization": "ak", "arize-space-id": "space", "arize-interface": "otel"},
        lambda base: {"api_key": "ak", "space_key": "space", "model_id": "m", "base_url": base},
        lambda base: {"api_key": "bad", "space_key": "space", "model_id": "m", "base_url": base},
        encodings=frozenset({Encoding.PROTOBUF}),
    ),
    Vendor(
        "langsmith",
        "/otel/v1/traces",
        {"x-api-key": "lsv2_pt_k"},
        lambda base: {
            "api_key": "lsv2_pt_k",
            "project": "proj",
            "endpoint": base,
            "workspace_id": "ws",
        },
        lambda base: {"api_key": "lsv2_pt_bad", "project": "proj", "endpoint": base},
        read_paths=("/sessions",),
        gzip=False,
        also_sent={"langsmith-project": "proj", "x-tenant-id": "ws"},
    ),
    Vendor(
        "weave",
        "/otel/v1/traces",
        {"wandb-api-key": "wk"},
        lambda base: {"api_key": "wk", "entity": "team", "project": "proj", "base_url": base},
        lambda base: {"api_key": "bad", "entity": "team", "project": "proj", "base_url": base},
        encodings=frozenset({Encoding.PROTOBUF}),
        gzip=False,
    ),
    Vendor(
        "grafana",
        "/otlp/v1/traces",
        {"authorization": _basic("123456", "glc_k")},
        lambda base: {"base_url": base, "instance_id": "123456", "api_key": "glc_k"},
        lambda base: {"base_url": base, "instance_id": "123456", "api_key": "glc_bad"},
    ),
    Vendor(
        "newrelic",
        "/v1/traces",
        {"api-key": "nrk"},
        lambda base: {"license_key": "nrk", "endpoint": base + "/v1/traces"},
        lambda base: {"license_key": "bad", "endpoint": base + "/v1/traces"},
    ),
    Vendor(
        "dynatrace",
        "/api/v2/otlp/v1/traces",
        {"authorization": "Api-Token dt0c01.x"},
        lambda base: {"environment_url": base + "/e/env1", "api_token": "dt0c01.x"},
        lambda base: {"environment_url": base + "/e/env1", "api_token": "bad"},
        encodings=frozenset({Encoding.PROTOBUF}),
    ),
    Vendor(
        "sentry",
        "/api/456/integration/otlp/v1/traces",
        {"x-sentry-auth": "Sentry sentry_key=pub1, sentry_version=7, sentry_client=broadcast/0.1"},
        lambda base: _sentry(base, "pub1"),
        lambda base: _sentry(base, "pub-revoked"),
        encodings=frozenset({Encoding.PROTOBUF}),
    ),
    Vendor(
        "ramp",
        "/developer/v1/ai-usage/openrouter/v1/traces",
        {"authorization": "Bearer rmp_k"},
        lambda base: {"api_key": "rmp_k", "base_url": base + "/developer/v1/ai-usage/openrouter"},
        lambda base: {"api_key": "bad", "base_url": base + "/developer/v1/ai-usage/openrouter"},
        gzip=False,
    ),
]
BY_SLUG = {vendor.slug: vendor for vendor in VENDORS}


def make(slug: str, config: dict[str, Any]) -> Destination:
    cls = destination_class(slug)
    return cls(cls.config_schema().load(config), HttpTransport(NetworkPolicy(True)))


@pytest.fixture(params=[vendor.slug for vendor in VENDORS])
def vendor(request: pytest.FixtureRequest) -> Vendor:
    return BY_SLUG[request.param]


@pytest.fixture(scope="module")
def emulators() -> Iterator[dict[str, OtlpEmulator]]:
    """One running emulator per vendor for the whole module (a server takes 0.5 s to stop)."""
    servers = {}
    for vendor in VENDORS:
        path = vendor.traces_path
        if vendor.slug == "dynatrace":
            path = "/e/env1" + path
        servers[vendor.slug] = OtlpEmulator(
            path, vendor.headers, encodings=vendor.encodings, read_paths=vendor.read_paths
        ).__enter__()
    yield servers
    for server in servers.values():
        server.__exit__()


@pytest.fixture(scope="module")
def forbidding() -> Iterator[Receiver]:
    with Receiver(always(Reply(403, b"forbidden"))) as server:
        yield server


@pytest.fixture
def emulator(vendor: Vendor, emulators: dict[str, OtlpEmulator]) -> OtlpEmulator:
    server = emulators[vendor.slug]
    server.reset()
    return server


def test_delivers_with_the_vendors_headers(vendor: Vendor, emulator: OtlpEmulator) -> None:
    result = make(vendor.slug, vendor.config(emulator.url)).deliver(TRACE, CONTEXT)
    assert (result.outcome, result.status_code, result.rejected) == (Outcome.DELIVERED, 200, ())
    (request,) = emulator.requests()
    assert (request.headers.get("content-encoding") == "gzip") is vendor.gzip
    for name, value in vendor.also_sent.items():
        assert request.headers[name] == value
    assert {span.name for span in emulator.spans()} == {"T", "S", "chat openai/gpt-4o"}


def test_wrong_credentials_are_auth_failed(vendor: Vendor, emulator: OtlpEmulator) -> None:
    result = make(vendor.slug, vendor.bad_config(emulator.url)).deliver(TRACE, CONTEXT)
    assert (result.outcome, result.status_code) == (Outcome.AUTH_FAILED, 401)
    assert emulator.exports() == []


def test_429_with_retry_after_is_retryable(vendor: Vendor, emulator: OtlpEmulator) -> None:
    emulator.script(Reply(429, b"slow down", {"Retry-After": "7"}))
    result = make(vendor.slug, vendor.config(emulator.url)).deliver(TRACE, CONTEXT)
    assert (result.outcome, result.status_code, result.retry_after) == (Outcome.RETRYABLE, 429, 7.0)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_trouble_is_retryable(vendor: Vendor, emulator: OtlpEmulator, status: int) -> None:
    emulator.script(Reply(status, b"upstream down"))
    result = make(vendor.slug, vendor.config(emulator.url)).deliver(TRACE, CONTEXT)
    assert (result.outcome, result.status_code) == (Outcome.RETRYABLE, status)


def test_400_is_permanent_with_the_reason(vendor: Vendor, emulator: OtlpEmulator) -> None:
    emulator.script(Reply(400, b"invalid span: name too long"))
    result = make(vendor.slug, vendor.config(emulator.url)).deliver(TRACE, CONTEXT)
    assert (result.outcome, result.status_code) == (Outcome.PERMANENT, 400)
    assert result.error == "HTTP 400: invalid span: name too long"


@pytest.mark.parametrize("encoding", list(Encoding))
def test_partial_success_is_delivered_with_the_rejection(
    vendor: Vendor, emulator: OtlpEmulator, encoding: Encoding
) -> None:
    emulator.script(success(encoding, rejected_spans=2, message="attribute value too long"))
    result = make(vendor.slug, vendor.config(emulator.url)).deliver(TRACE, CONTEXT)
    assert result.outcome is Outcome.DELIVERED
    assert result.rejected == ("2 span(s) rejected: attribute value too long",)


def test_connection_passes(vendor: Vendor, emulator: OtlpEmulator) -> None:
    check = make(vendor.slug, vendor.config(emulator.url)).test_connection(CONTEXT)
    assert check.ok, check.message
    (request,) = emulator.requests()
    if vendor.read_paths:
        assert request.method == "GET" and request.path.startswith(vendor.read_paths[0])
        assert emulator.spans() == []
    else:
        assert request.path.endswith(vendor.traces_path)
        # One span, clearly marked, in a trace of its own: never an empty export.
        (span,) = emulator.spans()
        assert span.name == CONNECTION_TEST_NAME and not span.parent_span_id
        assert attribute_dict(span.attributes) == {"broadcast.connection_test": True}


def test_connection_passes_where_an_empty_export_gets_400(vendor: Vendor) -> None:
    def strict(request: ReceivedRequest) -> Reply:
        # Like receivers that refuse an export with no spans.
        content_type = request.headers.get("content-type", "")
        export = parse(request.body, content_type) if request.method == "POST" else None
        if export is not None and not all_spans(export):
            return Reply(400, b"no spans in export")
        return Reply(200, b"{}", {"Content-Type": "application/json"})

    with Receiver(strict) as receiver:
        check = make(vendor.slug, vendor.config(receiver.url)).test_connection(CONTEXT)
    assert check.ok, check.message


def test_connection_says_not_found_on_404(vendor: Vendor) -> None:
    with Receiver(always(Reply(404, b"no such route"))) as receiver:
        check = make(vendor.slug, vendor.config(receiver.url)).test_connection(CONTEXT)
    assert (check.outcome, check.status_code) == (Outcome.PERMANENT, 404)
    assert "404" in check.message


def test_connection_says_rejected_on_401(vendor: Vendor, emulator: OtlpEmulator) -> None:
    check = make(vendor.slug, vendor.bad_config(emulator.url)).test_connection(CONTEXT)
    assert (check.outcome, check.status_code) == (Outcome.AUTH_FAILED, 401)
    assert "rejected" in check.message


def test_connection_says_rejected_on_403(vendor: Vendor, forbidding: Receiver) -> None:
    check = make(vendor.slug, vendor.config(forbidding.url)).test_connection(CONTEXT)
    assert (check.outcome, check.status_code) == (Outcome.AUTH_FAILED, 403)
    assert "rejected" in check.message


def test_unreachable_endpoint_is_retryable(vendor: Vendor) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    destination = make(vendor.slug, vendor.config(base))
    assert destination.deliver(TRACE, CONTEXT).outcome is Outcome.RETRYABLE
    assert destination.test_connection(CONTEXT).outcome is Outcome.RETRYABLE


def test_langsmith_connection_check_reads_the_project(
    emulators: dict[str, OtlpEmulator],
) -> None:
    server = emulators["langsmith"]
    server.reset()
    assert make("langsmith", BY_SLUG["langsmith"].config(server.url)).test_connection(CONTEXT).ok
    (request,) = server.requests()
    assert request.path == "/sessions?name=proj&limit=1"
    assert request.headers["x-tenant-id"] == "ws"


@pytest.mark.parametrize("encoding", list(Encoding))
def test_collector_encoding_is_the_configured_one(encoding: Encoding) -> None:
    with OtlpEmulator("/v1/traces", {}) as server:
        config = {"endpoint": server.url + "/v1/traces", "encoding": encoding.value}
        assert make("otel-collector", config).deliver(TRACE, CONTEXT).outcome is Outcome.DELIVERED
        (request,) = server.requests()
    assert request.headers["content-type"] == encoding.content_type
    assert "content-encoding" not in request.headers  # gzip is off unless configured


def test_json_to_a_protobuf_only_receiver_is_permanent() -> None:
    with OtlpEmulator("/v1/traces", {}, encodings={Encoding.PROTOBUF}) as server:
        config = {"endpoint": server.url + "/v1/traces", "encoding": "json"}
        result = make("otel-collector", config).deliver(TRACE, CONTEXT)
    assert (result.outcome, result.status_code) == (Outcome.PERMANENT, 415)


def test_an_oversized_trace_is_truncated_to_the_vendors_budget(
    emulators: dict[str, OtlpEmulator],
) -> None:
    huge = chat_event(2)
    huge["request"]["messages"][1]["content"] = "x" * 3_000_000
    trace = build_trace(huge)
    server = emulators["newrelic"]
    server.reset()
    destination = make("newrelic", BY_SLUG["newrelic"].config(server.url))
    assert len(destination.export_body(trace, CONTEXT)) <= 1_000_000
    assert destination.deliver(trace, CONTEXT).outcome is Outcome.DELIVERED
    generation = next(s for s in server.spans() if s.name == "chat openai/gpt-4o")
    _system, message = json.loads(attribute_dict(generation.attributes)["gen_ai.input.messages"])
    text = message["parts"][0]["content"]
    assert len(text) < 1_000_000
    assert text.endswith(truncation_marker(3_000_000 - len(text.split("…")[0])))


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"Content-Type": "text/plain"}, "set by Broadcast"),
        ({"bad name": "v"}, "not a valid"),
        ({"X-A": "v\r\nX-B: injected"}, "no control character"),
    ],
)
def test_collector_headers_are_validated(headers: dict[str, str], problem: str) -> None:
    from marshmallow import ValidationError

    schema = destination_class("otel-collector").config_schema()
    with pytest.raises(ValidationError, match=problem):
        schema.load({"endpoint": "https://c.example.com/v1/traces", "headers": headers})


def test_secret_and_url_fields_are_marked() -> None:
    expected = {
        "otel-collector": ({"headers"}, {"endpoint"}),
        "phoenix": ({"api_key", "headers"}, {"endpoint"}),
        "arize": ({"api_key", "headers"}, {"base_url"}),
        "langsmith": ({"api_key", "headers"}, {"endpoint"}),
        "weave": ({"api_key", "headers"}, {"base_url"}),
        "grafana": ({"api_key", "headers"}, {"base_url"}),
        "newrelic": ({"license_key", "headers"}, {"endpoint"}),
        "dynatrace": ({"api_token", "headers"}, {"environment_url"}),
        "sentry": ({"dsn", "headers"}, {"otlp_endpoint"}),
        "ramp": ({"api_key", "headers"}, {"base_url"}),
    }
    for slug, (secrets, urls) in expected.items():
        cls = destination_class(slug)
        assert (set(cls.secret_fields()), set(cls.url_fields())) == (secrets, urls), slug


def test_webhook_format_otlp_connection_check_posts_one_marked_span() -> None:
    with OtlpEmulator("/hook", {"x-secret": "s"}) as server:
        config = {"url": server.url + "/hook", "format": "otlp", "headers": {"X-Secret": "s"}}
        check = make("webhook", config).test_connection(CONTEXT)
        (request,) = server.requests()
        exports = server.exports()
    assert check.ok, check.message
    assert request.headers["x-test-connection"] == "true"
    (export,) = exports
    (span,) = all_spans(export)
    assert attribute_dict(span.attributes) == {"broadcast.connection_test": True}
