"""The vendor-neutral trace of one finished LLM request.

Every serializer takes a `Trace` and nothing else from the event, so this module is the
contract between the pipeline (which builds traces from validated gateway events) and the
destinations (which turn them into wire bodies). Traces are immutable and travel inside
task messages through `to_wire()` / `from_wire()`, which round-trip exactly.

Hierarchy (ARCHITECTURE.md, "Trace hierarchy"): `metadata.trace_name` names the trace,
`metadata.span_name` an intermediate span (only when given), `metadata.generation_name`
the generation (both names default to the model). `metadata.trace_id` groups requests;
`metadata.parent_span_id` hangs the generation under the caller's own span.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

WIRE_VERSION = 1


@dataclass(frozen=True)
class ToolCall:
    """A tool call made by the model; `arguments` is the raw JSON string the model produced."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    """One chat message, text only: multimodal parts are already short placeholders."""

    role: str
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cached_input_tokens: int | None = None
    cache_write_input_tokens: int | None = None
    reasoning_tokens: int | None = None


@dataclass(frozen=True)
class Cost:
    """Cost in USD; `input` and `output` are optional splits of `total`."""

    total: float | None = None
    input: float | None = None
    output: float | None = None


@dataclass(frozen=True)
class TraceMetadata:
    """The caller's `trace` object: the reserved keys plus everything else in `extra`."""

    trace_id: str | None = None
    trace_name: str | None = None
    span_name: str | None = None
    generation_name: str | None = None
    parent_span_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TraceError:
    code: str | None
    message: str


@dataclass(frozen=True)
class Trace:
    """One finished request, as every destination sees it.

    `owner` is `org:ID` when the request used an organization's key, else `user:ID`.
    `content_redacted` is true once privacy mode removed prompt and completion content.
    """

    request_id: str
    owner: str
    user_id: str
    org_id: str | None
    api_key_id: str | None
    model: str
    provider: str
    started_at: datetime
    finished_at: datetime
    input_messages: tuple[Message, ...] = ()
    output_messages: tuple[Message, ...] = ()
    finish_reasons: tuple[str, ...] = ()
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: Any = None
    model_parameters: dict[str, Any] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    cost: Cost = field(default_factory=Cost)
    time_to_first_token_ms: float | None = None
    end_user: str | None = None
    session_id: str | None = None
    # The name the account gave the API key (S3's `{apiKeyName}`, filter rules); None if keyless.
    api_key_name: str | None = None
    metadata: TraceMetadata = field(default_factory=TraceMetadata)
    status: str = "success"
    error: TraceError | None = None
    streamed: bool = False
    tools_offered: bool = False
    tool_calls_made: bool = False
    content_redacted: bool = False

    @property
    def is_error(self) -> bool:
        return self.status == "error"

    @property
    def trace_name(self) -> str:
        return self.metadata.trace_name or self.model

    @property
    def generation_name(self) -> str:
        return self.metadata.generation_name or self.model

    @property
    def duration_ms(self) -> float:
        return (self.finished_at - self.started_at).total_seconds() * 1000.0

    @property
    def grouping_id(self) -> str:
        """The id that groups requests into one trace: the caller's `trace_id`, else ours."""
        return self.metadata.trace_id or self.request_id

    def without_content(self) -> Trace:
        """Privacy mode: drop prompts, completions and tool arguments; keep everything else."""
        return dataclasses.replace(
            self, input_messages=(), output_messages=(), content_redacted=True
        )

    def to_wire(self) -> dict[str, Any]:
        """A JSON-safe dict for task messages (datetimes as ISO 8601 strings)."""
        wire: dict[str, Any]
        try:
            # orjson walks the dataclasses in C and writes datetimes as `isoformat()` does;
            # `dataclasses.asdict` deep-copies in Python, a fifth of fan-out's own time.
            wire = orjson.loads(orjson.dumps(self))
        except orjson.JSONEncodeError:  # what orjson refuses, e.g. an integer past 64 bits
            wire = dataclasses.asdict(self)
            wire["started_at"] = self.started_at.isoformat()
            wire["finished_at"] = self.finished_at.isoformat()
        wire["wire_version"] = WIRE_VERSION
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Trace:
        """Inverse of `to_wire`. Raises `ValueError` on a message of another wire version."""
        data = dict(wire)
        version = data.pop("wire_version", None)
        if version != WIRE_VERSION:
            raise ValueError(f"trace wire version {version!r} is not {WIRE_VERSION}")
        error = data.pop("error")
        return cls(
            **{
                **data,
                "started_at": datetime.fromisoformat(data["started_at"]),
                "finished_at": datetime.fromisoformat(data["finished_at"]),
                "input_messages": _messages(data["input_messages"]),
                "output_messages": _messages(data["output_messages"]),
                "finish_reasons": tuple(data["finish_reasons"]),
                "tools": tuple(data["tools"]),
                "usage": Usage(**data["usage"]),
                "cost": Cost(**data["cost"]),
                "metadata": TraceMetadata(**data["metadata"]),
                "error": TraceError(**error) if error else None,
            }
        )


def _messages(raw: list[dict[str, Any]]) -> tuple[Message, ...]:
    return tuple(
        Message(**{**item, "tool_calls": tuple(ToolCall(**call) for call in item["tool_calls"])})
        for item in raw
    )
