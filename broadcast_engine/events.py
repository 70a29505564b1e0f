"""Validate a gateway's finished-request event and turn it into a `Trace`.

The event schema is ARCHITECTURE.md's "The event". Validation never raises anything but
`InvalidEvent`, whose message names the event id (or says there is none) and the first
offending fields with their dotted paths, e.g.
``event gen-42 rejected: usage.prompt_tokens: Not a valid integer.``

Before any destination sees a trace, multimodal parts (images, audio, files) become
short placeholders such as ``[image]``, and the trace records whether tools were offered
and whether tool calls were made.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson
from marshmallow import (
    EXCLUDE,
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)

from destinations.trace import (
    Cost,
    Message,
    ToolCall,
    Trace,
    TraceError,
    TraceMetadata,
    Usage,
)
from settings.event_limits import EventLimits, LimitExceeded, check_event, marker_reason
from settings.models import OWNER_ID

RESERVED_TRACE_KEYS = ("trace_id", "trace_name", "span_name", "generation_name", "parent_span_id")
MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Request keys that are not sampling parameters.
NON_PARAMETER_KEYS = frozenset({"messages", "tools", "tool_choice", "model", "stream", "user"})
PLACEHOLDERS = {
    "image_url": "[image]",
    "image": "[image]",
    "input_image": "[image]",
    "input_audio": "[audio]",
    "audio": "[audio]",
    "file": "[file]",
    "input_file": "[file]",
    "video_url": "[video]",
}
# Every failing field is named (operators fix them all at once); past this many, a
# pathological event's reason says how many more there were.
MAX_REPORTED_FIELDS = 50
DEFAULT_LIMITS = EventLimits()

# Ranges that every serializer can carry (issue 22: values past them were accepted and
# then failed delivery as "internal error: OverflowError" dead letters):
# - counts: whole numbers a JSON reader in any language holds exactly (2^53 - 1);
# - times: from the unix epoch (OTLP's timestamps count from it, unsigned) to 2200
#   (within the signed 64-bit nanoseconds most OTLP libraries use, which end in 2262);
# - durations: a request cannot last 10 years, nor can its time to first token.
MAX_COUNT = 2**53 - 1
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
MAX_DURATION = timedelta(days=3653)
_non_negative_int = validate.Range(min=0, max=MAX_COUNT)
_non_negative = validate.Range(min=0)
_moment = validate.Range(
    min=EARLIEST, max=LATEST, max_inclusive=False, error="Must be from 1970 to before 2200."
)
_time_to_first_token = validate.Range(min=0, max=MAX_DURATION.total_seconds() * 1000)
_ID_LENGTH = validate.Length(min=1, max=256)
# Owner ids: the characters and length of an owner in the settings (settings.models), so
# a broken event can never name an owner key the settings could not have.
_OWNER_ID = validate.Regexp(
    rf"^{OWNER_ID}\Z", error="Must be 1 to 128 letters, digits or . _ @ - characters."
)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class RejectReason(StrEnum):
    """Why an event was rejected, as a class few enough for a metric label
    (`broadcast_events_rejected_total{reason=...}`); the full reason names the field."""

    NOT_AN_OBJECT = "not_an_object"  # the event is no JSON object
    LIMITS = "limits"  # past a documented limit (depth, size, messages, string length)
    SCHEMA = "schema"  # a field missing, of the wrong type or out of range
    ARGUMENTS = "arguments"  # the task was sent other arguments than the one event
    INTERNAL_ERROR = "internal_error"  # a bug met the event (logged with its traceback)


class InvalidEvent(ValueError):
    """The event cannot become a trace. Never retried: the same bytes fail the same way."""

    def __init__(
        self, event_id: str | None, reason: str, kind: RejectReason = RejectReason.SCHEMA
    ) -> None:
        self.event_id = event_id
        self.reason = reason
        self.kind = kind
        label = f"event {event_id}" if event_id else "event (no id)"
        super().__init__(f"{label} rejected: {reason}")


class _UsageSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    prompt_tokens = fields.Integer(required=True, strict=True, validate=_non_negative_int)
    completion_tokens = fields.Integer(required=True, strict=True, validate=_non_negative_int)
    total_tokens = fields.Integer(strict=True, validate=_non_negative_int, allow_none=True)
    cached_tokens = fields.Integer(strict=True, validate=_non_negative_int, allow_none=True)
    cache_write_tokens = fields.Integer(strict=True, validate=_non_negative_int, allow_none=True)
    reasoning_tokens = fields.Integer(strict=True, validate=_non_negative_int, allow_none=True)


class _CostSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    total = fields.Float(allow_none=True, validate=_non_negative)
    input = fields.Float(allow_none=True, validate=_non_negative)
    output = fields.Float(allow_none=True, validate=_non_negative)


class _ErrorSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    code = fields.Raw(allow_none=True)
    message = fields.String(required=True)


class _RequestSchema(Schema):
    class Meta:
        unknown = INCLUDE

    messages = fields.List(fields.Dict(), required=True)
    tools = fields.List(fields.Dict(), allow_none=True)
    tool_choice = fields.Raw(allow_none=True)


class _ResponseSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    choices = fields.List(fields.Dict(), required=True)


class _TraceMetadataSchema(Schema):
    class Meta:
        unknown = INCLUDE

    trace_id = fields.String(validate=_ID_LENGTH, allow_none=True)
    trace_name = fields.String(validate=validate.Length(max=512), allow_none=True)
    span_name = fields.String(validate=validate.Length(max=512), allow_none=True)
    generation_name = fields.String(validate=validate.Length(max=512), allow_none=True)
    # Any form callers send (16 hex, a UUID, another vendor's observation id): each vendor
    # module maps it to what it needs (`destinations.ids.span_id_hex`) and never refuses it.
    parent_span_id = fields.String(validate=_ID_LENGTH, allow_none=True)


class EventSchema(Schema):
    """The finished-request event. Unknown top-level keys are ignored for forward compatibility."""

    class Meta:
        unknown = EXCLUDE

    id = fields.String(required=True, validate=_ID_LENGTH)
    user_id = fields.String(required=True, validate=_OWNER_ID)
    org_id = fields.String(allow_none=True, validate=_OWNER_ID)
    api_key_id = fields.String(allow_none=True, validate=_ID_LENGTH)
    api_key_name = fields.String(allow_none=True, validate=_ID_LENGTH)
    model = fields.String(required=True, validate=validate.Length(min=1, max=256))
    provider = fields.String(required=True, validate=validate.Length(min=1, max=256))
    request = fields.Nested(_RequestSchema, required=True)
    response = fields.Nested(_ResponseSchema, allow_none=True)
    usage = fields.Nested(_UsageSchema, allow_none=True)
    cost = fields.Nested(_CostSchema, allow_none=True)
    started_at = fields.AwareDateTime(required=True, format="iso", validate=_moment)
    finished_at = fields.AwareDateTime(required=True, format="iso", validate=_moment)
    time_to_first_token_ms = fields.Float(allow_none=True, validate=_time_to_first_token)
    user = fields.String(allow_none=True, validate=validate.Length(max=128))
    session_id = fields.String(allow_none=True, validate=validate.Length(max=128))
    trace = fields.Nested(_TraceMetadataSchema, allow_none=True)
    status = fields.String(load_default="success", validate=validate.OneOf(["success", "error"]))
    error = fields.Nested(_ErrorSchema, allow_none=True)
    streamed = fields.Boolean(load_default=False)

    @validates_schema
    def _times_in_order(self, data: dict[str, Any], **_: Any) -> None:
        started, finished = data.get("started_at"), data.get("finished_at")
        if started and finished and finished < started:
            raise ValidationError("Must not be before started_at.", "finished_at")
        if started and finished and finished - started > MAX_DURATION:
            raise ValidationError("a request cannot last 10 years or more.", "finished_at")


_SCHEMA = EventSchema()


def event_id_of(event: Any) -> str | None:
    """The event's id if it has a usable one, for error messages about a broken event."""
    if isinstance(event, Mapping):
        value = event.get("id")
        if isinstance(value, str) and value:
            return value[:256]
    return None


def build_trace(event: Any, limits: EventLimits = DEFAULT_LIMITS) -> Trace:
    """Validate `event` and build its `Trace`. Raises `InvalidEvent` only.

    The limits (settings/event_limits.py) are checked first, without recursion, so
    nothing after them meets an event nested deeper than `limits.max_depth`.
    """
    event_id = event_id_of(event)
    if not isinstance(event, Mapping):
        raise InvalidEvent(
            None,
            f"the event must be a JSON object, not {type(event).__name__}",
            RejectReason.NOT_AN_OBJECT,
        )
    cut_reason = marker_reason(event)
    if cut_reason is not None:
        raise InvalidEvent(event_id, cut_reason, RejectReason.LIMITS)
    try:
        check_event(event, limits)
    except LimitExceeded as exc:
        raise InvalidEvent(event_id, str(exc), RejectReason.LIMITS) from None
    try:
        data = _SCHEMA.load(without_lone_surrogates(event))
    except ValidationError as exc:
        raise InvalidEvent(event_id, _describe(exc.messages)) from None
    try:
        return _trace_from(data)
    except ValidationError as exc:
        raise InvalidEvent(event_id, _describe(exc.messages)) from None


def without_lone_surrogates(value: Any) -> Any:
    """`value` with every unpaired UTF-16 surrogate in its strings (keys too) replaced by
    U+FFFD. `json.loads` returns them for `"\\ud83d"`, and no serializer can encode them."""
    try:
        orjson.dumps(value)  # refuses any surrogate, in C: most events have none
    except orjson.JSONEncodeError:
        return _replace_lone_surrogates(value)
    return value


def _replace_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value) if _has_surrogate(value) else value
    if isinstance(value, Mapping):
        return {_replace_lone_surrogates(k): _replace_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_replace_lone_surrogates(item) for item in value]
    return value


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _trace_from(data: dict[str, Any]) -> Trace:
    request = data["request"]
    input_messages = tuple(
        _message(raw, f"request.messages.{index}") for index, raw in enumerate(request["messages"])
    )
    choices = (data.get("response") or {}).get("choices") or []
    output_messages: list[Message] = []
    finish_reasons: list[str] = []
    for index, choice in enumerate(choices):
        raw_message = choice.get("message")
        if raw_message is not None:
            path = f"response.choices.{index}.message"
            output_messages.append(_message(raw_message, path, default_role="assistant"))
        if choice.get("finish_reason"):
            finish_reasons.append(str(choice["finish_reason"]))
    tools = tuple(request.get("tools") or ())
    usage = data.get("usage") or {}
    cost = data.get("cost") or {}
    metadata = data.get("trace") or {}
    error = data.get("error")
    user_id, org_id = data["user_id"], data.get("org_id")
    return Trace(
        request_id=data["id"],
        owner=f"org:{org_id}" if org_id else f"user:{user_id}",
        user_id=user_id,
        org_id=org_id,
        api_key_id=data.get("api_key_id"),
        api_key_name=data.get("api_key_name"),
        model=data["model"],
        provider=data["provider"],
        started_at=data["started_at"],
        finished_at=data["finished_at"],
        input_messages=input_messages,
        output_messages=tuple(output_messages),
        finish_reasons=tuple(finish_reasons),
        tools=tools,
        tool_choice=request.get("tool_choice"),
        model_parameters={
            key: value
            for key, value in request.items()
            if key not in NON_PARAMETER_KEYS and _is_parameter_value(value)
        },
        usage=Usage(
            input_tokens=usage.get("prompt_tokens", 0),
            output_tokens=usage.get("completion_tokens", 0),
            total_tokens=usage.get("total_tokens")
            or usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0),
            cached_input_tokens=usage.get("cached_tokens"),
            cache_write_input_tokens=usage.get("cache_write_tokens"),
            reasoning_tokens=usage.get("reasoning_tokens"),
        ),
        cost=Cost(total=cost.get("total"), input=cost.get("input"), output=cost.get("output")),
        time_to_first_token_ms=data.get("time_to_first_token_ms"),
        end_user=data.get("user"),
        session_id=data.get("session_id"),
        metadata=TraceMetadata(
            **{key: metadata.get(key) for key in RESERVED_TRACE_KEYS},
            extra={k: v for k, v in metadata.items() if k not in RESERVED_TRACE_KEYS},
        ),
        status=data["status"],
        error=TraceError(
            code=None if error.get("code") is None else str(error["code"]),
            message=error["message"],
        )
        if error
        else None,
        streamed=data["streamed"],
        tools_offered=bool(tools),
        tool_calls_made=any(message.tool_calls for message in output_messages),
    )


def _message(raw: Any, path: str, default_role: str | None = None) -> Message:
    if not isinstance(raw, Mapping):
        raise ValidationError({path: ["Must be an object."]})
    role = raw.get("role", default_role)
    if role not in MESSAGE_ROLES:
        raise ValidationError({f"{path}.role": [f"Must be one of {sorted(MESSAGE_ROLES)}."]})
    calls = raw.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise ValidationError({f"{path}.tool_calls": ["Must be a list or null."]})
    return Message(
        role=role,
        content=_content_text(raw.get("content"), f"{path}.content"),
        tool_calls=tuple(
            _tool_call(call, f"{path}.tool_calls.{i}") for i, call in enumerate(calls or ())
        ),
        tool_call_id=_optional_str(raw.get("tool_call_id")),
        name=_optional_str(raw.get("name")),
    )


def _content_text(content: Any, path: str) -> str | None:
    """Text content, with each non-text part replaced by a short placeholder."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValidationError({path: ["Must be a string, a list of parts or null."]})
    pieces = []
    for index, part in enumerate(content):
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise ValidationError({f"{path}.{index}": ["Must be an object with a 'type'."]})
        if part["type"] in ("text", "input_text", "output_text"):
            pieces.append(str(part.get("text", "")))
        else:
            pieces.append(PLACEHOLDERS.get(part["type"], f"[{part['type']}]"))
    return "\n".join(pieces)


def _tool_call(raw: Any, path: str) -> ToolCall:
    if not isinstance(raw, Mapping):
        raise ValidationError({path: ["Must be an object."]})
    function = raw.get("function") or {}
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(name, str) or not name:
        raise ValidationError({f"{path}.function.name": ["Missing data for required field."]})
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, separators=(",", ":"), sort_keys=True)
    return ToolCall(id=str(raw.get("id") or ""), name=name, arguments=arguments)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _is_parameter_value(value: Any) -> bool:
    if isinstance(value, bool | int | float | str) or value is None:
        return True
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _describe(messages: Any) -> str:
    """Flatten marshmallow's nested error dict into `path: message` pairs, first few only."""
    flat: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, child in node.items():
                walk(child, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list) and node and all(isinstance(item, str) for item in node):
            flat.append(f"{path or 'event'}: {' '.join(node)}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{path}.{index}")
        else:
            flat.append(f"{path or 'event'}: {node}")

    walk(messages, "")
    shown = "; ".join(flat[:MAX_REPORTED_FIELDS])
    more = len(flat) - MAX_REPORTED_FIELDS
    return shown + (f" (and {more} more)" if more > 0 else "")
