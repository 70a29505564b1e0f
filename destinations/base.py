"""What a destination is: its config schema, its delivery, its Test Connection.

A vendor module defines one `Destination` subclass and registers it
(`destinations.registry.register`). Its serializer is a pure function of
(`Trace`, validated config, `DeliveryContext`) to the wire body; the subclass wires that
serializer to a transport. Vendors never import `tasks`; serializers never do I/O.

Config fields are marshmallow fields. Mark a field `metadata={"secret": True}` to have it
encrypted at rest and masked on read, and `metadata={"url": True}` to have the URL guard
check it when the config is saved.

Two things hold for every type, so they live here rather than in each vendor module:

- `headers` (OpenRouter's optional custom headers, secret): every request a destination
  sends carries them; a header the destination sets itself (its credentials, its content
  type) wins over an entry of the same name. A vendor schema that declares its own
  `headers` field (webhook, otel-collector) decides which names it refuses.
- Test Connection: every request sent while `test_connection` runs carries
  `X-Test-Connection: true`, so a receiver can tell a probe from a delivery. A subclass's
  `test_connection` is wrapped (`__init_subclass__`) to run on a copy of the destination
  whose transport adds the header; the boto3 destinations add it to their requests from
  `transport.added_headers`.
"""

from __future__ import annotations

import copy
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import marshmallow

from destinations.config_fields import custom_headers_field
from destinations.outcomes import Outcome, classify_status
from destinations.trace import Trace
from destinations.transport import (
    TEST_CONNECTION_HEADER,
    HeaderTransport,
    HttpRequest,
    HttpTransport,
    TransportResult,
)

ERROR_EXCERPT_CHARS = 300


# Headers the transport or the HTTP layer set; a custom header of the same name would
# corrupt the request or pose as a probe.
TRANSPORT_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "host",
        TEST_CONNECTION_HEADER.lower(),
    }
)


class ConfigSchema(marshmallow.Schema):
    """Base for destination config schemas: unknown fields are an error, not ignored.

    Every type takes OpenRouter's optional `headers` (secret; see the module docstring).
    """

    headers = custom_headers_field(TRANSPORT_HEADERS)

    class Meta:
        unknown = marshmallow.RAISE


class ItemRefused(Exception):
    """This one trace cannot be sent to this vendor (permanent for the trace, not the batch)."""


class PayloadTooLarge(ItemRefused):
    """The payload does not fit the vendor's limit even with content truncated (permanent)."""


@dataclass(frozen=True)
class BatchLimits:
    """How much one vendor request may carry. `max_items=1` means one trace per request.

    `max_bytes` bounds the sum of the encoded items of one request (the vendor's envelope
    comes on top: keep it below the vendor's documented limit).
    """

    max_items: int = 1
    max_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True)
class EncodedItem:
    """One trace's share of a vendor request: a vendor-defined payload and its size in bytes."""

    payload: Any
    size: int


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
    attempted: bool = True
    # What the delivery log should say about how the vendor took this trace (e.g. a
    # caller's parent_span_id it could not use).
    notes: tuple[str, ...] = ()
    # Permanent, and about the destination's own setup rather than this trace (a warehouse
    # table that lost a column): every trace would fail the same way, so the engine also
    # marks the destination failing until a Test Connection passes.
    config_error: bool = False

    @property
    def concerns_destination(self) -> bool:
        """A failure of the destination (outage, credentials), not of this trace."""
        return self.outcome in (Outcome.RETRYABLE, Outcome.AUTH_FAILED)


def not_attempted(cause: DeliveryResult) -> DeliveryResult:
    """The result of a trace left untried because `cause` stopped its batch."""
    return DeliveryResult(
        cause.outcome,
        None,
        0.0,
        error=f"not attempted: {cause.error or cause.outcome.value}",
        retry_after=cause.retry_after,
        attempted=False,
    )


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
    # One trace per vendor request unless the vendor class says more; an instance may set
    # its own from its config (a webhook's `batch_size`, Langfuse's legacy ingestion).
    batch_limits: BatchLimits = BatchLimits()

    def __init__(self, config: Mapping[str, Any], transport: HttpTransport) -> None:
        self.config = config
        custom = config.get("headers")
        self.transport: HttpTransport | HeaderTransport = (
            HeaderTransport(transport, defaults=custom) if custom else transport
        )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check = cls.__dict__.get("test_connection")
        if check is not None and not getattr(check, "__isabstractmethod__", False):
            cls.test_connection = _marked_as_probe(check)  # type: ignore[assignment]

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

    @classmethod
    def config_urls(cls, config: Mapping[str, Any]) -> dict[str, str]:
        """Every URL a validated config makes Broadcast connect to, keyed by the name an
        error gives it: the URL fields, plus what a type finds inside other fields. The
        settings service runs the URL guard on each when a config is saved."""
        return {name: config[name] for name in cls.url_fields() if config.get(name)}

    @abstractmethod
    def deliver(self, trace: Trace, context: DeliveryContext) -> DeliveryResult:
        """Send one trace. Never raises for vendor or network trouble: that is an outcome."""

    def deliver_batch(
        self, traces: Sequence[Trace], context: DeliveryContext
    ) -> list[DeliveryResult]:
        """Send a batch; one result per trace, in order. Never raises for vendor or network
        trouble.

        This default sends the traces one by one and stops at the first failure that
        concerns the destination: the untried rest come back `attempted=False`.
        """
        results: list[DeliveryResult] = []
        for trace in traces:
            if results and results[-1].concerns_destination:
                results.append(not_attempted(results[-1]))
            else:
                results.append(self.deliver(trace, context))
        return results

    @abstractmethod
    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        """Prove the config works where the vendor offers a way. Never raises for I/O."""


class HttpDestination(Destination):
    """A destination that speaks HTTP through the shared transport.

    A vendor implements `build_request` (one trace per request). A vendor that batches
    also sets `batch_limits` and implements `encode_item` (one trace's pure share of the
    request) and `batch_request` (the request for several encoded items); it may read a
    response per item with `interpret_batch`.
    """

    @abstractmethod
    def build_request(self, trace: Trace, context: DeliveryContext) -> HttpRequest:
        """Pure: the request for this trace. May raise `PayloadTooLarge` or `ItemRefused`."""

    def encode_item(self, trace: Trace, context: DeliveryContext) -> EncodedItem:
        """Pure: this trace's share of a request. May raise `ItemRefused`."""
        request = self.build_request(trace, context)
        return EncodedItem(request, len(request.body))

    def batch_request(self, payloads: Sequence[Any], context: DeliveryContext) -> HttpRequest:
        """Pure: the request carrying `payloads` (never more than `batch_limits` allows)."""
        request: HttpRequest
        (request,) = payloads  # without batching, the item is the whole request
        return request

    def deliver(self, trace: Trace, context: DeliveryContext) -> DeliveryResult:
        return self.deliver_batch([trace], context)[0]

    def deliver_batch(
        self, traces: Sequence[Trace], context: DeliveryContext
    ) -> list[DeliveryResult]:
        results: dict[int, DeliveryResult] = {}
        items: list[tuple[int, EncodedItem]] = []
        for index, trace in enumerate(traces):
            try:
                items.append((index, self.encode_item(trace, context)))
            except PayloadTooLarge as exc:
                results[index] = _refused(f"payload too large: {exc}")
            except ItemRefused as exc:
                results[index] = _refused(str(exc))
        stopped: DeliveryResult | None = None
        for group in pack(items, self.batch_limits):
            if stopped is not None:
                results.update((index, not_attempted(stopped)) for index, _ in group)
                continue
            request = self.batch_request([item.payload for _, item in group], context)
            answers = self.interpret_batch(
                self.transport.send(request), [traces[index] for index, _ in group]
            )
            results.update(zip((index for index, _ in group), answers, strict=True))
            if any(answer.concerns_destination for answer in answers):
                stopped = next(a for a in answers if a.concerns_destination)
        return [results[index] for index in range(len(traces))]

    def interpret(self, result: TransportResult) -> DeliveryResult:
        """Classify a response with the outcome table. Vendors override for 207s and 409s."""
        return result_from_transport(result)

    def interpret_batch(
        self, result: TransportResult, traces: Sequence[Trace]
    ) -> list[DeliveryResult]:
        """One result per trace of the request; by default the response's, for each."""
        return [self.interpret(result)] * len(traces)


def _marked_as_probe(
    check: Callable[[Destination, DeliveryContext], ConnectionCheck],
) -> Callable[[Destination, DeliveryContext], ConnectionCheck]:
    """`check`, run on a copy of the destination whose every request carries
    `X-Test-Connection: true` (once, however many overriding classes call `super()`)."""

    @functools.wraps(check)
    def test_connection(self: Destination, context: DeliveryContext) -> ConnectionCheck:
        if isinstance(self.transport, HeaderTransport) and self.transport.overrides:
            return check(self, context)  # already a probe: a subclass called super()
        probe = copy.copy(self)
        probe.transport = HeaderTransport(
            self.transport, overrides={TEST_CONNECTION_HEADER: "true"}
        )
        return check(probe, context)

    return test_connection


def pack(
    items: Sequence[tuple[int, EncodedItem]], limits: BatchLimits
) -> Iterator[list[tuple[int, EncodedItem]]]:
    """Split items, in order, into groups within `limits` (an item alone may reach max_bytes)."""
    group: list[tuple[int, EncodedItem]] = []
    size = 0
    for entry in items:
        item_size = entry[1].size
        if group and (len(group) >= limits.max_items or size + item_size > limits.max_bytes):
            yield group
            group, size = [], 0
        group.append(entry)
        size += item_size
    if group:
        yield group


def _refused(reason: str) -> DeliveryResult:
    return DeliveryResult(Outcome.PERMANENT, None, 0.0, error=reason)


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
    """Turn a Test Connection response into a `ConnectionCheck` with the outcome table.

    The answer's body is quoted only from a public address: Test Connection runs on
    whatever URL an owner typed, and quoting a private address's answer (reachable with
    BROADCAST_ALLOW_PRIVATE_NETWORKS) would read an internal service for them."""
    if result.status_code is None:
        prefix = "refused" if result.refused else "unreachable"
        return ConnectionCheck(_classify(result), f"{prefix}: {result.error}")
    outcome = classify_status(result.status_code)
    if outcome is Outcome.DELIVERED:
        return ConnectionCheck(outcome, "connection ok", result.status_code)
    described = (
        f"HTTP {result.status_code} (a private address answered: its body is not shown)"
        if result.private_peer
        else describe_response(result)
    )
    if outcome is Outcome.AUTH_FAILED:
        return ConnectionCheck(outcome, f"{rejected_message} ({described})", result.status_code)
    return ConnectionCheck(outcome, described, result.status_code)


def _classify(result: TransportResult) -> Outcome:
    """The outcome table, plus: no response is retryable unless the request was refused."""
    if result.status_code is None:
        return Outcome.PERMANENT if result.refused else Outcome.RETRYABLE
    return classify_status(result.status_code)
