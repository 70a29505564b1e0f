"""`broadcast.fan_out`: validate the gateway's event and enqueue one delivery per destination."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any

from celery import Task

from tasks.app import broadcast_task
from tasks.deliver import Job, deliver, park_unattempted
from tasks.eligibility import Decision, decide
from tasks.events import InvalidEvent, build_trace, event_id_of
from tasks.owner_cache import OwnerCache
from tasks.runtime import runtime

logger = logging.getLogger("broadcast.fan_out")


@cache
def _owner_cache() -> OwnerCache:
    return OwnerCache(runtime().store)


def _describe_event(event: Any, *_: Any, **__: Any) -> str:
    return f"event {event_id_of(event) or '(no id)'}"


@broadcast_task(name="broadcast.fan_out", describe_args=_describe_event)
def fan_out(self: Task, event: Any) -> None:
    """Entry point for gateways: `broadcast.delay(event)`.

    An invalid event is rejected here once, with its reason logged and counted; it is
    never retried and never raises (the same bytes would fail the same way).
    """
    try:
        trace = build_trace(event)
    except InvalidEvent as exc:
        _reject(event, exc)
        return
    snapshot = _owner_cache().snapshot(trace.owner)
    skipped: list[tuple[str, str]] = []
    eligible: list[str] = []
    to_park: list[str] = []
    for route in snapshot.routes:
        decision = decide(route, trace) if snapshot.enabled else Decision.OWNER_DISABLED
        if decision is Decision.ELIGIBLE:
            eligible.append(route.id)
        elif decision is Decision.PARK:
            to_park.append(route.id)
        else:
            skipped.append((route.id, decision.value))
    if skipped:
        runtime().store.count_many(skipped)
    if not eligible and not to_park:
        return
    wire = trace.to_wire()
    accepted_at = time.time()
    for destination_id in eligible:
        deliver.apply_async(args=(destination_id, wire, accepted_at))
    for destination_id in to_park:
        record = runtime().store.get_destination(destination_id)
        if record is not None:
            park_unattempted(runtime(), Job(record, trace, wire, accepted_at), accepted_at)
    logger.info(
        "broadcast.fan_out.enqueued request=%s owner=%s destinations=%d parked=%d skipped=%d",
        trace.request_id,
        trace.owner,
        len(eligible),
        len(to_park),
        len(skipped),
    )


def _reject(event: Any, exc: InvalidEvent) -> None:
    logger.warning("broadcast.event.rejected %s", exc)
    runtime().store.record_rejected_event(
        _owner_of(event),
        {
            "id": exc.event_id,
            "owner": _owner_of(event),
            "reason": exc.reason,
            "at": datetime.now(UTC).isoformat(),
        },
    )


def _owner_of(event: Any) -> str | None:
    """The owner a broken event would have had, when its ids are readable."""
    if not isinstance(event, Mapping):
        return None
    org_id, user_id = event.get("org_id"), event.get("user_id")
    if isinstance(org_id, str) and org_id:
        return f"org:{org_id}"
    if isinstance(user_id, str) and user_id:
        return f"user:{user_id}"
    return None


# What gateways import: `from tasks import broadcast; broadcast.delay(event)`.
broadcast = fan_out
__all__ = ["broadcast", "fan_out"]
