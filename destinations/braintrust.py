"""Braintrust: project log rows to `POST {base_url}/v1/project_logs/{project_id}/insert`.

| trace | Braintrust |
| --- | --- |
| `trace_id` (else derived from the request) | `root_span_id` of every row: requests group |
| `trace_name` (default: the model) | this request's top row, `{name, type: task}` |
| `span_name` | an intermediate row, `span_attributes` `{name, type: task}` |
| `generation_name` (default: the model) | the LLM row, `span_attributes` `{name, type: llm}` |
| `parent_span_id` (any form, as given) | `span_parents` of our top row (which stays) |
| `user` / `session_id` | `metadata.user_id` / `metadata.session_id` on every row |
| `tags` (a list of strings) | the top row's `tags` when it is the root; else `metadata.tags` |
| other `trace` keys | `metadata` on every row |
| model, provider, parameters | LLM row `metadata` `model` (Braintrust prices it too), ... |
| messages | LLM row `input` (chat messages) and `output` (assistant messages) |
| usage | LLM row `metrics`: `prompt_tokens`, `completion_tokens`, `tokens`, cache, reasoning |
| timing | `metrics.start` / `metrics.end` (unix seconds), `time_to_first_token` (s) |
| cost (USD, the gateway's total) | LLM row `metrics.estimated_cost` (what Braintrust's cost |
| | measures read; its own pricing applies only without it); the split in `metadata.cost` |
| finish time | `created` on every row (ISO 8601) |
| preview (`previews.py`) | top row `input` / `output` (the full messages are on the LLM row) |
| failed request | `error` (the message) on the LLM row and the root |

Row ids come from (request id, destination id): Braintrust replaces a row inserted again
with the same id, so retries do not duplicate. Requests sharing a `trace_id` share its
`root_span_id`; each contributes its own top row with its own times and never re-sends
another's. The content goes once, on the LLM row; the top row carries a bounded preview.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NotRequired, TypedDict
from urllib.parse import quote

from marshmallow import fields, validate

from destinations.base import (
    BatchLimits,
    ConfigSchema,
    ConnectionCheck,
    DeliveryContext,
    EncodedItem,
    HttpDestination,
    check_from_transport,
)
from destinations.budget import fitted_json
from destinations.chat_format import ChatMessage, chat_messages
from destinations.config_fields import url_field
from destinations.ids import derived_hex, derived_uuid
from destinations.json_body import compact_json
from destinations.outcomes import Outcome
from destinations.previews import input_preview, output_preview
from destinations.registry import register
from destinations.trace import Trace
from destinations.transport import HttpRequest, join_url

DEFAULT_BASE_URL = "https://api.braintrust.dev"
# The API states no limit; Braintrust's SDK splits its own log uploads at about 6 MB.
MAX_PAYLOAD_BYTES = 6_000_000
KEY_REJECTED = "Braintrust key rejected: check the API key"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BraintrustConfig(ConfigSchema):
    api_key = fields.String(
        required=True, validate=validate.Length(min=1, max=512), metadata={"secret": True}
    )
    # Goes into the URL path: ids are UUIDs, so anything else is refused on save.
    project_id = fields.String(
        required=True,
        validate=validate.Regexp(
            r"^[0-9A-Za-z][0-9A-Za-z_-]{0,127}$", error="Must be a Braintrust project id."
        ),
    )
    base_url = url_field(load_default=DEFAULT_BASE_URL)


class SpanAttributes(TypedDict):
    name: str
    type: str


class LogRow(TypedDict):
    id: str
    span_id: str
    root_span_id: str
    span_attributes: SpanAttributes
    metadata: dict[str, Any]
    metrics: dict[str, int | float]
    span_parents: NotRequired[list[str]]
    tags: NotRequired[list[str]]
    created: str
    input: NotRequired[list[ChatMessage] | str]
    output: NotRequired[list[ChatMessage] | str]
    error: NotRequired[str]


class InsertRequest(TypedDict):
    events: list[LogRow]


def root_span_id_for(trace: Trace, destination_id: str) -> str:
    """The caller's `trace_id` as given, else 32 hex characters derived from the request."""
    return trace.metadata.trace_id or derived_hex(
        trace.request_id, destination_id, "trace", nbytes=16
    )


def insert_request(trace: Trace, destination_id: str) -> InsertRequest:
    """Pure: the rows for one request (root, optional intermediate span, LLM span)."""
    meta = trace.metadata
    root_span_id = root_span_id_for(trace, destination_id)
    times = {"start": _seconds(trace.started_at), "end": _seconds(trace.finished_at)}
    tags, shared_metadata = _split_tags(trace)
    error = _error_text(trace)
    rows: list[LogRow] = []
    # This request's own top row: alone in its trace it is the root (span id = root span
    # id); sharing a trace_id, each request's top row is its own, with its own times.
    alone = meta.trace_id is None and meta.parent_span_id is None
    if tags and not alone:
        shared_metadata["tags"] = tags  # Braintrust takes `tags` on root spans only

    created = trace.finished_at.astimezone(UTC).isoformat().replace("+00:00", "Z")

    def row(row_id: str, name: str, span_type: str, span_id: str, parent: str | None) -> LogRow:
        out = LogRow(
            id=row_id,
            span_id=span_id,
            root_span_id=root_span_id,
            span_attributes=SpanAttributes(name=name, type=span_type),
            metadata=dict(shared_metadata),
            metrics=dict(times),
            created=created,
        )
        if parent is not None:
            out["span_parents"] = [parent]
        return out

    top_span_id = (
        root_span_id if alone else derived_hex(trace.request_id, destination_id, "top", nbytes=8)
    )
    top = row(
        derived_uuid(trace.request_id, destination_id, "root"),
        trace.trace_name,
        "task",
        top_span_id,
        meta.parent_span_id,
    )
    if tags and alone:
        top["tags"] = tags
    _set_previews(top, trace)
    if error:
        top["error"] = error
    rows.append(top)
    parent = top_span_id
    if meta.span_name:
        span_id = derived_hex(trace.request_id, destination_id, "span", nbytes=8)
        span_row_id = derived_uuid(trace.request_id, destination_id, "span")
        rows.append(row(span_row_id, meta.span_name, "task", span_id, parent))
        parent = span_id

    llm = row(
        derived_uuid(trace.request_id, destination_id, "llm"),
        trace.generation_name,
        "llm",
        derived_hex(trace.request_id, destination_id, "llm", nbytes=8),
        parent,
    )
    llm["metadata"].update(_llm_metadata(trace))
    llm["metrics"].update(llm_metrics(trace))
    _set_io(llm, trace)
    if error:
        llm["error"] = error
    rows.append(llm)
    return InsertRequest(events=rows)


def llm_metrics(trace: Trace) -> dict[str, int | float]:
    """The LLM row's token, cost and time-to-first-token metrics; unknown ones left out."""
    usage, cost = trace.usage, trace.cost
    values: dict[str, int | float | None] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "tokens": usage.total_tokens,
        "prompt_cached_tokens": usage.cached_input_tokens,
        "prompt_cache_creation_tokens": usage.cache_write_input_tokens,
        "completion_reasoning_tokens": usage.reasoning_tokens,
        "estimated_cost": cost.total,
    }
    if trace.time_to_first_token_ms is not None:
        values["time_to_first_token"] = trace.time_to_first_token_ms / 1000.0
    return {key: value for key, value in values.items() if value is not None}


@register
class BraintrustDestination(HttpDestination):
    slug = "braintrust"
    display_name = "Braintrust"
    config_schema = BraintrustConfig

    # Many requests' rows per insert, within the payload budget.
    batch_limits = BatchLimits(max_items=100, max_bytes=MAX_PAYLOAD_BYTES - 64 * 1024)

    def build_request(self, trace: Trace, context: DeliveryContext) -> HttpRequest:
        return self.batch_request([self.encode_item(trace, context).payload], context)

    def encode_item(self, trace: Trace, context: DeliveryContext) -> EncodedItem:
        """One request's rows, fitted to the byte budget."""
        shape, body = fitted_json(
            trace, lambda t: insert_request(t, context.destination_id), MAX_PAYLOAD_BYTES
        )
        return EncodedItem(shape["events"], len(body))

    def batch_request(self, payloads: Sequence[Any], context: DeliveryContext) -> HttpRequest:
        """One insert with every request's rows (each row has its own deterministic id)."""
        body = InsertRequest(events=[row for rows in payloads for row in rows])
        return HttpRequest(
            "POST",
            self._url(f"/v1/project_logs/{self._project()}/insert"),
            {**self._auth_headers(), "Content-Type": "application/json"},
            compact_json(body),
        )

    def test_connection(self, context: DeliveryContext) -> ConnectionCheck:
        """Read the project: 403 is a key without access to it, 400/404 an unknown project."""
        result = self.transport.send(
            HttpRequest("GET", self._url(f"/v1/project/{self._project()}"), self._auth_headers())
        )
        if result.status_code == 403:
            return ConnectionCheck(
                Outcome.AUTH_FAILED,
                "Braintrust key rejected for this project: it has no access to it",
                403,
            )
        if result.status_code in (400, 404):
            return ConnectionCheck(
                Outcome.PERMANENT,
                f"unknown project: Braintrust has no project {self.config['project_id']!r}",
                result.status_code,
            )
        return check_from_transport(result, rejected_message=KEY_REJECTED)

    def _project(self) -> str:
        return quote(self.config["project_id"], safe="")

    def _url(self, path: str) -> str:
        return join_url(self.config.get("base_url", DEFAULT_BASE_URL), path)

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config['api_key']}"}


def _seconds(moment: datetime) -> float:
    return (moment - _EPOCH) / timedelta(seconds=1)


def _error_text(trace: Trace) -> str | None:
    if not trace.is_error:
        return None
    return trace.error.message if trace.error else "request failed"


def _split_tags(trace: Trace) -> tuple[list[str], dict[str, Any]]:
    """The caller's `tags` when they are a list of strings, and the metadata every row gets."""
    extra = dict(trace.metadata.extra)
    tags = extra.get("tags")
    if isinstance(tags, list) and all(isinstance(tag, str) for tag in tags):
        del extra["tags"]
    else:
        tags = []
    if trace.end_user:
        extra["user_id"] = trace.end_user
    if trace.session_id:
        extra["session_id"] = trace.session_id
    return list(tags), extra


def _llm_metadata(trace: Trace) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        **trace.model_parameters,
        "model": trace.model,
        "provider": trace.provider,
        "request_id": trace.request_id,
        "streamed": trace.streamed,
        "tools_offered": trace.tools_offered,
        "tool_calls_made": trace.tool_calls_made,
    }
    if trace.tool_choice is not None:
        metadata["tool_choice"] = trace.tool_choice
    split = {"input": trace.cost.input, "output": trace.cost.output}
    if any(value is not None for value in split.values()):
        metadata["cost"] = {key: value for key, value in split.items() if value is not None}
    # Tool definitions are part of the prompt: they go wherever the messages go.
    if trace.tools and trace.input_messages:
        metadata["tools"] = list(trace.tools)
    if trace.finish_reasons:
        metadata["finish_reasons"] = list(trace.finish_reasons)
    if trace.error and trace.error.code is not None:
        metadata["error_code"] = trace.error.code
    if trace.content_redacted:
        metadata["privacy_mode"] = True
    return metadata


def _set_previews(row: LogRow, trace: Trace) -> None:
    question, answer = input_preview(trace), output_preview(trace)
    if question is not None:
        row["input"] = question
    if answer is not None:
        row["output"] = answer


def _set_io(row: LogRow, trace: Trace) -> None:
    if trace.input_messages:
        row["input"] = chat_messages(trace.input_messages)
    if trace.output_messages:
        row["output"] = chat_messages(trace.output_messages)
