"""What runs the service: `broadcast health worker|beat|store` (probes for an
orchestrator: exit 0 or 1), `broadcast metrics serve` and `broadcast serve`. None reads
an owner's settings, so none takes `--actor`."""

from __future__ import annotations

import argparse
import time
from typing import Any

from broadcast_interfaces import probes
from broadcast_interfaces.cli.common import Commands, check_port_free, port_number
from broadcast_interfaces.service import SettingsService


def _health_worker(_service: None, args: argparse.Namespace) -> dict[str, Any]:
    from broadcast_engine.runtime import runtime

    return probes.check_worker(runtime().tasks.celery, node=args.node, timeout=args.timeout)


def _health_beat(_service: None, args: argparse.Namespace) -> dict[str, Any]:
    from broadcast_engine.runtime import runtime

    return probes.check_beat(runtime().store.redis, max_age_seconds=args.max_age, now=time.time())


def _health_store(_service: None, _args: argparse.Namespace) -> dict[str, Any]:
    from broadcast_engine.runtime import runtime

    return probes.check_store(runtime().store.redis)


def _metrics_serve(_service: None, args: argparse.Namespace) -> dict[str, Any]:
    from broadcast_interfaces import metrics

    check_port_free(args.host, args.port)
    metrics.serve(args.host, args.port)
    return {"stopped": True}


def _serve(service: SettingsService, args: argparse.Namespace) -> dict[str, Any]:
    from broadcast_engine.runtime import runtime
    from broadcast_interfaces.http_api import serve

    check_port_free(args.host, args.port)
    serve(service, args.host, args.port, runtime().config)
    return {"stopped": f"http://{args.host}:{args.port}"}


def _listen(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=port_number, default=port, help=f"the port to listen on (default {port})"
    )


def register(commands: Commands) -> None:
    health = commands.group("health", "liveness/readiness probes: exit 0 when healthy, 1 when not")
    worker = health.add(
        "worker", _health_worker, "a worker answers a Celery ping", needs_service=False
    )
    worker.add_argument("--node", help="worker node name (`fanout` means fanout@this host)")
    worker.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    beat = health.add("beat", _health_beat, "beat's sweep ran recently", needs_service=False)
    beat.add_argument(
        "--max-age", type=float, default=60.0, help="seconds since the last sweep (default 60)"
    )
    health.add("store", _health_store, "the settings store answers", needs_service=False)

    metrics = commands.group("metrics", "Prometheus metrics")
    _listen(
        metrics.add(
            "serve", _metrics_serve, "serve /metrics (read from Redis)", needs_service=False
        ),
        9808,
    )
    _listen(commands.add("serve", _serve, "run the management HTTP API"), 8080)
