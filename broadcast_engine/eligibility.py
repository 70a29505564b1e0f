"""Which destinations get a trace (ARCHITECTURE.md, "Eligibility"), as pure functions."""

from __future__ import annotations

import hashlib
from enum import StrEnum

from destinations.trace import Trace
from settings.models import Circuit, Health, Route


class Decision(StrEnum):
    ELIGIBLE = "eligible"
    OWNER_DISABLED = "skipped_owner_disabled"
    DISABLED = "skipped_disabled"
    WAIT = "waiting"
    FILTERED_BY_KEY = "filtered_by_key"
    FILTERED_BY_RULE = "filtered_by_rule"
    SAMPLED_OUT = "sampled_out"


def decide(route: Route, trace: Trace) -> Decision:
    """The decision for one destination, checked in the documented order.

    (The owner's own enabled flag is checked once per event by the caller.)
    """
    if not route.enabled:
        return Decision.DISABLED
    if not passes_key_filter(route, trace.api_key_id):
        return Decision.FILTERED_BY_KEY
    # Compiled once per route (i.e. per routing snapshot), not per event.
    if route.rule_filter is not None and not route.rule_filter.matches(trace):
        return Decision.FILTERED_BY_RULE
    if not sampled_in(route.id, trace.session_id or trace.request_id, route.sampling_rate):
        return Decision.SAMPLED_OUT
    if route.health is Health.AUTH_FAILED or route.circuit is Circuit.OPEN:
        # Eligible, but the destination cannot take it now (credentials rejected, circuit
        # open): the trace waits in its backlog, no task is sent; beat kicks it when due.
        return Decision.WAIT
    return Decision.ELIGIBLE


def passes_key_filter(route: Route, api_key_id: str | None) -> bool:
    """Exclude wins; an empty include list admits every key and keyless requests."""
    if api_key_id is not None and api_key_id in route.exclude_api_keys:
        return False
    if not route.api_keys:
        return True
    return api_key_id is not None and api_key_id in route.api_keys


def sampled_in(destination_id: str, sampling_key: str, rate: float) -> bool:
    """Deterministic per (destination, session or request): a session is wholly in or out."""
    if rate >= 1.0:
        return True
    digest = hashlib.sha256(f"{destination_id}\x1f{sampling_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < rate * 2**64
