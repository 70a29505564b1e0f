"""The service-account key's `token_uri` is a URL the user names: guarded when the config is
saved and pinned when connecting, like every URL field.

The key file is a secret config field whose JSON names the token endpoint that receives
the signed assertion. A hostile one would make Broadcast post to the operator's network
(a metadata server's token path, above all), so saving refuses it with the field named,
and the token request goes through the shared transport, connecting to the very address
the guard checked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from broadcast_engine.runtime import Runtime
from broadcast_interfaces.service import (
    ConnectionTestFailed,
    SettingsError,
    SettingsService,
    settings_service,
)
from destinations.base import DeliveryContext
from destinations.bigquery import BigQueryDestination
from destinations.transport import HttpTransport
from destinations.url_guard import NetworkPolicy, system_resolver
from harness.receiver import Reply
from harness.samples import service_account_key
from settings.config import load_config
from tests.emulators.google_oauth import GoogleTokenEndpoint
from tests.emulators.warehouse_probes import probe_reply
from tests.test_url_guard import HOSTILE_URLS, NAMES

pytestmark = pytest.mark.integration
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
# Where a hostile key would point on Google Cloud: the instance's own token.
METADATA_TOKEN = "/computeMetadata/v1/instance/service-accounts/default/token"
DNS = {**NAMES, "metadata.google.internal": ["169.254.169.254"]}


def resolve(host: str, port: int) -> list[str]:
    """The table's names (test_url_guard.NAMES and Google's metadata server); literals and
    localhost through the system. Nothing here reaches a public address."""
    return DNS[host] if host in DNS else system_resolver(host, port)


def key_with(token_uri: str) -> str:
    """A real key file (one RSA key for all) with `token_uri` replaced."""
    info = json.loads(service_account_key(GOOGLE_TOKEN_URI))
    return json.dumps({**info, "token_uri": token_uri})


def config(token_uri: str, endpoint: str = "https://public.test") -> dict:
    return {
        "project_id": "proj-1234",
        "service_account_json": key_with(token_uri),
        "dataset": "openrouter",
        "table": "openrouter_traces",
        "endpoint": endpoint,
    }


def guarded_service(resolver) -> SettingsService:
    """The settings service as a production install runs it: private networks not allowed
    (the tests' own environment allows them), names resolved by `resolver`."""
    runtime = Runtime(load_config())
    runtime.transport = HttpTransport(
        NetworkPolicy(allow_private_networks=False, resolver=resolver)
    )
    return settings_service(runtime)


@pytest.fixture
def strict(redis_server) -> SettingsService:
    return guarded_service(resolve)


@pytest.mark.parametrize(
    ("token_uri", "why"),
    [
        ("https://127.0.0.1/token", "non-public address"),
        ("https://localhost:8443/token", "non-public address"),
        ("https://[::1]/token", "non-public address"),
        ("https://[::ffff:127.0.0.1]/token", "non-public address"),
        ("https://10.0.0.5/token", "non-public address"),
        ("https://192.168.1.10/token", "non-public address"),
        ("https://internal.test/token", "non-public address"),
        ("https://169.254.169.254" + METADATA_TOKEN, "non-public address"),
        ("https://metadata.google.internal" + METADATA_TOKEN, "non-public address"),
        ("https://[fd00:ec2::254]/latest/api/token", "non-public address"),
        ("https://100.100.100.200/token", "non-public address"),
        ("http://oauth2.googleapis.com/token", "must use https"),
        ("http://metadata.google.internal" + METADATA_TOKEN, "must use https"),
        ("https://user:pw@oauth2.googleapis.com/token", "must not carry credentials"),
        ("ftp://oauth2.googleapis.com/token", "must be an http(s) URL"),
    ],
)
def test_a_hostile_token_uri_is_refused_on_save_naming_the_field(strict, user_id, token_uri, why):
    with pytest.raises(SettingsError) as refused:
        strict.add_destination(f"user:{user_id}", "bigquery", "BQ", config(token_uri))
    message = str(refused.value)
    assert "service_account_json" in message and "token_uri" in message and why in message
    # Refused by the guard before any request, not by a Test Connection that tried it.
    assert not isinstance(refused.value, ConnectionTestFailed)
    assert strict.list_destinations(f"user:{user_id}") == []


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_every_hostile_url_form_is_refused_as_token_uri(strict, user_id, url):
    """The URL guard's whole table of hostile forms (tests/test_url_guard.py)."""
    with pytest.raises(SettingsError, match="token_uri") as refused:
        strict.add_destination(f"user:{user_id}", "bigquery", "BQ", config(url + "/token"))
    assert not isinstance(refused.value, ConnectionTestFailed)


def test_a_public_token_uri_is_accepted_by_the_guard():
    cls = BigQueryDestination
    validated = cls.config_schema().load(config(GOOGLE_TOKEN_URI))
    assert cls.config_urls(validated) == {
        "endpoint": "https://public.test",
        "service_account_json.token_uri": GOOGLE_TOKEN_URI,
    }


@pytest.fixture
def token_endpoint() -> Iterator[GoogleTokenEndpoint]:
    with GoogleTokenEndpoint("proj-1234") as endpoint:
        yield endpoint


def test_the_token_request_goes_to_the_address_the_policy_resolved(token_endpoint, receiver):
    """`pinned.invalid` resolves nowhere but in the policy's resolver: the grant arriving at
    the loopback token endpoint, with that name as Host, proves google-auth's request went
    through the pinned transport (its own would fail to resolve the name)."""
    api = receiver(lambda request: probe_reply(request) or Reply(404, b"{}"))
    token_port = token_endpoint.url.rsplit(":", 1)[1]
    api_port = api.url.rsplit(":", 1)[1]
    token_uri = f"http://pinned.invalid:{token_port}/token"
    key = token_endpoint.new_account("pinned", token_uri=token_uri)
    policy = NetworkPolicy(
        allow_private_networks=True,
        resolver=lambda host, port: ["127.0.0.1"] if host == "pinned.invalid" else [],
    )
    settings = {
        **config(token_uri, f"http://pinned.invalid:{api_port}"),
        "service_account_json": key,
    }
    cls = BigQueryDestination
    destination = cls(cls.config_schema().load(settings), HttpTransport(policy))
    check = destination.test_connection(DeliveryContext("dst_pin", "user:u", datetime.now(UTC)))
    assert check.ok, check.message
    (grant,) = token_endpoint.receiver.requests("/token")
    assert grant.headers["host"] == f"pinned.invalid:{token_port}"
    assert token_endpoint.issued == [json.loads(key)["client_email"]]


def test_a_token_uri_resolving_to_loopback_when_connecting_is_refused(token_endpoint):
    """Whatever the name resolved to when the config was saved, the token request resolves
    it again when connecting and refuses a loopback answer: nothing reaches the endpoint
    listening there. (The resolver never answers a public address, so a regression could
    not send anything off this machine.)"""
    port = int(token_endpoint.url.rsplit(":", 1)[1])
    token_uri = f"https://rebind.test:{port}/token"
    policy = NetworkPolicy(
        allow_private_networks=False,
        resolver=lambda host, p: ["127.0.0.1"] if host == "rebind.test" else [],
    )
    cls = BigQueryDestination
    destination = cls(cls.config_schema().load(config(token_uri)), HttpTransport(policy))
    check = destination.test_connection(DeliveryContext("dst_rb", "user:u", datetime.now(UTC)))
    assert not check.ok
    assert "token_uri blocked" in check.message and "non-public" in check.message
    assert token_endpoint.receiver.requests() == []
