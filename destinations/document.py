"""Broadcast's own JSON trace document (schema `broadcast.trace/v1`).

The body of the `webhook` destination (inside a Standard Webhooks envelope) and of every
`s3` object. One document per request; requests sharing a `trace_id` share `id`.

| trace | document |
| --- | --- |
| `trace_id` (else the request id) | `id` |
| `trace_name` (default: model) | `name` |
| `user` / `session_id` | `userId` / `sessionId` |
| other `trace` keys | `metadata` (and each observation's `metadata`) |
| `span_name` | an observation of type `SPAN`, parent of the generation |
| `generation_name` (default: model) | the `GENERATION` observation's `name` |
| `parent_span_id` | the generation's (or span's) `parentObservationId` |
| request id, account, key | `requestId`, `account.userId` / `orgId` / `apiKeyId` |

Observation ids are derived from (request id, destination id), so a re-sent document is
byte-for-byte the same apart from envelope timestamps.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypedDict

from destinations.chat_format import ChatMessage, chat_message
from destinations.ids import derived_hex
from destinations.trace import Trace

SCHEMA = "broadcast.trace/v1"


class Observation(TypedDict, total=False):
    id: str
    type: str
    name: str
    parentObservationId: str | None
    startTime: str
    endTime: str
    metadata: dict[str, Any]
    model: str
    provider: str
    completionStartTime: str | None
    input: list[ChatMessage] | None
    output: list[ChatMessage] | None
    finishReasons: list[str]
    modelParameters: dict[str, Any]
    tools: list[dict[str, Any]]
    usage: dict[str, int | None]
    cost: dict[str, float | None]
    status: str
    error: dict[str, str | None] | None


class TraceDocument(TypedDict):
    schema: str
    id: str
    requestId: str
    name: str
    userId: str | None
    sessionId: str | None
    timestamp: str
    metadata: dict[str, Any]
    account: dict[str, str | None]
    privacyMode: bool
    streamed: bool
    toolsOffered: bool
    toolCallsMade: bool
    observations: list[Observation]


def trace_document(trace: Trace, destination_id: str) -> TraceDocument:
    """Pure: the document for `trace` as sent to `destination_id`."""
    meta = trace.metadata
    start, end = _iso(trace.started_at), _iso(trace.finished_at)
    observations: list[Observation] = []
    parent = meta.parent_span_id
    if meta.span_name:
        span_id = derived_hex(trace.request_id, destination_id, "span", nbytes=8)
        observations.append(
            Observation(
                id=span_id,
                type="SPAN",
                name=meta.span_name,
                parentObservationId=parent,
                startTime=start,
                endTime=end,
                metadata=dict(meta.extra),
            )
        )
        parent = span_id
    completion_start = None
    if trace.time_to_first_token_ms is not None:
        completion_start = _iso(
            trace.started_at + timedelta(milliseconds=trace.time_to_first_token_ms)
        )
    observations.append(
        Observation(
            id=derived_hex(trace.request_id, destination_id, "generation", nbytes=8),
            type="GENERATION",
            name=trace.generation_name,
            parentObservationId=parent,
            startTime=start,
            endTime=end,
            completionStartTime=completion_start,
            model=trace.model,
            provider=trace.provider,
            input=None
            if trace.content_redacted
            else [chat_message(m) for m in trace.input_messages],
            output=None
            if trace.content_redacted
            else [chat_message(m) for m in trace.output_messages],
            finishReasons=list(trace.finish_reasons),
            modelParameters=dict(trace.model_parameters),
            tools=list(trace.tools),
            usage={
                "input": trace.usage.input_tokens,
                "output": trace.usage.output_tokens,
                "total": trace.usage.total_tokens,
                "cachedInput": trace.usage.cached_input_tokens,
                "cacheWriteInput": trace.usage.cache_write_input_tokens,
                "reasoning": trace.usage.reasoning_tokens,
            },
            cost={
                "total": trace.cost.total,
                "input": trace.cost.input,
                "output": trace.cost.output,
            },
            status=trace.status,
            error={"code": trace.error.code, "message": trace.error.message}
            if trace.error
            else None,
            metadata=dict(meta.extra),
        )
    )
    return TraceDocument(
        schema=SCHEMA,
        id=trace.grouping_id,
        requestId=trace.request_id,
        name=trace.trace_name,
        userId=trace.end_user,
        sessionId=trace.session_id,
        timestamp=start,
        metadata=dict(meta.extra),
        account={"userId": trace.user_id, "orgId": trace.org_id, "apiKeyId": trace.api_key_id},
        privacyMode=trace.content_redacted,
        streamed=trace.streamed,
        toolsOffered=trace.tools_offered,
        toolCallsMade=trace.tool_calls_made,
        observations=observations,
    )


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
