"""The one way Broadcast sends its own tasks: by name, through a Celery app configured
like the workers (celeryconfig.py), on a given broker.

Every layer sends through `TaskSender` (the engine's runtime holds one), so no module
below `tasks/` imports a task object, and a worker sends through its own app (its
producer pool, its connection) instead of opening a second one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from celery import Celery

from broadcast_broker.topology import STREAM_TRANSPORT, transport_for, use_broker

DELIVER_TASK = "broadcast.deliver"
CHECK_DESTINATION_TASK = "broadcast.maintenance.check_destination"
NOTIFY_TASK = "broadcast.maintenance.notify"


def describe_delivery(
    destination_id: str, destination_type: str, request_id: str | None = None
) -> str:
    """A deliver message's `argsrepr` (what Flower shows as its arguments): the
    destination, its type and, when one trace's fan-out sent it, that request id. Ids
    only, never credentials; the message's real argument stays the destination id."""
    described = f"{destination_id} ({destination_type})"
    return f"{described} for {request_id}" if request_id is not None else described


def task_client(broker_url: str) -> Celery:
    """A Celery client configured like the workers (queues, routes, codec), on `broker_url`."""
    client = Celery("broadcast", set_as_current=False)
    client.config_from_object("celeryconfig")
    use_broker(client.conf, broker_url)
    return client


@dataclass
class TaskSender:
    """Sends tasks by name. `app`: the worker's own Celery app when there is one (injected
    at worker start); otherwise a client for `broker_url` is built on first use."""

    broker_url: str
    app: Celery | None = None

    @cached_property
    def celery(self) -> Celery:
        return self.app if self.app is not None else task_client(self.broker_url)

    @property
    def subsecond_countdowns(self) -> bool:
        """Whether a countdown below a second is kept: on the Redis broker a worker holds
        the message until it is due; RabbitMQ's delayed delivery counts whole seconds."""
        return transport_for(self.broker_url) == STREAM_TRANSPORT

    def send(
        self,
        name: str,
        args: Sequence[Any],
        *,
        argsrepr: str | None = None,
        countdown: float | None = None,
    ) -> None:
        """Publish one task message; with `countdown`, due that many seconds from now
        (rounded up to a whole second where the broker counts whole seconds). Raises
        kombu's `OperationalError` when the broker cannot take it."""
        options: dict[str, Any] = {}
        if countdown is not None and not self.subsecond_countdowns:
            countdown = max(1, math.ceil(countdown))
        if argsrepr is not None:
            options["argsrepr"] = argsrepr
            options["kwargsrepr"] = "{}"
        if countdown:
            options["countdown"] = countdown
        self.celery.send_task(name, args=tuple(args), **options)
