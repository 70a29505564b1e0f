"""The JSON encoding every JSON body and JSON-valued attribute uses.

orjson writes it: on the delivery path (OTLP bodies, their JSON-valued attributes, webhook
documents) the standard library's encoder was the largest single cost of a delivery.
Output is the same compact UTF-8 JSON, except that NaN and infinities are `null` (the
standard library writes bare `NaN`, which is not JSON). What orjson refuses (a lone
surrogate, an integer beyond 64 bits, nesting past 254 levels) falls back to the standard
library, so every value still encodes.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# Dataclasses and datetimes go through `default=str`, as with the standard library; keys
# that are not strings are written as strings, as it does.
_OPTIONS = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
)


def compact_json(value: Any) -> bytes:
    """JSON without spaces, as UTF-8 with non-ASCII kept; anything not JSON-native as its
    str(). The bytes a byte budget counts are the bytes sent."""
    try:
        return orjson.dumps(value, default=str, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return _standard_library(value).encode("utf-8")


def json_text(value: Any) -> str:
    """`compact_json` as text."""
    try:
        return orjson.dumps(value, default=str, option=_OPTIONS).decode("utf-8")
    except orjson.JSONEncodeError:
        return _standard_library(value)


def _standard_library(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
