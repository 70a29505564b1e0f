"""The URL guard: https only, public addresses only, pinned at connect time."""

from __future__ import annotations

import re

import pytest
from marshmallow import ValidationError

from destinations.registry import destination_class, known_types
from destinations.transport import HttpRequest, HttpTransport
from destinations.url_guard import (
    BlockedUrl,
    NetworkPolicy,
    check_url,
    is_public_address,
    system_resolver,
)
from harness.receiver import Reply
from harness.samples import destination_configs

STRICT = NetworkPolicy(allow_private_networks=False)
LENIENT = NetworkPolicy(allow_private_networks=True)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "100.100.100.200",
        "fd00:ec2::254",
        "224.0.0.1",
        "100.64.0.1",
    ],
)
def test_non_public_addresses(address):
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses(address):
    assert is_public_address(address)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/hook", "must use https"),
        ("ftp://example.com/", "absolute http(s) URL"),
        ("https://user:pw@example.com/", "must not carry credentials"),
        ("https://127.0.0.1/hook", "non-public address"),
        ("https://localhost:8443/hook", "non-public address"),
        ("https://169.254.169.254/latest/meta-data", "non-public address"),
        ("https://[::1]/", "non-public address"),
    ],
)
def test_strict_policy_refuses(url, message):
    with pytest.raises(BlockedUrl, match=re.escape(message)):
        check_url(url, STRICT)


def test_lenient_policy_allows_loopback_http():
    check_url("http://127.0.0.1:8080/hook", LENIENT)


def test_transport_refuses_loopback_at_connect_time(receiver):
    sink = receiver()
    result = HttpTransport(STRICT).send(
        HttpRequest("POST", sink.url.replace("http:", "https:"), {}, b"{}")
    )
    assert result.status_code is None and result.error.startswith("blocked")
    assert sink.requests() == []


def test_transport_pins_the_checked_address(receiver):
    """A name resolving to loopback is refused when connecting, whatever the URL form said."""
    sink = receiver()
    url = sink.url.replace("127.0.0.1", "localhost").replace("http:", "https:")
    result = HttpTransport(STRICT).send(HttpRequest("POST", url, {}, b"{}"))
    assert result.error and "non-public" in result.error
    assert sink.requests() == []


def test_transport_reaches_loopback_when_allowed(receiver):
    sink = receiver()
    result = HttpTransport(LENIENT).send(HttpRequest("POST", sink.url + "/x", {"A": "b"}, b"{}"))
    assert result.status_code == 200
    assert sink.requests("/x")[0].headers["a"] == "b"


def test_transport_does_not_follow_redirects(receiver):
    sink = receiver(lambda _r: Reply(302, b"", {"Location": "http://169.254.169.254/"}))
    result = HttpTransport(LENIENT).send(HttpRequest("GET", sink.url, {}, b""))
    assert result.status_code == 302


def test_connection_refused_is_a_result_not_an_exception():
    from harness.processes import free_port

    result = HttpTransport(LENIENT).send(
        HttpRequest("POST", f"http://127.0.0.1:{free_port()}/", {}, b"{}")
    )
    assert result.status_code is None and result.error.startswith("connection error")


# Hostile forms, across every URL field of every destination type

NAMES = {
    "internal.test": ["10.0.0.5"],
    "mixed.test": ["8.8.8.8", "127.0.0.1"],
    "nat64.test": ["64:ff9b::a9fe:a9fe"],
    "sixtofour.test": ["2002:a00:1::1"],
    "metadata.test": ["169.254.169.254"],
    "teredo.test": ["2001:0:4136:e378:8000:63bf:3fff:fdd2"],
    "public.test": ["8.8.8.8"],
}


def fake_dns(host: str, port: int) -> list[str]:
    """Names of the table from `NAMES`; literals and localhost through the system."""
    if host in NAMES:
        return NAMES[host]
    return system_resolver(host, port)


GUARDED = NetworkPolicy(allow_private_networks=False, resolver=fake_dns)

HOSTILE_URLS = [
    "https://127.0.0.1",
    "https://127.1",
    "https://2130706433",
    "https://0x7f000001",
    "https://0177.0.0.1",
    "https://0",
    "https://0.0.0.0",
    "https://10.0.0.1",
    "https://172.16.5.4",
    "https://192.168.0.1",
    "https://169.254.169.254",
    "https://100.100.100.200",
    "https://100.64.0.1",
    "https://224.0.0.1",
    "https://255.255.255.255",
    "https://[::1]",
    "https://[::]",
    "https://[::ffff:127.0.0.1]",
    "https://[::ffff:7f00:1]",
    "https://[::ffff:a9fe:a9fe]",
    "https://[::127.0.0.1]",
    "https://[::ffff:0:127.0.0.1]",
    "https://[64:ff9b::7f00:1]",
    "https://[64:ff9b::169.254.169.254]",
    "https://[64:ff9b:1::808:808]",
    "https://[2002:7f00:1::]",
    "https://[2002:a9fe:a9fe::1]",
    "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]",
    "https://[fe80::5efe:7f00:1]",
    "https://[fe80::1%25eth0]",
    "https://[fd00:ec2::254]",
    "https://[fc00::1]",
    "https://[ff02::1]",
    "https://localhost",
    "https://localhost.",
    "https://LOCALHOST:443",
    "https://internal.test",
    "https://mixed.test",
    "https://nat64.test",
    "https://sixtofour.test",
    "https://metadata.test",
    "https://teredo.test",
    "http://public.test",
    "https://user:pw@public.test",
    "https://public.test:65536",
    "https://public.test:0",
    "https://public.test:-1",
    "https://public.test:port",
    "ftp://public.test",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_FLUSHALL",
    "//127.0.0.1",
    "https:/127.0.0.1",
]


def url_fields() -> list[tuple[str, str]]:
    return [
        (type_, name)
        for type_ in known_types()
        for name in sorted(destination_class(type_).url_fields())
    ]


def saved_config_error(type_: str, name: str, url: str) -> str | None:
    """Why saving the type's config with `url` in field `name` is refused, else None.

    The same two steps as `SettingsService._validate_config`: the schema, then the guard
    on every URL the config names (`config_urls`: the URL fields and, for BigQuery, the
    key's token_uri)."""
    cls = destination_class(type_)
    config = {**destination_configs("https://public.test")[type_], name: url}
    if type_ == "sentry":
        config.update(_sentry_pair(url))
    try:
        validated = cls.config_schema().load(config)
        for config_url in cls.config_urls(validated).values():
            check_url(config_url, GUARDED)
    except (ValidationError, BlockedUrl, OSError) as exc:
        return str(exc)
    return None


def _sentry_pair(url: str) -> dict[str, str]:
    """Sentry's endpoint must be its DSN's: an endpoint at `url`'s host and a DSN naming
    the same host, so the URL guard, not the pairing check, is what refuses `url`."""
    scheme, _, rest = url.partition("://")
    netloc = rest.split("/", 1)[0]
    return {
        "otlp_endpoint": f"{scheme}://{netloc}/api/456/integration/otlp/v1/traces",
        "dsn": f"{scheme}://key@{netloc.rpartition('@')[2]}/456",
    }


def test_the_table_is_long_enough():
    assert len(HOSTILE_URLS) >= 40 and len(url_fields()) >= 13


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_hostile_url_is_refused_in_every_url_field(url):
    accepted = [
        f"{type_}.{name}"
        for type_, name in url_fields()
        if saved_config_error(type_, name, url + "/v1/traces") is None
    ]
    assert accepted == []


def test_a_public_url_is_accepted_in_every_url_field():
    refused = {
        f"{type_}.{name}": saved_config_error(type_, name, "https://public.test/v1/traces")
        for type_, name in url_fields()
    }
    assert {field: why for field, why in refused.items() if why} == {}


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("64:ff9b::808:808", True),
        ("2002:808:808::1", True),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::a00:1", False),
        ("2002:c0a8:101::1", False),
    ],
)
def test_embedded_ipv4_decides(address, public):
    assert is_public_address(address) is public


@pytest.mark.parametrize("port", ["0", "65536", "99999", "x"])
def test_bad_port_is_one_clear_error(port):
    with pytest.raises(BlockedUrl, match=r"invalid port"):
        check_url(f"https://public.test:{port}/", GUARDED)


# S3 is pinned to the checked address too (botocore would resolve the name again)


def s3_destination(endpoint: str, policy: NetworkPolicy):
    from destinations.s3 import S3Destination

    config = S3Destination.config_schema().load(destination_configs(endpoint)["s3"])
    return S3Destination(config, HttpTransport(policy))


def put(destination):
    from datetime import UTC, datetime

    from destinations.base import DeliveryContext

    return destination.test_connection(DeliveryContext("dst_s3", "user:u", datetime.now(UTC)))


def test_s3_connects_to_the_address_the_policy_resolved(receiver):
    """`pinned.invalid` does not resolve anywhere but in the injected resolver: the request
    arriving proves botocore connected to the checked address, with the original name."""
    sink = receiver(lambda _r: Reply(200, b""))  # S3 answers a PutObject with no body
    port = sink.url.rsplit(":", 1)[1]
    policy = NetworkPolicy(
        allow_private_networks=True,
        resolver=lambda host, p: ["127.0.0.1"] if host == "pinned.invalid" else [],
    )
    check = put(s3_destination(f"http://pinned.invalid:{port}", policy))
    assert check.ok, check.message
    assert sink.requests()[0].headers["host"] == f"pinned.invalid:{port}"


def test_s3_never_reaches_an_address_the_policy_did_not_check(receiver):
    """The system resolves `localhost` to 127.0.0.1, where the receiver listens; the policy
    says 127.0.0.2, where nothing does. An unpinned client would reach the receiver."""
    sink = receiver()
    port = sink.url.rsplit(":", 1)[1]
    policy = NetworkPolicy(
        allow_private_networks=True,
        resolver=lambda host, p: ["127.0.0.2"] if host == "localhost" else [],
    )
    check = put(s3_destination(f"http://localhost:{port}", policy))
    assert not check.ok and "connection error" in check.message
    assert sink.requests() == []


def test_s3_refuses_a_rebinding_name_at_connect_time(receiver):
    """Public when saved, loopback when connecting: refused, nothing sent."""
    sink = receiver()
    answers = iter([["8.8.8.8"], ["127.0.0.1"], ["127.0.0.1"], ["127.0.0.1"]])
    policy = NetworkPolicy(resolver=lambda host, p: next(answers))
    check = put(s3_destination("https://rebind.test", policy))
    assert not check.ok and "blocked" in check.message and "non-public" in check.message
    assert sink.requests() == []


# Test Connection never quotes what a private address answered (issue 22): with private
# networks allowed, an owner could otherwise read an internal service through its errors.

INTERNAL = b"internal-only: db_password=hunter2 " + b"x" * 400


def test_test_connection_never_quotes_a_private_address(service, receiver):
    from broadcast_interfaces.service import ConnectionTestFailed

    state = {"reply": Reply(500, INTERNAL)}
    sink = receiver(lambda _request: state["reply"])
    owner = "user:ssrf" + sink.url.rsplit(":", 1)[1]
    with pytest.raises(ConnectionTestFailed) as caught:
        service.add_destination(owner, "webhook", "w", {"url": sink.url + "/hook"})
    assert "hunter2" not in str(caught.value)
    assert str(caught.value).endswith(
        "HTTP 500 (a private address answered: its body is not shown)"
    )
    state["reply"] = Reply(200, b"{}")
    view = service.add_destination(owner, "webhook", "w", {"url": sink.url + "/hook"})
    state["reply"] = Reply(401, INTERNAL)
    result = service.test_destination(view["id"])
    assert not result["ok"] and "hunter2" not in result["message"]
    assert "(HTTP 401 (a private address answered" in result["message"]
    assert "hunter2" not in service.store.health(view["id"]).reason


def test_a_public_address_answer_is_still_quoted():
    from destinations.base import check_from_transport
    from destinations.transport import TransportResult

    public = TransportResult(500, 1.0, body=b"vendor says: bad span", private_peer=False)
    assert check_from_transport(public, rejected_message="x").message == (
        "HTTP 500: vendor says: bad span"
    )
    private = TransportResult(500, 1.0, body=b"vendor says: bad span", private_peer=True)
    assert "bad span" not in check_from_transport(private, rejected_message="x").message


def test_the_transport_marks_answers_from_private_addresses(receiver):
    sink = receiver(lambda _request: Reply(200, b"ok"))
    result = HttpTransport(LENIENT).send(HttpRequest("GET", sink.url + "/x", {}))
    assert result.status_code == 200 and result.private_peer
