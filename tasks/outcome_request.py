"""The worker's side of `FinalState`: the task event Flower turns into the final state.

Flower keeps each task's state with Celery's event state (`celery.events.state`), which
ranks states: an event whose state ranks "earlier" than the task's current one is merged
without changing the state. REJECTED ranks before RECEIVED and STARTED (Celery meant it
for a message refused before it ran), so Celery's own `task-rejected` after
`task-started` leaves the task STARTED; and since Celery 5.7 a `Reject(requeue=False)`
also sends `task-failed` with a traceback first, which is what Flower showed for an
invalid event. So for REJECTED this request sends one event of its own, `task-REJECTED`,
whose `state` field the merge copies onto the task (a known event type would also store
a raw epoch under its name, which Flower's task page prints as is); for FAILURE, an
ordinary `task-failed` with the reason as its exception and no traceback.

The event is sent by the worker's main process, after the pool's child finished the
task: the main process sends `task-received` and `task-started` too, so the final event
always comes last (an event from the child could overtake `task-started`).
"""

from __future__ import annotations

import time
from typing import Any

from billiard.einfo import ExceptionWithTraceback  # type: ignore[attr-defined]  # untyped
from celery.utils.saferepr import saferepr
from celery.worker.request import Request

from tasks.final_state import REJECTED, FinalState


class OutcomeRequest(Request):
    """Celery's request, plus `FinalState`'s task event (see the module's docstring)."""

    def send_event(self, type: str, **fields: Any) -> None:
        if type == "task-succeeded":
            # A retried task keeps its id: without this, Flower would show the success
            # with the exception of its last retry (`Retry(...)`) beside it.
            fields.setdefault("exception", None)
            fields.setdefault("traceback", None)
        super().send_event(type, **fields)

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if not isinstance(exc, FinalState):
            super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
            return
        # Celery's handling of `Ignore`: the task is done and its message acknowledged.
        super().on_failure(exc_info, send_failed_event=False, return_ok=return_ok)
        fields: dict[str, Any] = {"exception": exc.reason}
        if self.time_start:
            fields["runtime"] = time.time() - self.time_start
        if exc.result is not None:
            fields["result"] = saferepr(exc.result, self.task.resultrepr_maxsize)
        if exc.state == REJECTED:
            self.send_event("task-REJECTED", state=REJECTED, **fields)
        else:
            self.send_event("task-failed", **fields)
