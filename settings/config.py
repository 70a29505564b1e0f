"""Runtime configuration, read once, with one precedence order.

Explicit argument > environment variable > default. Nothing else in the project reads
the environment; everything takes a `BroadcastConfig` (or one of its values) injected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class ConfigurationError(RuntimeError):
    """A setting is missing or malformed; raised at start-up, never mid-delivery."""


@dataclass(frozen=True)
class BroadcastConfig:
    broker_url: str = DEFAULT_REDIS_URL
    store_url: str = DEFAULT_REDIS_URL
    encryption_keys: tuple[str, ...] = ()
    allow_private_networks: bool = False
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    delivery_log_size: int = 200
    # Short retry tier (seconds): base and cap of the exponential backoff, and how many.
    retry_base_seconds: float = 2.0
    retry_cap_seconds: float = 120.0
    max_short_retries: int = 6
    # Long retry tier: the waits between attempts of a parked delivery (about a day in all).
    park_schedule_seconds: tuple[float, ...] = (300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    # Circuit per destination: this many retryable failures within the window open it; an
    # open circuit lets one probe through per interval.
    circuit_failures: int = 5
    circuit_window_seconds: float = 60.0
    circuit_probe_seconds: float = 30.0
    # Parked deliveries a sweep re-queues per destination (the drain rate after recovery).
    drain_per_sweep: int = 50
    # How long a swept delivery is leased before it may be swept again.
    claim_lease_seconds: float = 600.0
    # Credentials rejected for this long: the destination is disabled.
    auth_failed_disable_seconds: float = 3 * 86400.0
    dead_letter_retention_seconds: float = 7 * 86400.0
    # Re-validation of credentials (beat): every destination, and rejected ones more often.
    revalidate_seconds: float = 6 * 3600.0
    auth_failed_recheck_seconds: float = 900.0
    # Dead letters of one destination that trigger a notification to its owner.
    dead_letter_notify_threshold: int = 10


# Setting name -> environment variable.
ENVIRONMENT = {
    "broker_url": "BROADCAST_BROKER_URL",
    "store_url": "BROADCAST_STORE_URL",
    "encryption_keys": "BROADCAST_ENCRYPTION_KEYS",
    "allow_private_networks": "BROADCAST_ALLOW_PRIVATE_NETWORKS",
    "connect_timeout": "BROADCAST_CONNECT_TIMEOUT",
    "read_timeout": "BROADCAST_READ_TIMEOUT",
    "delivery_log_size": "BROADCAST_DELIVERY_LOG_SIZE",
    "retry_base_seconds": "BROADCAST_RETRY_BASE_SECONDS",
    "retry_cap_seconds": "BROADCAST_RETRY_CAP_SECONDS",
    "max_short_retries": "BROADCAST_MAX_SHORT_RETRIES",
    "park_schedule_seconds": "BROADCAST_PARK_SCHEDULE_SECONDS",
    "circuit_failures": "BROADCAST_CIRCUIT_FAILURES",
    "circuit_window_seconds": "BROADCAST_CIRCUIT_WINDOW_SECONDS",
    "circuit_probe_seconds": "BROADCAST_CIRCUIT_PROBE_SECONDS",
    "drain_per_sweep": "BROADCAST_DRAIN_PER_SWEEP",
    "claim_lease_seconds": "BROADCAST_CLAIM_LEASE_SECONDS",
    "auth_failed_disable_seconds": "BROADCAST_AUTH_FAILED_DISABLE_SECONDS",
    "dead_letter_retention_seconds": "BROADCAST_DEAD_LETTER_RETENTION_SECONDS",
    "revalidate_seconds": "BROADCAST_REVALIDATE_SECONDS",
    "auth_failed_recheck_seconds": "BROADCAST_AUTH_FAILED_RECHECK_SECONDS",
    "dead_letter_notify_threshold": "BROADCAST_DEAD_LETTER_NOTIFY_THRESHOLD",
}


def load_config(environ: Mapping[str, str] | None = None, **explicit: Any) -> BroadcastConfig:
    """Build the config: `explicit` wins over `environ` (default `os.environ`), then defaults.

    The store defaults to the broker's Redis. Raises `ConfigurationError` naming the
    variable when a value does not parse.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for spec in fields(BroadcastConfig):
        if spec.name in explicit:
            values[spec.name] = explicit[spec.name]
            continue
        raw = environ.get(ENVIRONMENT[spec.name])
        if raw is None or raw == "":
            continue
        values[spec.name] = _parse(spec.name, raw)
    if "store_url" not in values and "broker_url" in values:
        values["store_url"] = values["broker_url"]
    return BroadcastConfig(**values)


def _parse(name: str, raw: str) -> Any:
    variable = ENVIRONMENT[name]
    default = getattr(BroadcastConfig, name)
    try:
        if name == "encryption_keys":
            return tuple(key.strip() for key in raw.split(",") if key.strip())
        if isinstance(default, tuple):
            return tuple(float(item) for item in raw.split(",") if item.strip())
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return raw
    except ValueError:
        raise ConfigurationError(f"{variable} has an invalid value") from None
