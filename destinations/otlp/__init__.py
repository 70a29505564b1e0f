"""OTLP/HTTP traces: encodings, the span hierarchy, attribute dialects, the shared exporter.

- `encoding`: protobuf and OTLP JSON (hex ids, integer enums), attribute values, gzip;
- `spans`: trace → span → generation with deterministic ids, as a wire-neutral `Export`;
- `genai`: the OpenTelemetry GenAI semantic-conventions dialect;
- `openinference`: the OpenInference dialect (Arize AX, Phoenix);
- `exporter`: `OtlpDestination`, the base of every OTLP destination.
- `config`: the config fields the OTLP destinations share (URLs, credentials).
"""

from __future__ import annotations

from destinations.otlp.encoding import Encoding, encode
from destinations.otlp.genai import genai_attributes
from destinations.otlp.spans import export_spans
from destinations.trace import Trace


def otlp_json_body(trace: Trace, destination_id: str) -> bytes:
    """Pure: the OTLP JSON body (GenAI dialect) for `trace`, e.g. for a webhook."""
    return encode(export_spans(trace, destination_id, genai_attributes), Encoding.JSON)


__all__ = ["otlp_json_body"]
