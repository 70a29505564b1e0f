"""What both Langfuse ingestion modes (OTel v4 and the legacy API) share: usage and cost
buckets, the first-class fields promoted out of the caller's metadata, model parameters,
the generation's metadata and Langfuse's timestamp format. Pure functions of a `Trace`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from destinations.trace import Trace

# Langfuse refuses environments that do not match this (they go to metadata instead).
ENVIRONMENT_PATTERN = re.compile(r"^(?!langfuse)[a-z0-9_-]{1,40}$")
PROMOTED_KEYS = ("environment", "release", "version")


def usage_details(trace: Trace) -> dict[str, int]:
    """Langfuse's usage buckets: `input`/`output` exclude the cached/reasoning details.

    That is how Langfuse itself splits an OpenAI usage object, so its price table applies
    each detail once; `total` is sent explicitly so it is not re-summed.
    """
    usage = trace.usage
    cached = usage.cached_input_tokens or 0
    written = usage.cache_write_input_tokens or 0
    reasoning = usage.reasoning_tokens or 0
    details = {
        "input": max(usage.input_tokens - cached - written, 0),
        "output": max(usage.output_tokens - reasoning, 0),
        "total": usage.total_tokens,
    }
    if usage.cached_input_tokens is not None:
        details["input_cached_tokens"] = cached
    if usage.cache_write_input_tokens is not None:
        details["input_cache_creation"] = written
    if usage.reasoning_tokens is not None:
        details["output_reasoning_tokens"] = reasoning
    return details


def cost_details(trace: Trace) -> dict[str, float]:
    """Langfuse's cost buckets (USD), only those the trace knows; empty when none."""
    cost = trace.cost
    pairs = (("input", cost.input), ("output", cost.output), ("total", cost.total))
    return {key: value for key, value in pairs if value is not None}


def promoted_fields(extra: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """Split `environment`/`release`/`version` that Langfuse accepts from the metadata."""
    promoted: dict[str, str] = {}
    metadata = dict(extra)
    for key in PROMOTED_KEYS:
        value = extra.get(key)
        if not isinstance(value, str) or not value:
            continue
        if key == "environment" and not ENVIRONMENT_PATTERN.match(value):
            continue
        promoted[key] = value
        del metadata[key]
    return promoted, metadata


def model_parameters(trace: Trace) -> dict[str, Any]:
    parameters = dict(trace.model_parameters)
    if isinstance(trace.tool_choice, str):
        parameters["tool_choice"] = trace.tool_choice
    return parameters


def generation_metadata(trace: Trace) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "provider": trace.provider,
        "request_id": trace.request_id,
        "streamed": trace.streamed,
        "tools_offered": trace.tools_offered,
        "tool_calls_made": trace.tool_calls_made,
    }
    if trace.finish_reasons:
        metadata["finish_reasons"] = list(trace.finish_reasons)
    # Tool definitions are part of the prompt: they go wherever the messages go.
    if trace.tools and trace.input_messages:
        metadata["tools"] = list(trace.tools)
    if trace.error and trace.error.code is not None:
        metadata["error_code"] = trace.error.code
    if trace.content_redacted:
        metadata["privacy_mode"] = True
    return metadata


def iso_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
