"""The JSON encoding every JSON body and JSON-valued attribute uses."""

from __future__ import annotations

import json
from typing import Any


def json_text(value: Any) -> str:
    """JSON without spaces and with non-ASCII kept; anything not JSON-native as its str()."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def compact_json(value: Any) -> bytes:
    """`json_text` as UTF-8: the bytes a byte budget counts are the bytes sent."""
    return json_text(value).encode("utf-8")
