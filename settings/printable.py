"""Text from outside made safe to print on one line: control characters escaped.

A value that came from a gateway, a vendor or a broker message (an event id, a trace key,
a vendor's error text) can carry a newline, a carriage return or an ANSI escape; printed
raw in a text log it starts a forged line of its own. `escape_controls` writes every
character that could break or restyle a line as a visible escape instead: C0 and C1
controls, DEL, and the Unicode line and paragraph separators (which `str.splitlines`,
and so many log readers, treat as line breaks). Lone surrogates become escapes too, so
the result always encodes as UTF-8.
"""

from __future__ import annotations

import re

# Tab stays: it is whitespace within a line, and Python's tracebacks never produce it.
_UNPRINTABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def escape_controls(text: str) -> str:
    """`text` with each control or line-breaking character written as `\\n`, `\\r`,
    `\\xNN` or `\\uNNNN`; text without any is returned as is (the common case, one scan)."""
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
