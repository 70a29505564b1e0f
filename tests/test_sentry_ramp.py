"""Sentry and Ramp beyond the OTLP family's tables (tests/test_otlp_payloads.py and
tests/test_otlp_outcomes.py run both): Sentry's endpoint and auth against `sentry-sdk`'s
own `Dsn`, the endpoint-belongs-to-DSN check, Sentry's attribute names against its SDK's
constants; Ramp's URL and auth header."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from typing import Any

import pytest
from marshmallow import ValidationError
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from sentry_sdk.consts import OP, SPANDATA, EndpointType
from sentry_sdk.utils import Dsn

from broadcast_engine.events import build_trace
from destinations.base import DeliveryContext
from destinations.otlp.encoding import parse
from destinations.ramp import DEFAULT_BASE_URL, RampConfig, RampDestination
from destinations.registry import destination_class
from destinations.sentry import CLIENT, SentryConfig, SentryDestination, parse_dsn
from destinations.transport import HttpTransport
from destinations.url_guard import NetworkPolicy
from harness.samples import chat_event, tool_call_event
from tests.emulators.otlp_receiver import all_spans, attribute_dict

CONTEXT = DeliveryContext("dst_sentry", "user:u1", datetime(2026, 11, 23, tzinfo=UTC))
DSNS = [
    "https://abc123@o123.ingest.us.sentry.io/456",
    "https://abc123@o123.ingest.sentry.io/456/",
    "https://abc123:legacysecret@sentry.example.com:8443/prefix/path/7",
    "http://key9@127.0.0.1:9000/12",
    "http://key9@self-hosted.internal/3",
]
TRANSPORT = HttpTransport(NetworkPolicy(allow_private_networks=True))


@pytest.mark.parametrize("dsn", DSNS)
def test_endpoint_and_auth_are_what_sentry_sdk_derives(dsn: str) -> None:
    # The SDK refuses the trailing slash OpenRouter's DSN pattern allows: compare without.
    sdk_dsn = Dsn(dsn.rstrip("/"))
    ours = parse_dsn(dsn)
    assert ours.traces_url == sdk_dsn.to_auth(CLIENT).get_api_url(EndpointType.OTLP_TRACES)
    assert ours.auth_header == sdk_dsn.to_auth(CLIENT).to_header()
    assert ours.public_key == sdk_dsn.public_key


@pytest.mark.parametrize("dsn", DSNS)
def test_the_sdks_endpoint_is_accepted_with_and_without_the_slash(dsn: str) -> None:
    sdk_endpoint = Dsn(dsn.rstrip("/")).to_auth().get_api_url(EndpointType.OTLP_TRACES)
    for endpoint in (sdk_endpoint, sdk_endpoint.rstrip("/"), sdk_endpoint[: -len("/v1/traces/")]):
        config = SentryConfig().load({"otlp_endpoint": endpoint, "dsn": dsn})
        destination = SentryDestination(config, TRANSPORT)
        assert destination.traces_url() == sdk_endpoint.rstrip("/")
        request = destination.build_request(build_trace(chat_event(1)), CONTEXT)
        assert request.url == sdk_endpoint.rstrip("/")
        assert request.headers["X-Sentry-Auth"] == parse_dsn(dsn).auth_header


@pytest.mark.parametrize(
    ("endpoint", "dsn", "field", "message"),
    [
        (
            "https://o123.ingest.us.sentry.io/api/999/integration/otlp/v1/traces",
            DSNS[0],
            "otlp_endpoint",
            "Does not belong to the DSN's project",
        ),
        (
            "https://o9.ingest.us.sentry.io/api/456/integration/otlp/v1/traces",
            DSNS[0],
            "otlp_endpoint",
            "https://o123.ingest.us.sentry.io/api/456/integration/otlp/v1/traces",
        ),
        (
            "https://o123.ingest.us.sentry.io/api/456/integration/otlp/v1/traces",
            "https://o123.ingest.us.sentry.io/456",
            "dsn",
            "Must be a Sentry DSN",
        ),
        (
            "https://o123.ingest.us.sentry.io/api/456/integration/otlp/v1/traces",
            "ftp://k@o123.ingest.us.sentry.io/456",
            "dsn",
            "Must be a Sentry DSN",
        ),
    ],
)
def test_endpoint_and_dsn_must_belong_together(
    endpoint: str, dsn: str, field: str, message: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        SentryConfig().load({"otlp_endpoint": endpoint, "dsn": dsn})
    errors = raised.value.messages
    assert message in str(errors[field])  # type: ignore[index]
    assert "abc123" not in str(errors)  # the DSN's key is never echoed


def _spans(trace_event: dict[str, Any]) -> dict[str, Span]:
    config = SentryConfig().load(
        {
            "otlp_endpoint": "https://o1.ingest.us.sentry.io/api/4/integration/otlp/v1/traces",
            "dsn": "https://k1@o1.ingest.us.sentry.io/4",
        }
    )
    request = SentryDestination(config, TRANSPORT).build_request(build_trace(trace_event), CONTEXT)
    assert request.headers["Content-Encoding"] == "gzip"
    export = parse(gzip.decompress(request.body), request.headers["Content-Type"])
    return {span.name: span for span in all_spans(export)}


def test_spans_decode_with_the_otlp_classes_and_carry_sentrys_names() -> None:
    spans = _spans(
        tool_call_event(3, trace={"trace_name": "Agent", "span_name": "Step", "env": "prod"})
    )
    assert set(spans) == {"Agent", "Step", "chat openai/gpt-4o"}
    generation = attribute_dict(spans["chat openai/gpt-4o"].attributes)
    assert generation["sentry.op"] == OP.GEN_AI_CHAT
    assert generation[SPANDATA.GEN_AI_OPERATION_NAME] == "chat"
    assert generation[SPANDATA.GEN_AI_REQUEST_MODEL] == "openai/gpt-4o"
    assert generation[SPANDATA.GEN_AI_USAGE_INPUT_TOKENS] == 1200
    assert generation[SPANDATA.GEN_AI_USAGE_OUTPUT_TOKENS] == 300
    assert generation[SPANDATA.GEN_AI_USAGE_TOTAL_TOKENS] == 1500
    assert generation[SPANDATA.GEN_AI_USAGE_INPUT_TOKENS_CACHED] == 1000
    assert generation[SPANDATA.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 1000
    assert generation[SPANDATA.GEN_AI_USAGE_OUTPUT_TOKENS_REASONING] == 120
    assert generation[SPANDATA.GEN_AI_SYSTEM] == "openai"
    assert generation["gen_ai.usage.cost"] == 0.000123
    assert SPANDATA.GEN_AI_INPUT_MESSAGES in generation
    for span in spans.values():
        values = attribute_dict(span.attributes)
        assert values["trace.metadata.env"] == "prod"
        assert values["user.id"] == "end-user-7"
        assert "broadcast.metadata.env" not in values
    root = attribute_dict(spans["Agent"].attributes)
    assert "sentry.op" not in root  # Sentry infers the transaction's op itself


def test_every_gen_ai_name_sentry_gets_is_one_its_sdk_knows() -> None:
    known = {value for name, value in vars(SPANDATA).items() if name.startswith("GEN_AI_")}
    generation = attribute_dict(
        _spans(tool_call_event(4, streamed=True))["chat openai/gpt-4o"].attributes
    )
    # The GenAI names Sentry's SDK does not write: the gateway's cost, for which no
    # convention exists (Sentry prices tokens itself; this is the name most readers take),
    # and the convention's `request.stream` (sent beside Sentry's `response.streaming`).
    unknown = {k for k in generation if k.startswith("gen_ai.") and k not in known}
    assert unknown == {"gen_ai.usage.cost", "gen_ai.request.stream"}
    assert generation[SPANDATA.GEN_AI_RESPONSE_STREAMING] is True


def test_ramp_url_auth_and_dialect() -> None:
    config = RampConfig().load({"api_key": "rmp_secret"})
    assert config["base_url"] == DEFAULT_BASE_URL
    destination = RampDestination(config, TRANSPORT)
    request = destination.build_request(
        build_trace(chat_event(5, trace={"cost_center": "CC-1"})), CONTEXT
    )
    assert request.url == DEFAULT_BASE_URL + "/v1/traces"
    assert request.headers["Authorization"] == "Bearer rmp_secret"
    assert request.headers["Content-Type"] == "application/json"
    spans = {span.name: span for span in all_spans(parse(request.body, "application/json"))}
    generation = attribute_dict(spans["chat openai/gpt-4o"].attributes)
    assert generation["gen_ai.usage.cost"] == 0.000123
    assert generation["broadcast.cost.total"] == 0.000123
    assert generation["gen_ai.usage.total_tokens"] == 28
    assert generation["trace.metadata.cost_center"] == "CC-1"


def test_own_credential_headers_cannot_be_overridden() -> None:
    with pytest.raises(ValidationError, match="set by Broadcast"):
        RampConfig().load({"api_key": "k", "headers": {"Authorization": "Bearer other"}})
    with pytest.raises(ValidationError, match="set by Broadcast"):
        SentryConfig().load(
            {
                "otlp_endpoint": "https://o1.ingest.sentry.io/api/4/integration/otlp/v1/traces",
                "dsn": "https://k1@o1.ingest.sentry.io/4",
                "headers": {"X-Sentry-Auth": "Sentry sentry_key=other"},
            }
        )
    assert destination_class("sentry") is SentryDestination
    assert destination_class("ramp") is RampDestination
