"""The worker's task events, published in batches a fraction of a second apart.

Celery's worker buffers task events (`task-received`, `task-started`, `task-succeeded`,
...) and publishes the buffer as one `task.multi` message on the next turn of its event
loop, or when 24 are buffered. On a busy worker that turn comes after nearly every task,
so each trace cost about three broker publishes of its own (bench D2: 3.06 `PUBLISH` and
2.6 kB per event at `celery -A tasks worker`). `EventBatchingConsumer` waits
`EVENT_FLUSH_SECONDS` after the first buffered event instead, so one publish carries
what the worker did meanwhile (still at most Celery's 24 events). Flower and any other
event consumer see the same events, in the same order, that much later.

The hold-back ends at the consumer's shutdown: what is buffered is published before
Celery closes the dispatcher. A worker killed with SIGKILL loses its last fraction of a
second of events, as it loses the events of the turn it was in today; events are a view
of the work, never its record (the delivery log and counters are).
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer

# Long enough for a busy worker to fill Celery's 24-event buffer, short enough that
# Flower's task list is never visibly behind.
EVENT_FLUSH_SECONDS = 0.25


class EventBatchingConsumer(Consumer):
    """Celery's consumer, its buffered task events flushed `EVENT_FLUSH_SECONDS` after the
    first one rather than on the next loop turn (see the module docstring)."""

    # Set or defined by Celery's `Consumer` (celery-types omits them): the event loop, and
    # the flush Celery itself calls on the next loop turn.
    hub: Any
    _flush_events: Any

    _event_flush_armed = False

    # celery-types says this returns a callable; Celery's returns None, as this does.
    def on_send_event_buffered(self) -> None:  # type: ignore[override]
        # Called by the dispatcher for each buffered event, possibly from a pool thread:
        # `call_soon` is the hub's thread-safe entry, and the timer is armed from the loop.
        if self.hub is not None and not self._event_flush_armed:
            self._event_flush_armed = True
            self.hub.call_soon(self._arm_event_flush)

    def _arm_event_flush(self) -> None:
        self.hub.call_later(EVENT_FLUSH_SECONDS, self._flush_held_events)

    def _flush_held_events(self) -> None:
        # Disarmed before the flush, so an event buffered while it publishes arms the next.
        self._event_flush_armed = False
        self._flush_events()

    def on_close(self) -> None:
        # The connection failed: the loop restarts and may drop its timers with it.
        self._event_flush_armed = False
        super().on_close()

    def shutdown(self) -> None:
        self._event_flush_armed = False
        self._flush_events()  # what the timer still holds, before Celery closes the dispatcher
        super().shutdown()
