"""`broadcast.fan_out`, the gateway's entry point: `broadcast.delay(event)`.

This module stays light on purpose: a gateway imports it to send, and the work itself
(`tasks.intake`: validation, the store, routing) is loaded by the worker only.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Reject

from tasks.app import broadcast_task


def _describe_event(event: Any = None, *_: Any, **__: Any) -> str:
    event_id = event.get("id") if isinstance(event, dict) else None
    return f"event {str(event_id)[:256] if event_id else '(no id)'}"


@broadcast_task(name="broadcast.fan_out", describe_args=_describe_event)
def fan_out(self: Task, event: Any = None, *extra: Any, **unexpected: Any) -> dict[str, Any]:
    """Validate, store once, append to each eligible destination's backlog.

    An invalid event (or a message from another client with other arguments) is recorded
    once with its reason and rejected: Flower shows it REJECTED, and it is never retried
    (the same bytes would fail the same way).
    """
    from tasks.intake import accept  # the worker's side: validation, store, routing

    intake = accept(event, extra, unexpected)
    if intake.rejected is not None:
        raise Reject(intake.rejected, requeue=False)
    return intake.shown()


# What gateways import: `from tasks import broadcast; broadcast.delay(event)`.
broadcast = fan_out
__all__ = ["broadcast", "fan_out"]
