"""No credential of any vendor, raw or derived, in Redis, the worker log or CLI output.

One destination of every type, all at a local receiver that accepts Test Connection and
then answers every delivery with a 401 whose body echoes each request header the way a
careless vendor does (as sent, URL-encoded, and inside JSON). The real worker records
those answers; then every place Broadcast stores, logs or prints is scanned for each
credential as configured, as sent on the wire (`Basic base64(public:secret)`, `Bearer`,
custom headers, SigV4 and webhook signatures) and in its derived forms.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from destinations.registry import destination_class, known_types
from harness.receiver import ReceivedRequest, Reply
from harness.samples import chat_event, destination_configs
from harness.waiting import wait_for
from tasks import broadcast
from tests.emulators.warehouse_probes import probe_reply
from tests.test_redaction import credential_forms

pytestmark = pytest.mark.integration
BROADCAST = str(Path(sys.executable).parent / "broadcast")
# Request headers that carry no credential (echoing them proves nothing).
PLAIN_HEADERS = {
    "content-type",
    "content-length",
    "content-encoding",
    "user-agent",
    "accept",
    "accept-encoding",
    "connection",
    "host",
    "expect",
    "amz-sdk-invocation-id",
    "amz-sdk-request",
    "x-amz-date",
    "x-amz-content-sha256",
    "content-md5",
    "x-amz-checksum-crc32",
    "x-amz-sdk-checksum-algorithm",
    "webhook-id",
    "webhook-timestamp",
    "x-test-connection",
    "arize-space-id",
    "arize-interface",
    "langsmith-project",
    "x-langfuse-ingestion-version",
    "x-tenant-id",
    "dd-ml-app",
}


class EchoingVendor:
    """Accepts Test Connection; once `echo` is set, answers 401 echoing credentials."""

    def __init__(self) -> None:
        self.echo = threading.Event()
        self.sent: list[ReceivedRequest] = []

    def __call__(self, request: ReceivedRequest) -> Reply:
        if not self.echo.is_set():
            probe = probe_reply(request)  # the warehouses' table and permission checks
            if probe is not None:
                return probe
            if request.path.startswith("/api/public/projects"):
                return Reply(200, b'{"data": [{"id": "p1", "name": "project"}]}')
            return Reply(200, b"" if request.method == "PUT" else b"{}")
        self.sent.append(request)
        echoed = {k: v for k, v in request.headers.items() if k not in PLAIN_HEADERS}
        text = "; ".join(
            f"{k}={v} ({quote(v, safe='')}, hex {v.encode().hex()})" for k, v in echoed.items()
        )
        if request.method == "PUT":  # S3 answers errors in XML
            body = f"<Error><Code>InvalidAccessKeyId</Code><Message>{text}</Message></Error>"
            return Reply(403, body.encode(), {"Content-Type": "application/xml"})
        body = json.dumps({"error": f"invalid credentials: {text}", "headers": echoed})
        return Reply(401, body.encode(), {"Content-Type": "application/json"})


def cli(*argv: str) -> str:
    result = subprocess.run(
        [BROADCAST, *argv], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_no_credential_in_any_form_anywhere(worker, service, user_id, receiver):
    vendor = EchoingVendor()
    sink = receiver(vendor)
    owner = f"user:{user_id}"
    secret = "Sec" + uuid.uuid4().hex
    configs = destination_configs(sink.url, secret)
    views = {
        type_: service.add_destination(owner, type_, type_, configs[type_])
        for type_ in known_types()
    }
    vendor.echo.set()
    broadcast.delay(chat_event(1, user_id=user_id, id=f"{user_id}-leak"))
    for type_, view in views.items():
        wait_for(
            lambda v=view: service.store.attempts(v["id"], 5),
            timeout=30,
            what=f"a recorded attempt of {type_}",
        )

    outputs = [cli("status", "--owner", owner, "--json"), cli("rejected", "--owner", owner)]
    for view in views.values():
        for argv in (["deliveries", view["id"]], ["destination", "show", view["id"]]):
            outputs += [cli(*argv), cli(*argv, "--json")]
    cli_text = "\n".join(outputs)
    assert "[redacted]" in cli_text  # the echoed credentials were there, and were redacted

    forms: set[str] = set()
    for type_ in views:
        cls = destination_class(type_)
        secrets = {k: v for k, v in configs[type_].items() if k in cls.secret_fields()}
        forms |= credential_forms(secrets, {})
    for request in vendor.sent:  # as they went over the wire
        forms |= credential_forms({}, dict(request.headers))
    assert {r.headers.get("authorization", "")[:5] for r in vendor.sent} >= {"Basic", "Beare"}

    places = {f"redis {key}": text for key, text in redis_values(service.store.redis)}
    places["worker log"] = worker.log_path.read_text(errors="replace")
    places["CLI output"] = cli_text
    leaks = sorted(
        f"{form[:10]}... in {place}"
        for form in forms
        for place, content in places.items()
        if form in content
    )
    assert not leaks, "\n".join(leaks)


def redis_values(client) -> list[tuple[str, str]]:
    """(key, everything stored under it as text) for every key in the server."""
    found = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            parts = [client.get(key) or b""]
        elif kind == b"hash":
            parts = [b"%s=%s" % item for item in client.hgetall(key).items()]
        elif kind == b"list":
            parts = client.lrange(key, 0, -1)
        elif kind == b"set":
            parts = list(client.smembers(key))
        elif kind == b"zset":
            parts = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            parts = [b"%s=%s" % kv for _, entry in client.xrange(key) for kv in entry.items()]
        else:
            parts = []
        found.append((key.decode(), b"\n".join(parts).decode("utf-8", "replace")))
    return found
