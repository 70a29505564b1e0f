"""Fan-out's work: validate the event, store its trace once, append it to each eligible
destination's backlog, and make sure a deliver task is queued for each.

Imported by the worker only (it loads validation, the store and the settings cache), so
the gateway's `from tasks import broadcast` stays light.

Redis work per accepted event, in one round trip: one atomic step (`Backlog.append_event`)
stores the trace (`SET NX`, with its hold count: one per backlog), and appends it with
an `XADD` per destination; one `MGET` finds which destinations' queued flags are set,
and each flag that is not is set there. A redelivered fan-out (its worker died, or the
gateway sent the event twice) finds the trace stored with its count, and does nothing.
(On a Redis Cluster the trace is stored first and marked complete with the appends; a
fan-out that died in between is redone.) What became of each event (fanned out,
filtered, duplicate) is counted in the process and written about once a second
(`broadcast_engine.event_tally`), not with a command per event; a rejection is counted by
reason class in the write that records it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

from kombu.exceptions import OperationalError

from broadcast_broker.task_client import DELIVER_TASK, describe_delivery
from broadcast_engine.eligibility import Decision, decide
from broadcast_engine.event_tally import tally
from broadcast_engine.events import InvalidEvent, RejectReason, build_trace, event_id_of
from broadcast_engine.owner_cache import OwnerCache
from broadcast_engine.runtime import runtime
from settings.event_limits import EventLimits
from settings.models import OWNER_PATTERN
from settings.store import UNKNOWN_OWNER

logger = logging.getLogger("broadcast.fan_out")


@dataclass
class Intake:
    """What fan-out did with one event (a Flower-visible summary)."""

    request_id: str | None
    rejected: str | None = None
    appended: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    duplicate: bool = False

    def shown(self) -> dict[str, Any]:
        return {
            "request": self.request_id,
            "appended": len(self.appended),
            "skipped": len(self.skipped),
            "duplicate": self.duplicate,
        }


@cache
def _owner_cache() -> OwnerCache:
    return OwnerCache(runtime().store)


@cache
def _limits() -> EventLimits:
    return EventLimits.from_config(runtime().config)


def accept(
    event: Any, extra: tuple[Any, ...] = (), unexpected: Mapping[str, Any] | None = None
) -> Intake:
    """Fan one event out. An invalid event is recorded as rejected (never raised)."""
    current = runtime()
    try:
        if extra or unexpected:
            raise InvalidEvent(
                event_id_of(event),
                "the task takes exactly one argument, the event",
                RejectReason.ARGUMENTS,
            )
        trace = build_trace(event, _limits())
    except InvalidEvent as exc:
        _reject(event, exc)
        return Intake(exc.event_id, rejected=str(exc))
    intake = Intake(trace.request_id)
    snapshot = _owner_cache().snapshot(trace.owner)
    kick: list[str] = []
    for route in snapshot.routes:
        decision = decide(route, trace) if snapshot.enabled else Decision.OWNER_DISABLED
        if decision is Decision.ELIGIBLE:
            intake.appended.append(route.id)
            kick.append(route.id)
        elif decision is Decision.WAIT:
            # Paused or probing: the entry waits in the backlog; beat kicks it when due.
            intake.appended.append(route.id)
        else:
            intake.skipped[route.id] = decision.value
    if not intake.appended:
        if intake.skipped:
            current.store.count_many(intake.skipped.items())
        tally().add("filtered")
        return intake
    write = current.traces.write_for(trace, len(intake.appended))
    to_kick = current.backlog.append_event(
        [(destination_id, destination_id in kick) for destination_id in intake.appended],
        trace.request_id,
        time.time(),
        write,
    )
    if to_kick is None:
        logger.info(
            "broadcast.fan_out.duplicate request=%s owner=%s", trace.request_id, trace.owner
        )
        intake.duplicate = True
        tally().add("duplicate")
        return intake
    if intake.skipped:
        current.store.count_many(intake.skipped.items())
    if to_kick:  # most events find their destinations' tasks already queued
        types = {route.id: route.type for route in snapshot.routes}
        for destination_id in to_kick:
            _kick(destination_id, types[destination_id], trace.request_id)
    tally().add("fanned_out")
    logger.info(
        "broadcast.fan_out.accepted request=%s owner=%s destinations=%d skipped=%d",
        trace.request_id,
        trace.owner,
        len(intake.appended),
        len(intake.skipped),
    )
    return intake


def _kick(destination_id: str, destination_type: str, request_id: str) -> None:
    """Send the destination's deliver task, described (Flower) by its type and the
    request that sent it. The event is already safe in its backlog: if the broker cannot
    take the task now, beat's sweep sends one once the flag expires."""
    argsrepr = describe_delivery(destination_id, destination_type, request_id)
    try:
        runtime().tasks.send(DELIVER_TASK, (destination_id,), argsrepr=argsrepr)
    except OperationalError as exc:
        logger.warning(
            "broadcast.fan_out.kick_failed destination=%s error=%s",
            destination_id,
            type(exc).__name__,
        )


def record_internal_error(event: Any, exc: Exception) -> None:
    """A bug met this event: log it with its traceback and record it as rejected, so it
    is listed (`broadcast rejected`) instead of vanishing."""
    logger.exception("broadcast.fan_out.internal_error event=%s", event_id_of(event))
    _reject(
        event,
        InvalidEvent(
            event_id_of(event), f"internal error: {type(exc).__name__}", RejectReason.INTERNAL_ERROR
        ),
    )


def _reject(event: Any, exc: InvalidEvent) -> None:
    owner = _owner_of(event)
    logger.warning("broadcast.event.rejected %s owner=%s", exc, owner or UNKNOWN_OWNER)
    runtime().store.record_rejected_event(
        owner,
        {
            "id": exc.event_id,
            "owner": owner or UNKNOWN_OWNER,
            "reason": exc.reason,
            "at": datetime.now(UTC).isoformat(),
        },
        reason_class=exc.kind.value,
    )


def _owner_of(event: Any) -> str | None:
    """The owner a broken event would have had, if its ids name a possible owner (the
    characters and length of `settings.models.OWNER_PATTERN`); None otherwise, so a
    hostile id never becomes a key in the store."""
    if not isinstance(event, Mapping):
        return None
    org_id, user_id = event.get("org_id"), event.get("user_id")
    if org_id is not None and org_id != "":
        owner = f"org:{org_id}" if isinstance(org_id, str) else None
    else:
        owner = f"user:{user_id}" if isinstance(user_id, str) else None
    return owner if owner is not None and OWNER_PATTERN.match(owner) else None
