"""Broadcast's broker topology: its queue names, and which kombu transport a URL uses.

Light on purpose (no kombu import): celeryconfig, the runtime's task client and the
metrics exporter all choose the transport here, so they read the broker alike.
"""

from __future__ import annotations

from typing import Any

FANOUT_QUEUE = "broadcast.fanout"
DELIVER_QUEUE = "broadcast.deliver"
MAINTENANCE_QUEUE = "broadcast.maintenance"
TASK_QUEUES = (FANOUT_QUEUE, DELIVER_QUEUE, MAINTENANCE_QUEUE)

STREAM_TRANSPORT = "broadcast_broker.stream_transport:Transport"
REDIS_SCHEMES = ("redis://", "rediss://")


def transport_for(broker_url: str) -> str | None:
    """The kombu transport for `broker_url`: Broadcast's stream transport for Redis
    (broadcast_broker/stream_transport.py), kombu's choice by URL scheme (None) for the rest."""
    return STREAM_TRANSPORT if broker_url.startswith(REDIS_SCHEMES) else None


def use_broker(conf: Any, broker_url: str) -> None:
    """Point a Celery app's configuration (`app.conf`) at `broker_url`, with its transport."""
    conf.broker_url = broker_url
    conf.broker_transport = transport_for(broker_url)
