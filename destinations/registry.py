"""The typed registry of destination types, keyed by slug."""

from __future__ import annotations

import importlib
from typing import Any

from destinations.base import Destination

# Every vendor module, imported once by `load_all()`; each registers its class on import.
VENDOR_MODULES: tuple[str, ...] = (
    "destinations.webhook",
    "destinations.s3",
    "destinations.langfuse",
    "destinations.datadog",
    "destinations.braintrust",
    "destinations.otel_collector",
    "destinations.phoenix",
    "destinations.arize",
    "destinations.langsmith",
    "destinations.weave",
    "destinations.otlp_presets",
    "destinations.sentry",
    "destinations.ramp",
    "destinations.posthog",
    "destinations.opik",
    "destinations.raindrop",
    "destinations.firehose",
    "destinations.clickhouse",
    "destinations.snowflake",
    "destinations.bigquery",
)

_REGISTRY: dict[str, type[Destination]] = {}


class UnknownDestinationType(KeyError):
    def __str__(self) -> str:
        known = ", ".join(sorted(_REGISTRY))
        return f"unknown destination type {self.args[0]!r} (known: {known})"


def register(cls: type[Destination]) -> type[Destination]:
    """Class decorator: make a destination type available by its slug."""
    existing = _REGISTRY.get(cls.slug)
    if existing is not None and existing is not cls:
        raise ValueError(f"destination type {cls.slug!r} registered twice")
    _REGISTRY[cls.slug] = cls
    return cls


def load_all() -> None:
    for module in VENDOR_MODULES:
        importlib.import_module(module)


def destination_class(slug: str) -> type[Destination]:
    """Raises `UnknownDestinationType` for a slug no module registered."""
    load_all()
    try:
        return _REGISTRY[slug]
    except KeyError:
        raise UnknownDestinationType(slug) from None


def known_types() -> list[str]:
    load_all()
    return sorted(_REGISTRY)


def describe(slug: str) -> dict[str, Any]:
    """A type as the management API lists it: slug, display name, config fields (name,
    required, secret, URL). Raises `UnknownDestinationType`."""
    cls = destination_class(slug)
    return {
        "type": slug,
        "name": cls.display_name,
        "config": [
            {
                "name": name,
                "required": bool(field.required),
                "secret": bool(field.metadata.get("secret")),
                "url": bool(field.metadata.get("url")),
            }
            for name, field in cls.config_schema().fields.items()
        ],
    }
