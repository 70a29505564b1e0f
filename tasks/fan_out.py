"""`broadcast.fan_out`, the gateway's entry point: `broadcast.delay(event)`.

This module stays light on purpose: a gateway imports it to send, and the work itself
(`broadcast_engine.intake`: validation, the store, routing) is loaded by the worker only.
"""

from __future__ import annotations

from typing import Any

from tasks.app import BroadcastTask, broadcast_task
from tasks.final_state import REJECTED, FinalState


def _describe_event(event: Any = None, *_: Any, **__: Any) -> str:
    event_id = event.get("id") if isinstance(event, dict) else None
    return f"event {str(event_id)[:256] if event_id else '(no id)'}"


@broadcast_task(name="broadcast.fan_out", max_retries=None, describe_args=_describe_event)
def fan_out(
    self: BroadcastTask, event: Any = None, *extra: Any, **unexpected: Any
) -> dict[str, Any]:
    """Validate, store once, append to each eligible destination's backlog.

    An invalid event (or a message from another client with other arguments) is recorded
    once with its reason and ends REJECTED (`FinalState`: Flower shows the reason, no
    traceback); its message is acknowledged and never retried (the same bytes would fail
    the same way). The message is the event's only copy until
    its trace is stored, so nothing else may acknowledge it away: an unreachable store
    retries the task (a retry after a partial run is recognised, see `broadcast_engine.intake`), and
    when even the retry cannot be sent (the broker is down too) the message is requeued.
    A bug is recorded as a rejected event with its type, never lost silently.
    """
    from redis import RedisError

    from broadcast_engine.backoff import STORE_RETRY  # the worker's side
    from broadcast_engine.intake import accept, record_internal_error

    try:
        intake = accept(event, extra, unexpected)
    except RedisError:
        self.retry_or_requeue(STORE_RETRY.delay(self.request.retries))
    except Exception as exc:  # boundary: a bug in validation or routing, recorded
        record_internal_error(event, exc)
        raise FinalState(REJECTED, f"internal error: {type(exc).__name__}") from None
    if intake.rejected is not None:
        raise FinalState(REJECTED, intake.rejected)
    return intake.shown()


# What gateways import: `from tasks import broadcast; broadcast.delay(event)`.
broadcast = fan_out
__all__ = ["broadcast", "fan_out"]
