"""Records the settings store keeps: destinations, their health, owners' routing snapshots."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

from settings.filter_rules import RuleFilter, compile_rules

# An owner id (the part after `user:` / `org:`): what a gateway's `user_id` and `org_id`
# must be too, so an event can only ever name an owner these settings could have. `\Z`,
# not `$`: `$` also matches before a trailing newline.
OWNER_ID = r"[A-Za-z0-9_.@-]{1,128}"
OWNER_PATTERN = re.compile(rf"^(user|org):{OWNER_ID}\Z")


class Health(StrEnum):
    HEALTHY = "healthy"
    AUTH_FAILED = "auth_failed"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class DestinationRecord:
    """A destination as stored. `sealed_secrets` is the MultiFernet token of the secret fields."""

    id: str
    owner: str
    type: str
    name: str
    config: dict[str, Any]
    sealed_secrets: str
    api_keys: tuple[str, ...] = ()
    exclude_api_keys: tuple[str, ...] = ()
    sampling_rate: float = 1.0
    privacy: bool = False
    enabled: bool = True
    created_at: str = ""
    updated_at: str = ""
    # Validated `settings.filter_rules` rules; None (and records saved before) = no rules.
    filter_rules: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> DestinationRecord:
        data = json.loads(raw)
        data["api_keys"] = tuple(data["api_keys"])
        data["exclude_api_keys"] = tuple(data["exclude_api_keys"])
        return cls(**data)


class Circuit(StrEnum):
    CLOSED = "closed"
    OPEN = "open"


@dataclass(frozen=True)
class HealthRecord:
    """A destination's health. Times are ISO 8601 except the unix-seconds floats of the
    circuit and the backoff, which deliver tasks and the sweep compare with their clock."""

    status: Health = Health.HEALTHY
    reason: str = ""
    changed_at: str = ""
    checked_at: str = ""
    last_error: str = ""
    last_error_at: str = ""
    circuit: Circuit = Circuit.CLOSED
    circuit_opened_at: float = 0.0
    probe_at: float = 0.0
    # Short-tier backoff: no attempt before this time; failures since the last success.
    backoff_until: float = 0.0
    consecutive_failures: int = 0
    # Failed probes since the circuit opened (indexes the probe schedule).
    probe_step: int = 0


@dataclass(frozen=True)
class Route:
    """What fan_out needs of a destination to decide eligibility; no secrets, no config."""

    id: str
    type: str
    enabled: bool
    health: Health
    circuit: Circuit
    api_keys: frozenset[str]
    exclude_api_keys: frozenset[str]
    sampling_rate: float
    # Not hashed: a dict is not hashable, and the id already identifies the route.
    filter_rules: dict[str, Any] | None = field(default=None, hash=False)

    @classmethod
    def from_record(cls, record: DestinationRecord, health: HealthRecord) -> Route:
        return cls(
            id=record.id,
            type=record.type,
            enabled=record.enabled,
            health=health.status,
            circuit=health.circuit,
            api_keys=frozenset(record.api_keys),
            exclude_api_keys=frozenset(record.exclude_api_keys),
            sampling_rate=record.sampling_rate,
            filter_rules=record.filter_rules,
        )

    @cached_property
    def rule_filter(self) -> RuleFilter | None:
        """The compiled filter rules, built once per route, i.e. once per routing snapshot
        (cached_property writes the instance dict, which a frozen dataclass allows)."""
        return compile_rules(self.filter_rules)


@dataclass(frozen=True)
class OwnerSnapshot:
    """An owner's routing state at one settings version."""

    version: int
    enabled: bool
    routes: tuple[Route, ...] = field(default_factory=tuple)
