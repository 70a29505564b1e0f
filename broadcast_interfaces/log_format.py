"""`BROADCAST_LOG_FORMAT=json`: one JSON object per log line, built from the stable names.

Broadcast logs `broadcast.deliver.retry destination=d1 status=503 wait=2.0`: a dotted
event name, then `key=value` fields. The JSON formatter keeps that contract machine-
readable: `{"event": "broadcast.deliver.retry", "destination": "d1", "status": 503,
"wait": 2.0, "logger": ..., "level": ..., "time": ..., "message": ...}`. Lines from
Celery or libraries, which have no event name, keep only `message` and the common keys.
Only what the message already says is emitted: the formatter adds no task arguments.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
# A stable event name: lower-case dotted words, at least two of them, at the very start.
_EVENT = re.compile(r"^([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+)(?=\s|$)")
# ` key=` starts a field; the value runs to the next ` key=` or the end of the line.
_FIELD = re.compile(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=")
_RESERVED = frozenset({"event", "logger", "level", "time", "message", "exception"})


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
        event, fields = parse_message(message)
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
        return json.dumps(document, default=str, ensure_ascii=False)


def install(logger: logging.Logger, log_format: str) -> None:
    """Put the JSON formatter on every handler of `logger` when `log_format` is `json`."""
    if log_format == "text":
        return
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    formatter = JsonFormatter()
    for handler in logger.handlers:
        handler.setFormatter(formatter)
