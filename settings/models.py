"""Records the settings store keeps: destinations, their health, owners' routing snapshots."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

OWNER_PATTERN = re.compile(r"^(user|org):[A-Za-z0-9_.@-]{1,128}$")


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
    """A destination's health. Times are ISO 8601 except the circuit's unix-seconds floats,
    which the sweep compares with its clock."""

    status: Health = Health.HEALTHY
    reason: str = ""
    changed_at: str = ""
    checked_at: str = ""
    last_error: str = ""
    last_error_at: str = ""
    circuit: Circuit = Circuit.CLOSED
    circuit_opened_at: float = 0.0
    probe_at: float = 0.0


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


@dataclass(frozen=True)
class OwnerSnapshot:
    """An owner's routing state at one settings version."""

    version: int
    enabled: bool
    routes: tuple[Route, ...] = field(default_factory=tuple)
