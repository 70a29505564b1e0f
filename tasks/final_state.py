"""How a task ends in a state that is neither SUCCESS nor a crash: `FinalState`.

Celery knows two endings for a task: it returns (SUCCESS) or it raises (FAILURE, with a
traceback). Broadcast has outcomes that are neither: an invalid event is REJECTED
(recorded once, never retried); a delivery run whose every trace was dead-lettered, or a
circuit probe that failed, is a FAILURE whose reason is the vendor's answer, not a
traceback. A task ends that way by raising `FinalState`: Celery treats it as `Ignore`
(the message is acknowledged, nothing is retried, no traceback is logged), and the
worker's main process sends the task event that Flower shows
(`tasks.outcome_request.OutcomeRequest`).

This module stays light: gateways import `tasks`, and only workers import the request
class.
"""

from __future__ import annotations

from typing import Any

from celery.exceptions import Ignore

REJECTED = "REJECTED"
FAILURE = "FAILURE"
STATES = (REJECTED, FAILURE)


class FinalState(Ignore):
    """End the task in `state` (`REJECTED` or `FAILURE`) with `reason` (shown by Flower
    as the task's exception: it must hold no secret and no payload) and, optionally,
    `result` (shown as its result). Picklable: it travels from the pool's child to the
    worker's main process."""

    def __init__(self, state: str, reason: str, result: dict[str, Any] | None = None) -> None:
        if state not in STATES:
            raise ValueError(f"final state must be one of {', '.join(STATES)}, not {state!r}")
        super().__init__(state, reason, result)
        self.state, self.reason, self.result = state, reason, result

    def __repr__(self) -> str:  # what Celery's "Task ... ignored: ..." log line shows
        return f"{self.state}: {self.reason}"

    __str__ = __repr__
