"""The URL guard: https only, public addresses only, pinned at connect time."""

from __future__ import annotations

import re

import pytest

from destinations.transport import HttpRequest, HttpTransport
from destinations.url_guard import BlockedUrl, NetworkPolicy, check_url, is_public_address

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
    from harness.receiver import Reply

    sink = receiver(lambda _r: Reply(302, b"", {"Location": "http://169.254.169.254/"}))
    result = HttpTransport(LENIENT).send(HttpRequest("GET", sink.url, {}, b""))
    assert result.status_code == 302


def test_connection_refused_is_a_result_not_an_exception():
    from harness.processes import free_port

    result = HttpTransport(LENIENT).send(
        HttpRequest("POST", f"http://127.0.0.1:{free_port()}/", {}, b"{}")
    )
    assert result.status_code is None and result.error.startswith("connection error")
