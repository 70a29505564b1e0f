"""`OtlpDestination`: the shared base of every destination that speaks OTLP/HTTP traces.

A vendor subclass says where (`traces_url`), how it authenticates (`auth_headers`), which
dialect it speaks (`span_attributes`) and which resource attributes route the spans
(`resource_attributes`); this base does the rest, once:

- the body: the trace's spans (`spans.export_spans`) in protobuf or OTLP JSON,
  truncated to the byte budget (`max_body_bytes`), optionally gzipped;
- outcomes: the shared outcome table, plus OTLP partial success — a 2xx whose
  `ExportTraceServiceResponse.partialSuccess.rejectedSpans > 0` is delivered, with the
  rejection recorded in `DeliveryResult.rejected`;
- Test Connection: one span, clearly marked, in a trace of its own
  (`connection_test_request`): name `broadcast connection test`, attribute
  `broadcast.connection_test=true`, ids derived from the destination id (a repeated test
  re-sends the same span). An empty export would create nothing, but some real receivers
  answer 400 to an export without spans, and then a destination could never be saved.
  The answer tells 2xx (passed), 401/403 (credentials), 404 (wrong URL), other 4xx,
  retryable statuses and an unreachable endpoint apart (`check_from_transport`).
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from destinations.base import (
    BatchLimits,
    ConnectionCheck,
    DeliveryContext,
    DeliveryResult,
    EncodedItem,
    HttpDestination,
    check_from_transport,
    result_from_transport,
)
from destinations.budget import fit_to_budget
from destinations.otlp.encoding import Encoding, encode, gzipped, merge_bodies, parse_response
from destinations.otlp.genai import genai_attributes
from destinations.otlp.spans import (
    Export,
    PlannedSpan,
    connection_test_export,
    export_spans,
    parent_span_note,
)
from destinations.outcomes import Outcome
from destinations.trace import Trace
from destinations.transport import HttpRequest, TransportResult

USER_AGENT = "broadcast/0.1 (OTLP/HTTP)"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


class OtlpDestination(HttpDestination):
    """Base for OTLP/HTTP trace destinations. Subclasses implement `traces_url` at least."""

    encoding: ClassVar[Encoding] = Encoding.PROTOBUF
    gzip: ClassVar[bool] = False
    max_body_bytes: ClassVar[int] = DEFAULT_MAX_BODY_BYTES
    # Many traces' spans per export, within the body limit (set per subclass below).
    max_batch_traces: ClassVar[int] = 100

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.batch_limits = BatchLimits(cls.max_batch_traces, cls.max_body_bytes)

    # -- what a vendor says -------------------------------------------------------------

    @abstractmethod
    def traces_url(self) -> str:
        """The full URL of the vendor's OTLP/HTTP traces endpoint."""

    def auth_headers(self) -> dict[str, str]:
        """Headers that carry the credentials (none by default)."""
        return {}

    def resource_attributes(self) -> dict[str, Any]:
        """Resource attributes beside `service.name`, e.g. the vendor's project routing."""
        return {}

    def span_attributes(self, trace: Trace, span: PlannedSpan) -> Mapping[str, Any]:
        """The dialect: GenAI semantic conventions unless the vendor speaks another."""
        return genai_attributes(trace, span)

    def wire_encoding(self) -> Encoding:
        """The body's encoding: the class's `encoding` unless the config chooses."""
        return self.encoding

    def use_gzip(self) -> bool:
        """Whether to gzip the body: the class's `gzip` unless the config chooses."""
        return self.gzip

    # -- the shared machinery -----------------------------------------------------------

    def export(self, trace: Trace, context: DeliveryContext) -> Export:
        """Pure: the OTLP export of `trace`, before encoding."""
        return export_spans(
            trace, context.destination_id, self.span_attributes, self.resource_attributes()
        )

    def export_body(self, trace: Trace, context: DeliveryContext) -> bytes:
        """Pure: the encoded (not yet compressed) body. Raises `PayloadTooLarge`."""
        encoding = self.wire_encoding()
        return fit_to_budget(
            trace,
            lambda candidate: encode(self.export(candidate, context), encoding),
            self.max_body_bytes,
        )

    def build_request(self, trace: Trace, context: DeliveryContext) -> HttpRequest:
        return self._post(self.export_body(trace, context))

    def encode_item(self, trace: Trace, context: DeliveryContext) -> EncodedItem:
        body = self.export_body(trace, context)
        return EncodedItem(body, len(body))

    def batch_request(self, payloads: Sequence[Any], context: DeliveryContext) -> HttpRequest:
        """One export with every trace's spans (each trace its own `ResourceSpans`)."""
        return self._post(merge_bodies(payloads, self.wire_encoding()))

    def interpret(self, result: TransportResult) -> DeliveryResult:
        """The outcome table; a 2xx with rejected spans is still delivered, recording them."""
        delivery = result_from_transport(result)
        if delivery.outcome is not Outcome.DELIVERED:
            return delivery
        response = parse_response(result.body, result.headers.get("content-type", ""))
        partial = response.partial_success
        if partial.rejected_spans <= 0:
            return delivery
        rejection = f"{partial.rejected_spans} span(s) rejected"
        if partial.error_message:
            rejection += f": {partial.error_message}"
        return dataclasses.replace(delivery, rejected=(rejection,))

    def interpret_batch(
        self, result: TransportResult, traces: Sequence[Trace]
    ) -> list[DeliveryResult]:
        """The export's outcome for each trace, noting a `parent_span_id` that could not
        parent our spans (it is kept as an attribute instead)."""
        delivery = self.interpret(result)
        return [
            dataclasses.replace(delivery, notes=(note,))
            if (note := parent_span_note(t))
            else delivery
            for t in traces
        ]

    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        """POST one marked connection-test span: proves the endpoint and the credentials."""
        body = encode(self.connection_test_request(context), self.wire_encoding())
        return check_from_transport(
            self.transport.send(self._post(body)), rejected_message=self.rejected_message()
        )

    def connection_test_request(self, context: DeliveryContext) -> Export:
        """Pure: the one-span export Test Connection sends (see the module docstring)."""
        return connection_test_export(context, self.resource_attributes())

    def rejected_message(self) -> str:
        """What Test Connection says on 401/403, naming where the credentials live."""
        return f"{self.display_name} rejected the credentials"

    def _post(self, body: bytes) -> HttpRequest:
        headers = {
            "Content-Type": self.wire_encoding().content_type,
            "User-Agent": USER_AGENT,
            **self.auth_headers(),
        }
        if self.use_gzip():
            body = gzipped(body)
            headers["Content-Encoding"] = "gzip"
        return HttpRequest("POST", self.traces_url(), headers, body)
