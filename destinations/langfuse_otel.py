"""Langfuse v4 span attributes: what `ingestion: otel` puts on each OTLP span.

Names are Langfuse's own (`LangfuseOtelSpanAttributes` in the `langfuse` Python SDK 4.18.0,
`langfuse/_client/attributes.py`, and in Langfuse's server,
`packages/shared/src/server/otel/attributes.ts`); the shapes follow the server's OTel
ingestion (`OtelIngestionProcessor.ts`) and the guide "Migrate custom ingestion to
Langfuse v4". Trace-level attributes go on every span (v4 queries observations, not
traces); the root observation carries the request's input and output.

| trace | Langfuse v4 (every span unless said) |
| --- | --- |
| `trace_id` (32 hex as is, else derived) | `traceId`; given in `langfuse.trace.metadata.trace_id` |
| `trace_name` (default: model) | root span name and `langfuse.trace.name` on every span |
| `span_name` | a `span` observation between the root and the generation |
| `generation_name` (default `chat {model}`) | the `generation` observation's name |
| `parent_span_id` (16 hex, any case) | OTLP parent of our root; other forms unusable (noted) |
| `user` / `session_id` | `user.id` / `session.id` |
| `environment`, `release`, `version` | `langfuse.environment` / `.release` / `.version` |
| `tags` (list of strings) | `langfuse.trace.tags` |
| other `trace` keys | `langfuse.trace.metadata.<key>` (strings and integers as is, else JSON) |
| level | `langfuse.observation.type`: `span` (root, span) / `generation` |
| root and `span_name` span | `langfuse.observation.input` / `.output`: previews (`previews.py`) |
| model, parameters | `langfuse.observation.model.name`, `.model.parameters` (JSON) |
| messages | generation `langfuse.observation.input` / `.output` (chat JSON) |
| usage / cost | `langfuse.observation.usage_details` / `.cost_details` (JSON, USD) |
| time to first token | `langfuse.observation.completion_start_time` (ISO 8601) |
| provider, finish reasons, tools, ... | `langfuse.observation.metadata.<key>` on the generation |
| failed request | `langfuse.observation.level: ERROR` + `.status_message` on every span |

Each request sends its own complete spans once (span ids from request and destination),
so requests sharing a `trace_id` never overwrite each other's observations.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from destinations.chat_format import chat_message, chat_messages
from destinations.json_body import json_text
from destinations.langfuse_common import (
    cost_details,
    generation_metadata,
    iso_time,
    model_parameters,
    promoted_fields,
    usage_details,
)
from destinations.otlp.spans import Level, PlannedSpan, error_message
from destinations.previews import input_preview, output_preview
from destinations.trace import Trace

TRACE_NAME = "langfuse.trace.name"
TRACE_USER_ID = "user.id"
TRACE_SESSION_ID = "session.id"
TRACE_TAGS = "langfuse.trace.tags"
TRACE_METADATA = "langfuse.trace.metadata"
OBSERVATION_TYPE = "langfuse.observation.type"
OBSERVATION_METADATA = "langfuse.observation.metadata"
OBSERVATION_LEVEL = "langfuse.observation.level"
OBSERVATION_STATUS_MESSAGE = "langfuse.observation.status_message"
OBSERVATION_INPUT = "langfuse.observation.input"
OBSERVATION_OUTPUT = "langfuse.observation.output"
OBSERVATION_COMPLETION_START_TIME = "langfuse.observation.completion_start_time"
OBSERVATION_MODEL = "langfuse.observation.model.name"
OBSERVATION_MODEL_PARAMETERS = "langfuse.observation.model.parameters"
OBSERVATION_USAGE_DETAILS = "langfuse.observation.usage_details"
OBSERVATION_COST_DETAILS = "langfuse.observation.cost_details"
ENVIRONMENT = "langfuse.environment"
RELEASE = "langfuse.release"
VERSION = "langfuse.version"
PROMOTED = {"environment": ENVIRONMENT, "release": RELEASE, "version": VERSION}
TAGS_KEY = "tags"


def langfuse_attributes(trace: Trace, span: PlannedSpan) -> dict[str, Any]:
    """Pure: the v4 attributes of one span (see the module table)."""
    values = trace_attributes(trace)
    if span.level is Level.GENERATION:
        values.update(_generation(trace))
    else:
        values[OBSERVATION_TYPE] = "span"
        values[OBSERVATION_INPUT] = input_preview(trace)
        values[OBSERVATION_OUTPUT] = output_preview(trace)
    if trace.is_error:
        values[OBSERVATION_LEVEL] = "ERROR"
        values[OBSERVATION_STATUS_MESSAGE] = error_message(trace)
    return values


def trace_attributes(trace: Trace) -> dict[str, Any]:
    """What every span carries: trace name, user, session, tags, first-class fields, metadata."""
    promoted, metadata = promoted_fields(trace.metadata.extra)
    values: dict[str, Any] = {
        TRACE_NAME: trace.trace_name,
        TRACE_USER_ID: trace.end_user,
        TRACE_SESSION_ID: trace.session_id,
    }
    values.update({PROMOTED[key]: value for key, value in promoted.items()})
    tags = metadata.get(TAGS_KEY)
    if isinstance(tags, list) and tags and all(isinstance(tag, str) for tag in tags):
        values[TRACE_TAGS] = tags
        del metadata[TAGS_KEY]
    if trace.metadata.trace_id:
        values[f"{TRACE_METADATA}.trace_id"] = trace.metadata.trace_id
    for key, value in metadata.items():
        values[f"{TRACE_METADATA}.{key}"] = _metadata_value(value)
    return values


def _generation(trace: Trace) -> dict[str, Any]:
    values: dict[str, Any] = {
        OBSERVATION_TYPE: "generation",
        OBSERVATION_MODEL: trace.model,
        OBSERVATION_MODEL_PARAMETERS: json_text(model_parameters(trace)),
        OBSERVATION_USAGE_DETAILS: json_text(usage_details(trace)),
        OBSERVATION_COST_DETAILS: json_text(cost_details(trace)) if cost_details(trace) else None,
    }
    if trace.time_to_first_token_ms is not None:
        values[OBSERVATION_COMPLETION_START_TIME] = iso_time(
            trace.started_at + timedelta(milliseconds=trace.time_to_first_token_ms)
        )
    if trace.input_messages:
        values[OBSERVATION_INPUT] = json_text(chat_messages(trace.input_messages))
    if len(trace.output_messages) == 1:
        values[OBSERVATION_OUTPUT] = json_text(chat_message(trace.output_messages[0]))
    elif trace.output_messages:
        values[OBSERVATION_OUTPUT] = json_text(chat_messages(trace.output_messages))
    for key, value in generation_metadata(trace).items():
        values[f"{OBSERVATION_METADATA}.{key}"] = _metadata_value(value)
    return values


def _metadata_value(value: Any) -> str | int:
    # As the SDK writes metadata: strings and integers as they are, anything else as JSON
    # (Langfuse reads each `...metadata.<key>` attribute back into the metadata object).
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return json_text(value)
