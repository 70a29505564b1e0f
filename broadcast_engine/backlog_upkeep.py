"""Beat's care of the backlogs: expire, bound, and restart them.

Every function takes the runtime and the clock, so tests drive them with a test clock.
For each destination, `upkeep` (called by the sweep every few seconds):

1. a disabled destination's backlog becomes dead letters ("destination disabled");
2. entries older than the retry horizon become dead letters (how long, how often tried);
3. past its caps (entries, bytes) the oldest entries no task holds are dropped
   (`dropped_overflow`, announced to the owner);
4. a backlog with work, no task and nothing to wait for gets a deliver task.

The budget for stored trace bytes across all backlogs (`enforce_budget`) drops the oldest
entries of the destinations holding the most: whoever is furthest behind pays, never a
destination that keeps up. Every entry removed here releases its trace.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from broadcast_engine.backlog import BacklogEntry
from broadcast_engine.dead_letters import letter_json
from broadcast_engine.runtime import Runtime
from settings.models import Circuit, DestinationRecord, Health
from settings.moments import iso

logger = logging.getLogger("broadcast.maintenance")

SCAN_BATCH = 500
LOG_REQUEST_IDS = 50


def upkeep(current: Runtime, record: DestinationRecord, now: float) -> Counter[str]:
    done: Counter[str] = Counter()
    if not record.enabled:
        why = current.store.health(record.id).reason
        reason = f"destination disabled: {why}" if why else "destination disabled"
        done["dead_lettered"] += dead_letter_backlog(current, record, reason, now)
        return done
    done["expired"] += expire_old(current, record, now)
    done["dropped"] += enforce_caps(current, record, now)
    if wants_task(current, record, now):
        current.kick(record.id)
        done["kicked"] += 1
    return done


def wants_task(current: Runtime, record: DestinationRecord, now: float) -> bool:
    """Work waits, no task is queued or working, and the destination may be tried now."""
    if not current.backlog.needs_task(record.id, now):
        return False
    health = current.store.health(record.id)
    if health.status is Health.AUTH_FAILED:
        return False
    if health.circuit is Circuit.OPEN:
        return health.probe_at <= now
    return health.backoff_until <= now


def dead_letter_backlog(
    current: Runtime, record: DestinationRecord, reason: str, now: float
) -> int:
    total = 0
    while entries := current.backlog.take_oldest(record.id, SCAN_BATCH):
        total += _dead_letter(current, record, entries, reason, now)
    return total


def expire_old(current: Runtime, record: DestinationRecord, now: float) -> int:
    horizon = current.config.retry_horizon_seconds
    entries = current.backlog.take_oldest(record.id, SCAN_BATCH, accepted_before=now - horizon)
    if not entries:
        return 0
    attempts = current.backlog.attempts(record.id, [e.request_id for e in entries])
    reasons = {
        e.request_id: f"gave up after {(now - e.accepted_at) / 3600:.1f} h and "
        f"{attempts.get(e.request_id, 0)} attempt(s): {_last_error(current, record)}"
        for e in entries
    }
    return _dead_letter(current, record, entries, reasons, now)


def enforce_caps(current: Runtime, record: DestinationRecord, now: float) -> int:
    config = current.config
    stats = current.backlog.stats(record.id, now)
    excess = stats.depth - config.backlog_max_entries
    if stats.bytes > config.backlog_max_bytes and stats.depth:
        mean = stats.bytes / stats.depth
        excess = max(excess, int((stats.bytes - config.backlog_max_bytes) / mean) + 1)
    if excess <= 0:
        return 0
    return drop_oldest(current, record, excess, "backlog over its cap", now)


def enforce_budget(current: Runtime, records: Sequence[DestinationRecord], now: float) -> int:
    """Keep the trace bytes that backlogs hold within the budget, dropping from the
    destinations that hold the most (the furthest behind), oldest entries first.

    A trace in several backlogs is counted in each: the budget errs on the safe side."""
    budget = current.config.trace_budget_bytes
    holding = {r.id: current.backlog.stats(r.id, now) for r in records}
    total = sum(stats.bytes for stats in holding.values())
    dropped = 0
    by_id = {r.id: r for r in records}
    for destination_id, stats in sorted(holding.items(), key=lambda item: -item[1].bytes):
        if total <= budget or stats.bytes <= 0:
            break
        mean = max(stats.bytes / stats.depth, 1.0)
        count = min(int((total - budget) / mean) + 1, stats.depth)
        dropped += drop_oldest(current, by_id[destination_id], count, "trace budget reached", now)
        total -= stats.bytes - current.backlog.stats(destination_id, now).bytes
    return dropped


def drop_oldest(
    current: Runtime, record: DestinationRecord, count: int, reason: str, now: float
) -> int:
    entries = current.backlog.take_oldest(record.id, count)
    if not entries:
        return 0
    current.traces.release(record.owner, [e.request_id for e in entries])
    current.health.dropped(record, len(entries), reason, now)
    _log(current, record, entries, now, outcome="dropped", error=reason, next_step="-")
    logger.warning(
        "broadcast.backlog.dropped destination=%s count=%d reason=%s",
        record.id,
        len(entries),
        reason,
    )
    return len(entries)


def _dead_letter(
    current: Runtime,
    record: DestinationRecord,
    entries: Sequence[BacklogEntry],
    reason: str | dict[str, str],
    now: float,
) -> int:
    attempts = current.backlog.attempts(record.id, [e.request_id for e in entries])
    for entry in entries:
        why = reason if isinstance(reason, str) else reason[entry.request_id]
        current.dead_letters.add(
            record.id,
            letter_json(
                request_id=entry.request_id,
                owner=record.owner,
                reason=why,
                trace=current.traces.get_wire(record.owner, entry.request_id),
                accepted_at=entry.accepted_at,
                attempts=attempts.get(entry.request_id, 0),
                now=now,
            ),
        )
    current.traces.release(record.owner, [e.request_id for e in entries])
    # A replayed entry dead-lettered again is counted as a replay: `failed` counts each
    # trace once.
    replays = sum(entry.replay for entry in entries)
    if replays < len(entries):
        current.store.count(record.id, "failed", len(entries) - replays)
    if replays:
        current.store.count(record.id, "replay_failed", replays)
    last = reason if isinstance(reason, str) else next(iter(reason.values()))
    current.health.dead_lettered(record, len(entries), last, now)
    _log(current, record, entries, now, outcome="failed", error=last, next_step="dead-lettered")
    return len(entries)


def _log(
    current: Runtime,
    record: DestinationRecord,
    entries: Sequence[BacklogEntry],
    now: float,
    *,
    outcome: str,
    error: str,
    next_step: str,
) -> None:
    """One delivery-log entry for entries that left the backlog without a vendor request."""
    current.store.record_attempt(
        record.id,
        {
            "at": iso(now),
            "request_id": entries[0].request_id,
            "request_ids": [e.request_id for e in entries[:LOG_REQUEST_IDS]],
            "traces": len(entries),
            "outcome": outcome,
            "error": error,
            "next": next_step,
        },
    )


def _last_error(current: Runtime, record: DestinationRecord) -> str:
    return current.store.health(record.id).last_error or "never delivered"
