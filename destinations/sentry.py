"""Sentry: OTLP/HTTP spans to the project's OTLP traces endpoint, GenAI conventions.

| trace | Sentry (OTLP attributes; `otlp/spans.py`, `otlp/openrouter_genai.py`) |
| --- | --- |
| `trace_id` | trace id (derived unless already 32 hex), original in `broadcast.trace.id` |
| `trace_name` (default: the model) | root span `name`: Sentry's transaction name |
| `span_name` / `generation_name` | span `name`s (Sentry's span description) |
| `parent_span_id` (16 hex) | the root's `parentSpanId` (else kept in `broadcast.parent_span_id`) |
| `user` / `session_id` | `user.id` / `session.id` (+ `gen_ai.conversation.id`) |
| other `trace` keys | `trace.metadata.<key>` |
| model, usage, messages | `gen_ai.*` (OTel GenAI conventions, which Sentry's SDK writes too) |
| (generation span) | `sentry.op` `gen_ai.chat`: Sentry's AI views list spans by this op |
| total tokens | `gen_ai.usage.total_tokens` |
| cached / reasoning tokens | also Sentry's older `gen_ai.usage.input_tokens.cached` / |
|  | `gen_ai.usage.output_tokens.reasoning` (`sentry_sdk.consts.SPANDATA`) |
| provider | also `gen_ai.system` (Sentry's SDK still sets it) |
| streamed | also `gen_ai.response.streaming` (Sentry's name for `gen_ai.request.stream`) |
| cost (USD) | `gen_ai.usage.cost`, `broadcast.cost.*` (Sentry prices tokens itself) |

Config: `otlp_endpoint` (Sentry shows it beside the DSN: `https://o1.ingest.us.sentry.io/
api/456/integration/otlp/v1/traces`; the `.../integration/otlp` base is completed with
`/v1/traces`) and `dsn` (secret). Both name one project: on save the endpoint must be the
one the DSN derives, as `sentry_sdk.utils.Dsn(dsn).to_auth().get_api_url(OTLP_TRACES)`
derives it (scheme, host, port, path prefix and project id; a trailing slash aside).
Auth: `X-Sentry-Auth: Sentry sentry_key=<public key>, sentry_version=7,
sentry_client=broadcast/0.1` (and `sentry_secret` for a legacy DSN that has one), the
header `sentry_sdk`'s `Auth.to_header()` writes. Protobuf, gzip.

Test Connection posts one marked span (`otlp/exporter.py`); 401/403 is rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from marshmallow import ValidationError, fields, validate, validates_schema

from destinations.base import ConfigSchema
from destinations.config_fields import custom_headers_field, url_field
from destinations.otlp.encoding import Encoding
from destinations.otlp.exporter import OtlpDestination
from destinations.otlp.openrouter_genai import openrouter_genai_attributes
from destinations.otlp.spans import Level, PlannedSpan
from destinations.registry import register
from destinations.trace import Trace

CLIENT = "broadcast/0.1"
AUTH_VERSION = 7
TRACES_SUFFIX = "integration/otlp/v1/traces"
# OpenRouter's pattern for a DSN, with http allowed too (self-hosted Sentry, tests).
DSN_PATTERN = r"^https?://([^:@/]+)(?::[^@]*)?@([^/]+)(?:/[^/]+)*/(\d+)/?$"
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "content-encoding", "x-sentry-auth", "x-test-connection"}
)


class SentryDsn(NamedTuple):
    """A DSN's parts, as `sentry_sdk.utils.Dsn` reads them."""

    scheme: str
    netloc: str  # host, with the port unless it is the scheme's default
    path: str  # the prefix before the project id, ending with "/"
    project_id: str
    public_key: str
    secret_key: str | None

    @property
    def traces_url(self) -> str:
        """The OTLP traces endpoint (trailing slash included, as the SDK writes it)."""
        return f"{self.scheme}://{self.netloc}{self.path}api/{self.project_id}/{TRACES_SUFFIX}/"

    @property
    def auth_header(self) -> str:
        """The `X-Sentry-Auth` value."""
        pairs = [("sentry_key", self.public_key), ("sentry_version", str(AUTH_VERSION))]
        pairs.append(("sentry_client", CLIENT))
        if self.secret_key is not None:
            pairs.append(("sentry_secret", self.secret_key))
        return "Sentry " + ", ".join(f"{key}={value}" for key, value in pairs)


def parse_dsn(dsn: str) -> SentryDsn:
    """A DSN's parts, as `sentry_sdk.utils.Dsn` reads them (a trailing slash after the
    project id allowed). Raises ValueError naming what is wrong (never echoing the DSN)."""
    parts = urlsplit(dsn.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http(s) URL")
    if not parts.hostname:
        raise ValueError("has no host")
    if not parts.username:
        raise ValueError("has no public key")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError("has an invalid port") from None
    # OpenRouter's pattern allows a trailing slash after the project id; the SDK does not.
    prefix, _, project = parts.path.rstrip("/").rpartition("/")
    if not project.isdigit():
        raise ValueError("does not end with a numeric project id")
    netloc = parts.hostname
    if (parts.scheme, port) not in (("http", 80), ("https", 443)):
        netloc = f"{netloc}:{port}"
    return SentryDsn(
        parts.scheme, netloc, prefix + "/", str(int(project)), parts.username, parts.password
    )


def traces_endpoint(configured: str) -> str:
    """The configured endpoint as sent: a `.../integration/otlp` base gets `/v1/traces`."""
    endpoint = configured.rstrip("/")
    return endpoint + "/v1/traces" if endpoint.endswith("/integration/otlp") else endpoint


def sentry_attributes(trace: Trace, span: PlannedSpan) -> dict[str, Any]:
    """Pure: the OpenRouter GenAI dialect plus what Sentry reads (see the module table)."""
    values = openrouter_genai_attributes(trace, span)
    if span.level is Level.GENERATION:
        usage = trace.usage
        values["sentry.op"] = "gen_ai.chat"
        values["gen_ai.system"] = values.get("gen_ai.provider.name")
        values["gen_ai.usage.input_tokens.cached"] = usage.cached_input_tokens
        values["gen_ai.usage.output_tokens.reasoning"] = usage.reasoning_tokens
        values["gen_ai.response.streaming"] = trace.streamed
    return values


class SentryConfig(ConfigSchema):
    otlp_endpoint = url_field(required=True)
    dsn = fields.String(
        required=True,
        validate=validate.Regexp(DSN_PATTERN, error="Must be a Sentry DSN (https://KEY@HOST/ID)."),
        metadata={"secret": True},
    )
    headers = custom_headers_field(RESERVED_HEADERS)

    @validates_schema
    def _endpoint_belongs_to_the_dsn(self, data: Mapping[str, Any], **_: Any) -> None:
        if "otlp_endpoint" not in data or "dsn" not in data:
            return
        try:
            expected = parse_dsn(data["dsn"]).traces_url
        except ValueError as exc:
            raise ValidationError(f"The DSN {exc}.", "dsn") from None
        if traces_endpoint(data["otlp_endpoint"]) != expected.rstrip("/"):
            raise ValidationError(
                "Does not belong to the DSN's project: the DSN's OTLP traces endpoint is "
                f"{expected.rstrip('/')}.",
                "otlp_endpoint",
            )


@register
class SentryDestination(OtlpDestination):
    slug = "sentry"
    display_name = "Sentry"
    config_schema = SentryConfig
    encoding = Encoding.PROTOBUF
    gzip = True

    def traces_url(self) -> str:
        return traces_endpoint(self.config["otlp_endpoint"])

    def auth_headers(self) -> dict[str, str]:
        return {"X-Sentry-Auth": parse_dsn(self.config["dsn"]).auth_header}

    def span_attributes(self, trace: Trace, span: PlannedSpan) -> Mapping[str, Any]:
        return sentry_attributes(trace, span)

    def rejected_message(self) -> str:
        return "Sentry rejected the DSN's key"
