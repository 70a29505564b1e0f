"""`BROADCAST_LOG_FORMAT=json`: one JSON object per log line, built from the stable names.

Broadcast logs `broadcast.deliver.retry destination=d1 status=503 wait=2.0`: a dotted
event name, then `key=value` fields. The JSON formatter keeps that contract machine-
readable: `{"event": "broadcast.deliver.retry", "destination": "d1", "status": 503,
"wait": 2.0, "logger": ..., "level": ..., "time": ..., "message": ...}`. Lines from
Celery or libraries, which have no event name, keep only `message` and the common keys.
Only what the message already says is emitted: the formatter adds no task arguments.

Neither format can be forged by a value from outside (an event id, a trace key, a
vendor's answer, a broker message's task id):

- text (the default): every record is one line. Control and line-breaking characters in
  the message are escaped (`settings.printable.escape_controls`), and the further lines
  of a record (a traceback) are escaped and indented, so no line can pass for a record
  of its own (`SingleLineFormatter`, put on Celery's handlers by `install`);
- JSON: the fields come from the call's template (`broadcast.deliver.delivered
  destination=%s ...`), each value formatted from its own arguments, so an argument that
  contains ` destination=dst_FORGED` stays inside its own value; the few characters JSON
  leaves raw that line-based readers split on (U+2028, U+2029, C1 controls, DEL) and
  lone surrogates are written as `\\uXXXX` escapes.
"""

from __future__ import annotations

import copy
import json
import logging
import logging.config
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from settings.printable import escape_controls

FORMATS = ("text", "json")
# A stable event name: lower-case dotted words, at least two of them, at the very start.
_EVENT = re.compile(r"^([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+)(?=\s|$)")
# ` key=` starts a field; the value runs to the next ` key=` or the end of the line.
_FIELD = re.compile(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=")
_RESERVED = frozenset({"event", "logger", "level", "time", "message", "exception"})
# A %-style placeholder of a log call's template (`%s`, `%d`, `%.1f`, `%%`, ...).
_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[diouxXeEfFgGcrsa%]")
# What json.dumps(ensure_ascii=False) leaves raw that a line-based reader may split on.
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# The prefix of a record's further lines (a traceback) in the text format.
CONTINUATION = "    "


def parse_message(message: str) -> tuple[str | None, dict[str, Any]]:
    """Split `event key=value ...` into the event name and typed fields.

    Values that read as integers or floats become numbers; `None` becomes null; anything
    else stays a string. A field named like a reserved key gets a trailing underscore.
    """
    match = _EVENT.match(message)
    if match is None:
        return None, {}
    rest = message[match.end() :]
    found = list(_FIELD.finditer(rest))
    fields: dict[str, Any] = {}
    if found and rest[: found[0].start()].strip():
        fields["text"] = rest[: found[0].start()].strip()
    elif not found and rest.strip():
        fields["text"] = rest.strip()
    for index, field in enumerate(found):
        end = found[index + 1].start() if index + 1 < len(found) else len(rest)
        name = field.group(1)
        fields[name + "_" if name in _RESERVED else name] = _value(rest[field.end() : end].strip())
    return match.group(1), fields


def parse_record(record: logging.LogRecord) -> tuple[str | None, dict[str, Any]]:
    """`parse_message` on the record's template rather than its formatted message: the
    field names and boundaries are the call's own, each value is formatted from its own
    arguments. A record whose template cannot be split that way (no arguments, a mapping
    of arguments, placeholders that do not match them) is parsed from its message."""
    template, args = record.msg, record.args
    if not isinstance(template, str) or not args or isinstance(args, Mapping):
        return parse_message(record.getMessage())
    match = _EVENT.match(template)
    if match is None:
        return None, {}
    rest = template[match.end() :]
    found = list(_FIELD.finditer(rest))
    bounds = [0, *(field.start() for field in found), len(rest)]
    segments = [rest[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
    counts = [sum(1 for p in _PLACEHOLDER.findall(seg) if p != "%%") for seg in segments]
    if sum(counts) != len(args):
        return parse_message(record.getMessage())
    values: list[str] = []
    taken = 0
    try:
        for segment, count in zip(segments, counts, strict=True):
            values.append(segment % tuple(args[taken : taken + count]))
            taken += count
    except (TypeError, ValueError):
        return parse_message(record.getMessage())
    fields: dict[str, Any] = {}
    if values[0].strip():
        fields["text"] = values[0].strip()
    for field, value in zip(found, values[1:], strict=True):
        name = field.group(1)
        text = value[len(field.group()) :] if value.startswith(field.group()) else value
        fields[name + "_" if name in _RESERVED else name] = _value(text.strip())
    return match.group(1), fields


def _value(raw: str) -> Any:
    if raw == "None":
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            continue
    return raw


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        event, fields = parse_record(record)
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        if event is not None:
            document["event"] = event
            document.update(fields)
        document["message"] = message
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        line = json.dumps(document, default=str, ensure_ascii=False)
        return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


class SingleLineFormatter(logging.Formatter):
    """A text formatter (Celery's, with its colours and task ids) whose records stay one
    line each: the message's control characters escaped; a traceback's lines escaped and
    indented by `CONTINUATION`."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        escaped = escape_controls(message)
        if escaped is message and not record.exc_info and not record.stack_info:
            return self.inner.format(record)  # the common case: nothing to change
        shown = copy.copy(record)
        shown.msg, shown.args = escaped, None
        lines = self.inner.format(shown).split("\n")
        return ("\n" + CONTINUATION).join(escape_controls(line) for line in lines)


def install(logger: logging.Logger, log_format: str) -> None:
    """Put the formatter of `log_format` on every handler of `logger`: `JsonFormatter`
    for `json`, and for `text` each handler's own formatter kept one line per record."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    for handler in logger.handlers:
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
        elif not isinstance(handler.formatter, SingleLineFormatter):
            handler.setFormatter(SingleLineFormatter(handler.formatter or logging.Formatter()))


def json_before_setup() -> None:
    """`BROADCAST_LOG_FORMAT=json` from a process's first line: a JSON handler on the
    root logger (stderr) and Python warnings routed into logging, for what a process
    says before its logging is set up (Celery's SecurityWarning is warned before the
    worker configures logging). Celery replaces the root's handlers when it sets up its
    own, and `install` puts the JSON formatter on those."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    logging.captureWarnings(True)


def json_line(
    template: str, *args: object, name: str = "broadcast", level: int = logging.INFO
) -> str:
    """One JSON log line for text a library prints instead of logging (a banner, a
    shutdown notice), to be written where it would have printed it."""
    record = logging.LogRecord(name, level, __file__, 0, template, args, None)
    return JsonFormatter().format(record)


def api_log_config(log_format: str, level: str = "INFO") -> dict[str, Any]:
    """The API server's logging (`broadcast serve`), for `uvicorn.run(log_config=...)`:
    uvicorn's loggers and Broadcast's own write `log_format` lines to stderr at `level`,
    Python warnings included. Applied here at once too, so the lines before uvicorn
    starts are formatted alike."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    formatter = f"{__name__}.{'JsonFormatter' if log_format == 'json' else 'text_formatter'}"
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "broadcast",
        "stream": "ext://sys.stderr",
    }
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"broadcast": {"()": formatter}},
        "handlers": {"broadcast": handler},
        "root": {"handlers": ["broadcast"], "level": level},
        "loggers": {
            name: {"handlers": [], "level": level, "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
    return config


def text_formatter() -> logging.Formatter:
    """The text format outside Celery: a timestamp, the level, the logger, the message;
    one line per record."""
    return SingleLineFormatter(
        logging.Formatter("[%(asctime)s: %(levelname)s/%(name)s] %(message)s")
    )
