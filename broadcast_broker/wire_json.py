"""JSON for broker messages (task bodies and stream-transport envelopes): `.delay()`
encodes each message once, a worker decodes each once.

orjson does both, several times faster than kombu's coder, and writes no spaces. What
orjson refuses goes to kombu's, so every message reads as kombu would read it: on the way
out a type kombu encodes with its own markers (`Decimal`, bytes), a non-string key or
nesting past 254 levels; on the way in, text with kombu's type markers, NaN, a lone
surrogate or an integer past 64 bits.
"""

from __future__ import annotations

from typing import Any

import orjson
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads


def dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode("utf-8")
    except (TypeError, orjson.JSONEncodeError):
        return kombu_dumps(value)


def loads(data: str | bytes) -> Any:
    marked = b'"__type__"' in data if isinstance(data, bytes) else '"__type__"' in data
    if not marked:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return kombu_loads(data)
