"""What a destination is: its config schema, its delivery, its Test Connection.

A vendor module defines one `Destination` subclass and registers it
(`destinations.registry.register`). Its serializer is a pure function of
(`Trace`, validated config, `DeliveryContext`) to the wire body; the subclass wires that
serializer to a transport. Vendors never import `tasks`; serializers never do I/O.

Config fields are marshmallow fields. Mark a field `metadata={"secret": True}` to have it
encrypted at rest and masked on read, and `metadata={"url": True}` to have the URL guard
check it when the config is saved.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import marshmallow

from destinations.outcomes import Outcome, classify_status
from destinations.trace import Trace
from destinations.transport import HttpRequest, HttpTransport, TransportResult

ERROR_EXCERPT_CHARS = 300


class ConfigSchema(marshmallow.Schema):
    """Base for destination config schemas: unknown fields are an error, not ignored."""

    class Meta:
        unknown = marshmallow.RAISE


class PayloadTooLarge(Exception):
    """The payload does not fit the vendor's limit even with content truncated (permanent)."""


@dataclass(frozen=True)
class DeliveryContext:
    """Who is delivering and when. `now` is injected so serializers stay pure."""

    destination_id: str
    owner: str
    now: datetime
    attempt: int = 0


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one delivery attempt, as recorded in the delivery log.

    `error` is a short human text (the caller redacts secrets from it before storing);
    `rejected` lists items a vendor refused inside an otherwise successful response.
    """

    outcome: Outcome
    status_code: int | None
    duration_ms: float
    error: str | None = None
    retry_after: float | None = None
    rejected: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConnectionCheck:
    """The result of Test Connection. `outcome` is DELIVERED when the check passed."""

    outcome: Outcome
    message: str
    status_code: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.DELIVERED


class Destination(ABC):
    """One configured destination, ready to deliver. Instances live for one delivery."""

    slug: ClassVar[str]
    display_name: ClassVar[str]
    config_schema: ClassVar[type[ConfigSchema]]

    def __init__(self, config: Mapping[str, Any], transport: HttpTransport) -> None:
        self.config = config
        self.transport = transport

    @classmethod
    def secret_fields(cls) -> frozenset[str]:
        return frozenset(
            name
            for name, schema_field in cls.config_schema().fields.items()
            if schema_field.metadata.get("secret")
        )

    @classmethod
    def url_fields(cls) -> frozenset[str]:
        return frozenset(
            name
            for name, schema_field in cls.config_schema().fields.items()
            if schema_field.metadata.get("url")
        )

    @abstractmethod
    def deliver(self, trace: Trace, context: DeliveryContext) -> DeliveryResult:
        """Send one trace. Never raises for vendor or network trouble: that is an outcome."""

    @abstractmethod
    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        """Prove the config works where the vendor offers a way. Never raises for I/O."""


class HttpDestination(Destination):
    """A destination that sends one HTTP request per trace through the shared transport."""

    @abstractmethod
    def build_request(self, trace: Trace, context: DeliveryContext) -> HttpRequest:
        """Pure: the request for this trace. May raise `PayloadTooLarge`."""

    def deliver(self, trace: Trace, context: DeliveryContext) -> DeliveryResult:
        try:
            request = self.build_request(trace, context)
        except PayloadTooLarge as exc:
            return DeliveryResult(Outcome.PERMANENT, None, 0.0, error=f"payload too large: {exc}")
        return self.interpret(self.transport.send(request))

    def interpret(self, result: TransportResult) -> DeliveryResult:
        """Classify a response with the outcome table. Vendors override for 207s and 409s."""
        return result_from_transport(result)


def result_from_transport(
    result: TransportResult, outcome: Outcome | None = None, error: str | None = None
) -> DeliveryResult:
    """A `DeliveryResult` for a transport result, classified by the table unless given."""
    if outcome is None:
        outcome = _classify(result)
    if error is None and outcome is not Outcome.DELIVERED:
        error = result.error or describe_response(result)
    return DeliveryResult(
        outcome=outcome,
        status_code=result.status_code,
        duration_ms=result.duration_ms,
        error=error,
        retry_after=result.retry_after,
    )


def describe_response(result: TransportResult) -> str:
    """`HTTP 400: <first characters of the body>` for logs and the delivery log."""
    excerpt = result.body.decode("utf-8", "replace").strip()[:ERROR_EXCERPT_CHARS]
    return f"HTTP {result.status_code}" + (f": {excerpt}" if excerpt else "")


def check_from_transport(result: TransportResult, *, rejected_message: str) -> ConnectionCheck:
    """Turn a Test Connection response into a `ConnectionCheck` with the outcome table."""
    if result.status_code is None:
        prefix = "refused" if result.refused else "unreachable"
        return ConnectionCheck(_classify(result), f"{prefix}: {result.error}")
    outcome = classify_status(result.status_code)
    if outcome is Outcome.DELIVERED:
        return ConnectionCheck(outcome, "connection ok", result.status_code)
    if outcome is Outcome.AUTH_FAILED:
        return ConnectionCheck(
            outcome, f"{rejected_message} ({describe_response(result)})", result.status_code
        )
    return ConnectionCheck(outcome, describe_response(result), result.status_code)


def _classify(result: TransportResult) -> Outcome:
    """The outcome table, plus: no response is retryable unless the request was refused."""
    if result.status_code is None:
        return Outcome.PERMANENT if result.refused else Outcome.RETRYABLE
    return classify_status(result.status_code)
