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
    # Retries (seconds): a failed batch waits a full-jitter exponential backoff of its own
    # from the base, capped, while the destination goes on with new batches; a vendor's
    # 429 or Retry-After makes the whole destination wait (Retry-After is a floor).
    retry_base_seconds: float = 2.0
    retry_cap_seconds: float = 120.0
    # The circuit per destination opens when failures dominate: within the window, at
    # least `circuit_min_attempts` vendor requests of which this share failed, or this many
    # failed batches in a row. An open circuit probes the vendor with one trace after each
    # wait of the probe schedule (the last wait repeats) while the backlog waits in Redis.
    circuit_failure_rate: float = 0.5
    circuit_min_attempts: int = 20
    circuit_window_seconds: float = 60.0
    circuit_consecutive_failures: int = 5
    probe_schedule_seconds: tuple[float, ...] = (30.0, 60.0, 120.0, 300.0)
    # A trace not delivered this long after fan-out accepted it is dead-lettered.
    retry_horizon_seconds: float = 86400.0
    # Deliver tasks working on one destination at once (requests in flight).
    max_in_flight: int = 4
    # A busy destination's next task (traces arrived while a batch was out, fewer than a
    # full batch) waits in the broker, never in a worker slot, until a full batch should
    # have arrived at the rate they came in, at most this long; a destination found idle
    # sends at once (Redis broker only: RabbitMQ's delayed delivery counts whole seconds,
    # so there the next task goes at once). 0.2 s: what a trace may wait for company stays
    # within the p99 latency target (bench row B5, 250 ms); 0.5 s measured p99 328-543 ms.
    batch_gather_seconds: float = 0.2
    # Backlog bounds per destination, and the budget of trace bytes that backlogs may hold
    # in all; past them the oldest entries of whoever is furthest behind drop.
    backlog_max_entries: int = 1_000_000
    backlog_max_bytes: int = 1024 * 1024 * 1024
    trace_budget_bytes: int = 4 * 1024 * 1024 * 1024
    # A stored trace lives while a backlog holds it (its TTL covers the retry horizon), and
    # this long after the last one let go: a redelivered fan-out or an event the gateway
    # sent twice within it is recognised and not delivered again.
    trace_keep_after_seconds: float = 300.0
    # Redis broker: a message held by a worker that stopped refreshing its heartbeat (killed)
    # goes to a live worker within seconds; one held by a worker of an earlier version (no
    # heartbeat) comes back after this, which must exceed the longest task (150 s).
    visibility_timeout_seconds: float = 300.0
    # How often beat sweeps the backlogs (kicks, retention, expiry, bounds).
    sweep_interval_seconds: float = 10.0
    # Celery's task-sent events cost the gateway a second broker write per `.delay()`.
    send_sent_events: bool = False
    # Credentials rejected for this long: the destination is disabled.
    auth_failed_disable_seconds: float = 3 * 86400.0
    dead_letter_retention_seconds: float = 7 * 86400.0
    # Re-validation of credentials (beat): every destination, and rejected ones more often.
    revalidate_seconds: float = 6 * 3600.0
    auth_failed_recheck_seconds: float = 900.0
    # A run's batch is reclaimed by another run when its lease is not renewed for this long
    # (a killed worker's batch resumes after it); the lease is renewed every third of it
    # while the vendor request is in flight, so a slow vendor is never taken for a dead run.
    claim_lease_seconds: float = 15.0
    # Once a vendor answered, a run waits this long for an unreachable store to record the
    # answer (a restart, a failover) before it gives up and the batch is sent again after
    # the lease. At most half the lease is used.
    settle_patience_seconds: float = 7.5
    # Dead letters of one destination that trigger a notification to its owner.
    dead_letter_notify_threshold: int = 10
    # Limits on a gateway's event (settings/event_limits.py); the broker codec enforces the
    # depth and size limits where a message is decoded.
    event_max_depth: int = 64
    event_max_bytes: int = 16 * 1024 * 1024
    event_max_messages: int = 10_000
    event_max_string_chars: int = 8 * 1024 * 1024
    # Log lines as text, or one JSON object per line (broadcast_interfaces/log_format.py).
    log_format: str = "text"
    # The management API (broadcast_interfaces/api_guard.py): the body limit of its configuration
    # routes, and how many failed keys from one client address within the window make
    # the address wait for the window to pass.
    api_max_body_bytes: int = 64 * 1024
    api_auth_failures: int = 10
    api_auth_window_seconds: float = 60.0
    # `broadcast metrics serve`: a series per destination (labels destination, type,
    # owner), or, off, one per destination type (docs/production.md, "Metrics": what
    # 100k destinations cost either way).
    metrics_per_destination: bool = True


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
    "circuit_failure_rate": "BROADCAST_CIRCUIT_FAILURE_RATE",
    "circuit_min_attempts": "BROADCAST_CIRCUIT_MIN_ATTEMPTS",
    "circuit_window_seconds": "BROADCAST_CIRCUIT_WINDOW_SECONDS",
    "circuit_consecutive_failures": "BROADCAST_CIRCUIT_CONSECUTIVE_FAILURES",
    "probe_schedule_seconds": "BROADCAST_PROBE_SCHEDULE_SECONDS",
    "retry_horizon_seconds": "BROADCAST_RETRY_HORIZON_SECONDS",
    "max_in_flight": "BROADCAST_MAX_IN_FLIGHT",
    "batch_gather_seconds": "BROADCAST_BATCH_GATHER_SECONDS",
    "backlog_max_entries": "BROADCAST_BACKLOG_MAX_ENTRIES",
    "backlog_max_bytes": "BROADCAST_BACKLOG_MAX_BYTES",
    "trace_budget_bytes": "BROADCAST_TRACE_BUDGET_BYTES",
    "trace_keep_after_seconds": "BROADCAST_TRACE_KEEP_AFTER_SECONDS",
    "sweep_interval_seconds": "BROADCAST_SWEEP_INTERVAL_SECONDS",
    "visibility_timeout_seconds": "BROADCAST_VISIBILITY_TIMEOUT_SECONDS",
    "send_sent_events": "BROADCAST_SEND_SENT_EVENTS",
    "auth_failed_disable_seconds": "BROADCAST_AUTH_FAILED_DISABLE_SECONDS",
    "dead_letter_retention_seconds": "BROADCAST_DEAD_LETTER_RETENTION_SECONDS",
    "revalidate_seconds": "BROADCAST_REVALIDATE_SECONDS",
    "auth_failed_recheck_seconds": "BROADCAST_AUTH_FAILED_RECHECK_SECONDS",
    "claim_lease_seconds": "BROADCAST_CLAIM_LEASE_SECONDS",
    "settle_patience_seconds": "BROADCAST_SETTLE_PATIENCE_SECONDS",
    "dead_letter_notify_threshold": "BROADCAST_DEAD_LETTER_NOTIFY_THRESHOLD",
    "event_max_depth": "BROADCAST_EVENT_MAX_DEPTH",
    "event_max_bytes": "BROADCAST_EVENT_MAX_BYTES",
    "event_max_messages": "BROADCAST_EVENT_MAX_MESSAGES",
    "event_max_string_chars": "BROADCAST_EVENT_MAX_STRING_CHARS",
    "log_format": "BROADCAST_LOG_FORMAT",
    "api_max_body_bytes": "BROADCAST_API_MAX_BODY_BYTES",
    "api_auth_failures": "BROADCAST_API_AUTH_FAILURES",
    "api_auth_window_seconds": "BROADCAST_API_AUTH_WINDOW_SECONDS",
    "metrics_per_destination": "BROADCAST_METRICS_PER_DESTINATION",
}


# Deprecated variable -> the setting it still sets when the new variable is absent.
DEPRECATED_ALIASES = {"BROADCAST_CIRCUIT_FAILURES": "circuit_consecutive_failures"}


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
        variable = _variable_set(environ, spec.name)
        if variable is None:
            continue
        values[spec.name] = _parse(spec.name, variable, environ[variable])
    if "store_url" not in values and "broker_url" in values:
        values["store_url"] = values["broker_url"]
    return BroadcastConfig(**values)


def _variable_set(environ: Mapping[str, str], name: str) -> str | None:
    """The environment variable that sets `name`: its own, else a deprecated alias."""
    candidates = [ENVIRONMENT[name]]
    candidates += [old for old, setting in DEPRECATED_ALIASES.items() if setting == name]
    return next((variable for variable in candidates if environ.get(variable)), None)


def _parse(name: str, variable: str, raw: str) -> Any:
    default = getattr(BroadcastConfig, name)
    try:
        if name == "log_format" and raw not in ("text", "json"):
            raise ValueError(raw)
        if name == "encryption_keys":
            return tuple(key.strip() for key in raw.split(",") if key.strip())
        if isinstance(default, tuple):
            schedule = tuple(float(item) for item in raw.split(",") if item.strip())
            if not schedule or min(schedule) <= 0:
                raise ValueError(raw)
            return schedule
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            value = float(raw)
            if name == "circuit_failure_rate" and not 0 < value <= 1:
                raise ValueError(raw)
            return value
        return raw
    except ValueError:
        raise ConfigurationError(f"{variable} has an invalid value") from None
