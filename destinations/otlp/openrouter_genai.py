"""The GenAI dialect as OpenRouter documents it for Sentry and Ramp: `trace.metadata.<key>`.

`genai.py` puts the caller's extra `trace` keys under `broadcast.metadata.`; OpenRouter's
Sentry and Ramp pages promise `trace.metadata.<key>`, so these destinations rename them.
Everything else is `genai.py`'s table, plus, on the generation span:

| trace | attribute |
| --- | --- |
| total tokens | `gen_ai.usage.total_tokens` (OpenRouter's Grafana page; Sentry's `SPANDATA`) |
| cost total (USD) | `gen_ai.usage.cost` (no convention: the name Langfuse and most OTLP |
|  | cost readers take; `broadcast.cost.*` stay) |
"""

from __future__ import annotations

from typing import Any

from destinations.otlp.genai import METADATA_PREFIX, genai_attributes
from destinations.otlp.spans import Level, PlannedSpan
from destinations.trace import Trace

TRACE_METADATA_PREFIX = "trace.metadata."


def openrouter_genai_attributes(trace: Trace, span: PlannedSpan) -> dict[str, Any]:
    """Pure: `genai_attributes` with `trace.metadata.` keys and the extras above."""
    values: dict[str, Any] = {}
    for key, value in genai_attributes(trace, span).items():
        if key.startswith(METADATA_PREFIX):
            key = TRACE_METADATA_PREFIX + key[len(METADATA_PREFIX) :]
        values[key] = value
    if span.level is Level.GENERATION:
        values["gen_ai.usage.total_tokens"] = trace.usage.total_tokens
        values["gen_ai.usage.cost"] = trace.cost.total
    return values
