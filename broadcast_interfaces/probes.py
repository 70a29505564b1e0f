"""Liveness and readiness probes for a container orchestrator: a worker, beat, the store.

Each probe returns a small description when the part is healthy and raises `Unhealthy`
naming what is wrong otherwise; `broadcast health ...` turns that into exit status 0 or 1,
which is all a Kubernetes `exec` probe or a compose `healthcheck` reads.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from settings import keys
from settings.redis_commands import RedisClient


class Unhealthy(Exception):
    """The probed part did not answer, or answered too late."""


def node_name(node: str) -> str:
    """`fanout` -> `fanout@<this host>`, as `celery worker -n fanout@%h` names it."""
    return node if "@" in node else f"{node}@{socket.gethostname()}"


def check_worker(app: Celery, *, node: str | None, timeout: float) -> dict[str, Any]:
    """A worker (`node`, else any) answers a Celery ping within `timeout` seconds."""
    destination = [node_name(node)] if node else None
    try:
        replies = app.control.ping(destination=destination, timeout=timeout) or []
    except (OSError, OperationalError) as exc:  # kombu wraps connection errors
        raise Unhealthy(f"cannot reach the broker: {type(exc).__name__}") from None
    answered = sorted(name for reply in replies for name in reply)
    if not answered:
        raise Unhealthy(f"no worker{' ' + destination[0] if destination else ''} answered a "
                        f"ping within {timeout:g}s")  # fmt: skip
    return {"ok": True, "workers": answered}


def check_beat(client: RedisClient, *, max_age_seconds: float, now: float) -> dict[str, Any]:
    """Beat's sweep wrote its heartbeat (unix seconds) less than `max_age_seconds` ago."""
    try:
        raw = client.get(keys.BEAT_HEARTBEAT)
    except redis.RedisError as exc:
        raise Unhealthy(f"cannot read beat's heartbeat: {type(exc).__name__}") from None
    if raw is None:
        raise Unhealthy(f"beat has not run its sweep yet ({keys.BEAT_HEARTBEAT} is not set)")
    try:
        age = now - float(raw)
    except ValueError:
        raise Unhealthy(f"{keys.BEAT_HEARTBEAT} is not a unix time: {raw[:40]!r}") from None
    if age > max_age_seconds:
        raise Unhealthy(f"beat's last sweep was {age:.0f}s ago (limit {max_age_seconds:g}s)")
    return {"ok": True, "last_sweep_seconds_ago": round(age, 1)}


def check_store(client: RedisClient) -> dict[str, Any]:
    """The settings store answers PING."""
    started = time.monotonic()
    try:
        client.ping()
    except redis.RedisError as exc:
        raise Unhealthy(f"the settings store does not answer: {type(exc).__name__}") from None
    return {"ok": True, "ping_ms": round((time.monotonic() - started) * 1000, 2)}
