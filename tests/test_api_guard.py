"""The management API reads nothing before the caller is known, bounds every body, and
slows an address that keeps failing keys. A real `broadcast serve` process of this
module's own (the default throttle: 10 failures a minute); raw sockets where the point is
what the server does before the body is sent."""

from __future__ import annotations

import json
import os
import random
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import requests

from broadcast_interfaces.auth_throttle import AuthThrottle
from broadcast_interfaces.body_limits import NO_BODY_BYTES, BodyLimits
from harness.api_server import ApiServer
from harness.waiting import wait_for
from settings.api_keys import ManagementKeys

API = "/api/v1/observability"
FAILURES, WINDOW_SECONDS = 10, 60  # the defaults
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def api(redis_server, workdir) -> Iterator[ApiServer]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("BROADCAST_API_AUTH_")}  # fmt: skip
    server = ApiServer(env, workdir)
    yield server
    server.stop()


@pytest.fixture
def address() -> str:
    """A client address of the test's own: the server trusts its loopback proxy's
    X-Forwarded-For (uvicorn's default), so each test counts on its own."""
    return f"198.51.{random.randrange(256)}.{random.randrange(1, 255)}"


@pytest.fixture
def token(service) -> str:
    owner = f"user:guard{uuid.uuid4().hex[:10]}"
    service.set_enabled(owner, True)
    return ManagementKeys(service.store.redis).create(owner, "guard").token


def raw_request(api: ApiServer, head: str, body_chunks: Iterable[bytes] = ()) -> bytes:
    """Send `head` (request line and headers), then body chunks for as long as the server
    reads them; return all the server answered."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n")
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: the rest was never read
        answer = b""
        while True:
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            answer += part
        return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def peak_rss_growth_mib(pid: int, action) -> float:
    status = Path(f"/proc/{pid}/status")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak := current

    def kib(name: str) -> int:
        line = next(x for x in status.read_text().splitlines() if x.startswith(name))
        return int(line.split()[1])

    before = kib("VmRSS:")
    action()
    return (kib("VmHWM:") - before) / 1024


def test_an_unauthenticated_200_mib_post_is_refused_before_its_body(api, address):
    head = (f"POST {API}/destinations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"X-Forwarded-For: {address}\r\nContent-Length: {200 * MIB}\r\n")  # fmt: skip
    answers: list[bytes] = []

    def post() -> None:
        # Only the headers are sent first: the answer comes without a byte of the body.
        answers.append(raw_request(api, head))

    grown = peak_rss_growth_mib(api.process.process.pid, post)
    assert status_of(answers[0]) == 401 and b"www-authenticate: bearer" in answers[0].lower()
    assert b"connection: close" in answers[0].lower()
    assert grown < 8, grown
    print(f"unauthenticated 200 MiB POST: 401 before the body, API peak RSS +{grown:.1f} MiB")


def test_an_unauthenticated_body_sent_anyway_is_never_read(api, address):
    """A client that streams 200 MiB without waiting: the server answers 401 and closes;
    the API process does not grow by what was pushed at it."""
    head = (f"POST {API}/destinations HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {address}\r\n"
            f"Content-Length: {200 * MIB}\r\n")  # fmt: skip
    chunks = (b"x" * MIB for _ in range(200))
    answers: list[bytes] = []
    grown = peak_rss_growth_mib(api.process.process.pid,
                                lambda: answers.append(raw_request(api, head, chunks)))  # fmt: skip
    assert status_of(answers[0]) == 401
    assert grown < 8, grown


def test_a_declared_body_over_the_limit_is_413_before_it_is_sent(api, address, token):
    head = (f"POST {API}/destinations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"X-Forwarded-For: {address}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {64 * 1024 + 1}\r\n")  # fmt: skip
    answer = raw_request(api, head)
    assert status_of(answer) == 413
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    message = "the request body is larger than 65536 bytes"
    assert body == {"error": {"code": "payload_too_large", "message": message}}


def test_a_chunked_body_is_cut_off_past_the_limit(api, address, token):
    head = (f"PATCH {API}/destinations/dst_x HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\nX-Forwarded-For: {address}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n")  # fmt: skip
    chunk = b"x" * 16384
    framed = (b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(64))  # 1 MiB offered
    answer = raw_request(api, head, framed)
    assert status_of(answer) == 413, answer[:200]


def test_a_body_within_the_limit_reaches_the_route(api, address, token):
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {token}", "X-Forwarded-For": address})
    config = {"url": "http://127.0.0.1:1/x", "headers": {"X-Pad": "p" * 60_000}}
    body = {"name": "n", "type": "webhook", "config": config}
    response = session.post(api.url + API + "/destinations", json=body, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["code"] == (
        "test_connection_failed"), response.text  # fmt: skip
    # a route that takes no body accepts none past 1 KiB
    response = session.get(api.url + API + "/status", data=b"x" * (NO_BODY_BYTES + 1),
                           timeout=30)  # fmt: skip
    assert response.status_code == 413


def test_failed_keys_slow_down_their_address_only(api, address, token):
    session = requests.Session()
    other = f"203.0.113.{random.randrange(1, 255)}"

    def call(key: str | None, from_address: str) -> requests.Response:
        headers = {"X-Forwarded-For": from_address}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return session.get(api.url + API + "/status", headers=headers, timeout=30)

    statuses = [call("bmk_wrong" + str(i), address).status_code for i in range(FAILURES)]
    assert statuses == [401] * FAILURES
    throttled = call(None, address)
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["Retry-After"]) <= WINDOW_SECONDS + 1
    assert throttled.json()["error"]["code"] == "rate_limited"
    assert call(token, address).status_code == 429  # even a good key waits its turn
    assert call(token, other).status_code == 200  # another address is not slowed


def test_a_thousand_wrong_keys(api, address):
    """Issue 22's measurement: 1,000 wrong keys from one address."""
    session = requests.Session()
    started = time.perf_counter()
    statuses = [
        session.get(api.url + API + "/status", timeout=30,
                    headers={"Authorization": f"Bearer bmk_{i}", "X-Forwarded-For": address},
                    ).status_code
        for i in range(1000)
    ]  # fmt: skip
    elapsed = time.perf_counter() - started
    print(f"1,000 wrong keys in {elapsed:.1f} s: {statuses.count(401)} checked (401), "
          f"{statuses.count(429)} refused unchecked (429)")  # fmt: skip
    assert statuses.count(401) == FAILURES and statuses.count(429) == 1000 - FAILURES


# The pieces on their own


def test_body_limits_per_route():
    limits = BodyLimits(API, configuration=1000)
    assert limits.for_route("POST", f"{API}/destinations") == 1000
    assert limits.for_route("PATCH", f"{API}/destinations/dst_1") == 1000
    assert limits.for_route("POST", f"{API}/destinations/dst_1/dead-letters/replay") == 1000
    assert limits.for_route("PATCH", f"{API}/owner") == 1000
    assert limits.for_route("POST", f"{API}/destinations/dst_1/test") == NO_BODY_BYTES
    assert limits.for_route("DELETE", f"{API}/destinations/dst_1") == NO_BODY_BYTES
    assert limits.for_route("GET", "/openapi.json") == NO_BODY_BYTES


def test_the_throttle_counts_per_address_within_its_window(store):
    throttle = AuthThrottle(store.redis, failures=2, window_seconds=0.5)
    strange = "not an address\n" + uuid.uuid4().hex  # hashed into the key, never raw
    throttle.failed(strange)
    assert throttle.wait_seconds(strange) == 0.0  # one failure: not yet
    throttle.failed(strange)
    assert 0 < throttle.wait_seconds(strange) <= 0.5
    assert throttle.wait_seconds("192.0.2.1") == 0.0
    assert not list(store.redis.scan_iter(match="*not an address*"))
    wait_for(lambda: throttle.wait_seconds(strange) == 0.0, timeout=5,
             what="the window to pass")  # fmt: skip
