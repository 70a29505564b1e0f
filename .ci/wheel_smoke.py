"""Smoke test of an installed Broadcast wheel, run from outside the repository.

`.ci/wheel_smoke.sh` builds the wheel, installs it into a fresh virtualenv and runs this
file with that virtualenv's Python from a scratch directory. Only the standard library,
Celery and redis-py are imported here: the gateway side is a plain Celery client that
knows the task name and its queue, never Broadcast's packages.

Checks: the `broadcast` console script (`types`, `keys generate` printing a bare key),
then one delivery end to end: redis-server on a free port, a receiver on loopback,
`broadcast enable` and `broadcast destination add --type webhook`, a worker started from
the virtualenv, `send_task("broadcast.fan_out", ...)`, and the receiver polled for the
trace. Exits 0 and prints `wheel smoke: ok` when every check passed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis
from celery import Celery

BIN = Path(sys.executable).parent
OWNER = "user:smoke"
EVENT = {
    "id": "smoke-000001",
    "user_id": "smoke",
    "org_id": None,
    "api_key_id": "key_smoke",
    "model": "openai/gpt-4o",
    "provider": "OpenAI",
    "request": {"messages": [{"role": "user", "content": "What is 1 + 1?"}]},
    "response": {
        "choices": [{"message": {"role": "assistant", "content": "2"}, "finish_reason": "stop"}]
    },
    "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
    "started_at": "2026-11-23T10:00:00Z",
    "finished_at": "2026-11-23T10:00:00.850Z",
    "status": "success",
    "streamed": False,
}


def wait_for(probe: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"wheel smoke: timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def broadcast(*args: str, env: dict[str, str]) -> str:
    """Run the installed console script; return its stdout, fail loudly on a non-zero exit."""
    done = subprocess.run(
        [str(BIN / "broadcast"), *args], env=env, capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise SystemExit(f"wheel smoke: broadcast {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


class Sink:
    """A loopback HTTP server that records request bodies and answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/traces"

    def delivered(self, request_id: str) -> bool:
        return any(
            json.loads(b).get("data", {}).get("requestId") == request_id for b in self.bodies
        )


def check_installed_outside(scratch: Path) -> None:
    """The packages must come from the virtualenv, not from a repository checkout."""
    for name in (
        "tasks",
        "settings",
        "destinations.otlp",
        "broadcast_engine",
        "broadcast_broker",
        "broadcast_interfaces",
        "harness",
        "celeryconfig",
    ):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise SystemExit(f"wheel smoke: {name} is not installed")
        if not Path(spec.origin).resolve().is_relative_to(BIN.parent.resolve()):
            raise SystemExit(f"wheel smoke: {name} would be imported from {spec.origin}")
    if Path.cwd().resolve() != scratch.resolve():
        raise SystemExit("wheel smoke: must run from its scratch directory")


def main() -> int:
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="broadcast-wheel-smoke-"))
    os.chdir(scratch)
    check_installed_outside(scratch)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCAST_")}
    env.pop("PYTHONPATH", None)

    types = broadcast("types", env=env).split()
    assert "webhook" in types and "otel-collector" in types, types
    key = broadcast("keys", "generate", env=env).strip()
    assert len(key) == 44 and " " not in key, f"not a bare Fernet key: {key!r}"

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    env.update(
        BROADCAST_BROKER_URL=url,
        BROADCAST_STORE_URL=url,
        BROADCAST_ENCRYPTION_KEYS=key,
        BROADCAST_ALLOW_PRIVATE_NETWORKS="1",
    )
    processes: list[subprocess.Popen[bytes]] = []
    log = (scratch / "processes.log").open("wb")
    try:
        redis_server = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
             "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(scratch)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        processes.append(redis_server)
        client = redis.Redis.from_url(url)

        def pong() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(pong, 15, "redis-server")

        sink = Sink()
        broadcast("enable", "--owner", OWNER, env=env)
        added = json.loads(
            broadcast(
                "destination", "add", "--owner", OWNER, "--type", "webhook", "--name", "smoke",
                "--config", json.dumps({"url": sink.url}), "--json", env=env,
            )
        )  # fmt: skip
        worker = subprocess.Popen(
            [str(BIN / "celery"), "-A", "tasks", "worker", "-Q",
             "broadcast.fanout,broadcast.deliver", "-P", "threads", "-c", "4",
             "-n", "smoke@%h", "--without-gossip", "--without-mingle", "-l", "INFO"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        processes.append(worker)

        gateway = Celery(broker=url)
        wait_for(lambda: gateway.control.ping(timeout=0.5), 60, "the worker to answer a ping")
        gateway.send_task("broadcast.fan_out", args=[EVENT], queue="broadcast.fanout")
        wait_for(lambda: sink.delivered(EVENT["id"]), 60, "the trace at the receiver")
        status = json.loads(broadcast("status", "--owner", OWNER, "--json", env=env))
        delivered = {row["id"]: row["counters"]["delivered"] for row in status}
        assert delivered.get(added["id"]) == 1, status
    except BaseException:
        log.flush()
        sys.stderr.write((scratch / "processes.log").read_text(errors="replace")[-4000:])
        raise
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"wheel smoke: ok ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
