"""The worker's consumer: no task message can stop a worker, on either broker.

Celery's consumer hands each task message to the task's strategy, which trusts the
message's shape; a malformed one raised in the worker's main process, which exited, and
the message (never acknowledged) stopped every worker after it. `VettingConsumer`
(celeryconfig.py's `worker_consumer`) puts one check in front of the strategy:

- `broadcast_broker.message_vetting.problem` names what Celery could not take (the transport's
  unreadable mark, headers, content type, size, decoding, the body's shape, the fields
  Celery reads); such a message is set aside;
- anything Celery's own handler still raises for a message sets the message aside too,
  except a broker connection error (it reaches Celery's reconnect logic) and an error of
  Redis or the network (the message is sound: it is requeued, never set aside);
- Celery's own refusals (a body it cannot decode, including one whose compression
  inflates past the limit, an unknown task, an invalid one) are set aside the same way
  instead of being logged with the message body.

Setting aside = recorded in the settings store (broadcast_engine/unreadable_messages.py: reason,
size and SHA-256 of the bytes, task name and id), logged as
`broadcast.broker.unreadable`, and rejected without requeue, so the broker drops it. If
the store cannot take the record, the log line is the record: the message is dropped all
the same, because keeping it would stop the worker again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any

from celery import signals
from kombu.exceptions import OperationalError
from redis import RedisError

from broadcast_broker.bounded_compression import InflateRefused
from broadcast_broker.message_codec import message_bytes_limit
from broadcast_broker.message_vetting import (
    MAX_ID_CHARS,
    RawFacts,
    VettingLimits,
    problem,
    raw_bytes,
    transport_mark,
)
from broadcast_broker.stream_transport import TAG_SEPARATOR, split_delivery_tag
from broadcast_engine.task_event_batching import EventBatchingConsumer
from broadcast_engine.unreadable_messages import UnreadableMessage
from settings.event_limits import EventLimits

logger = logging.getLogger("broadcast.broker")

# A body up to this many times the largest message an event at the limit makes is
# decoded, so the event it carries is rejected naming the event and the limit; a larger
# one is set aside unread (decoding it would cost several times its size).
DECODED_BODY_FACTOR = 2
# What says the infrastructure failed, not the message: such a message is requeued.
INFRASTRUCTURE_ERRORS = (OperationalError, RedisError, OSError)


class VettingConsumer(EventBatchingConsumer):
    """Celery's consumer with every task message vetted first (see the module docstring),
    its task events published in batches (broadcast_engine/task_event_batching.py)."""

    # Set by Celery's `Consumer.__init__` from the broker connection (celery-types omits
    # them): what a failing connection or channel raises.
    connection_errors: tuple[type[BaseException], ...]
    channel_errors: tuple[type[BaseException], ...]

    @cached_property
    def vetting_limits(self) -> VettingLimits:
        from broadcast_engine.runtime import runtime

        limits = EventLimits.from_config(runtime().config)
        return VettingLimits(max_body_bytes=DECODED_BODY_FACTOR * message_bytes_limit(limits))

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        handle = super().create_task_handler(*args, **kwargs)
        limits = self.vetting_limits
        passes = self.connection_errors + self.channel_errors

        def on_task_received(message: Any) -> Any:
            reason = problem(message, limits)
            if reason is not None:
                return self.set_aside(message, reason)
            try:
                return handle(message)
            except passes:
                raise
            except INFRASTRUCTURE_ERRORS as exc:
                # Redis or the network failed (Celery publishes the task-received event as
                # it reads a message): the message is sound, so it goes back to its queue,
                # never aside (a requeue Redis cannot take now is made once it answers).
                logger.warning(
                    "broadcast.broker.requeued_on_error task_id=%s error=%s",
                    _field(message, "id"),
                    type(exc).__name__,
                )
                if not message.acknowledged:
                    message.reject_log_error(logger, self.connection_errors, requeue=True)
                return None
            except Exception as exc:  # boundary: one message must not stop the worker
                return self.set_aside(message, f"{type(exc).__name__} while Celery read it")

        return on_task_received

    # Celery's own refusals, recorded like the rest instead of logged with the body.

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        if isinstance(exc, InflateRefused):
            reason = f"the compressed body was refused: {exc}"
        else:
            reason = f"the body could not be decoded ({type(exc).__name__})"
        self.set_aside(message, reason)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self.set_aside(message, "no task is named in the headers or the body")

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self.set_aside(message, f"unknown task {_field(message, 'task')!r}")

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self.set_aside(message, f"invalid task message: {str(exc)[:300]}")

    def set_aside(self, message: Any, reason: str) -> None:
        """Record `message` as unreadable, then reject it without requeue. Never raises
        for the message or the store; a broker connection error passes (Celery
        reconnects, and the message comes back to be set aside then)."""
        marked = transport_mark(message.headers)
        facts = marked[1] if marked is not None else RawFacts.of(raw_bytes(message.body))
        entry = UnreadableMessage(
            queue=_queue_of(message),
            reason=reason,
            size=facts.size,
            sha256=facts.sha256,
            task=_field(message, "task"),
            task_id=_field(message, "id"),
            content_type=message.content_type if isinstance(message.content_type, str) else None,
        )
        from broadcast_engine.runtime import runtime

        try:
            runtime().unreadable.record(entry, time.time())
            recorded = True
        except RedisError as exc:
            recorded = False
            logger.critical(
                "broadcast.broker.unreadable_unrecorded queue=%s error=%s",
                entry.queue,
                type(exc).__name__,
            )
        logger.error(
            "broadcast.broker.unreadable queue=%s task_id=%s size=%d sha256=%s recorded=%s "
            "reason=%s",
            entry.queue,
            entry.task_id,
            entry.size,
            entry.sha256,
            recorded,
            reason,
        )
        if not message.acknowledged:
            message.reject_log_error(logger, self.connection_errors)
        signals.task_rejected.send(sender=self, message=message, exc=None)


def _field(message: Any, name: str) -> str | None:
    """A task field (`task`, `id`) from the headers, else the protocol 1 body, if it is
    a short string; never decodes a body that was not decoded already."""
    headers = message.headers if isinstance(message.headers, Mapping) else {}
    value = headers.get(name)
    # kombu keeps a decoded body in `_decoded_cache` (kombu 5.x); a protocol 1 task
    # carries its name and id there.
    decoded = getattr(message, "_decoded_cache", None)
    if value is None and isinstance(decoded, Mapping):
        value = decoded.get(name)
    return value[:MAX_ID_CHARS] if isinstance(value, str) else None


def _queue_of(message: Any) -> str | None:
    """The queue a message came from: the stream transport's delivery tag says it; on
    AMQP the routing key is the queue's name (each queue has its own)."""
    tag = message.delivery_tag
    if isinstance(tag, str) and TAG_SEPARATOR in tag:
        return split_delivery_tag(tag)[0]
    info = message.delivery_info if isinstance(message.delivery_info, Mapping) else {}
    routing_key = info.get("routing_key")
    return routing_key if isinstance(routing_key, str) else None
