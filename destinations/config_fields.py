"""Config fields that several destinations share, so each schema states only what differs."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from marshmallow import ValidationError, fields, validate


def url_field(**kwargs: Any) -> fields.Url:
    """An http(s) URL field that the URL guard checks on save. Hosts without a TLD (a
    collector at `http://otel:4318`) pass the schema: reaching a private address is the
    network policy's decision, not the schema's."""
    return fields.Url(
        schemes={"http", "https"}, require_tld=False, metadata={"url": True}, **kwargs
    )


def secret_field(*, max_length: int | None = None) -> fields.String:
    """A required, non-empty credential: encrypted at rest and masked on read."""
    return fields.String(
        required=True, validate=validate.Length(min=1, max=max_length), metadata={"secret": True}
    )


def custom_headers_field(reserved: frozenset[str]) -> fields.Dict:
    """Optional extra HTTP headers (secret: they usually carry a token)."""
    return fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        load_default=dict,
        validate=_headers_validator(reserved),
        metadata={"secret": True},
    )


# RFC 7230 3.2.6: a header name is a token.
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 7230 3.2: a field value is visible characters (VCHAR, and obs-text, which travels as
# Latin-1) separated by spaces or tabs, without whitespace at either end. No control
# character (NUL, VT, DEL, line breaks; of obs-text, the C1 controls 0x80-0x9F neither),
# nothing past Latin-1.
_VISIBLE = r"[\x21-\x7e\xa0-\xff]"
HEADER_VALUE = re.compile(rf"(?:{_VISIBLE}(?:[\t \x21-\x7e\xa0-\xff]*{_VISIBLE})?)?")


def _headers_validator(reserved: frozenset[str]) -> Callable[[Mapping[str, str]], None]:
    """Names are RFC 7230 tokens and not in `reserved` (lower-case); values follow RFC
    7230's field-value rule. Checked on save: a header that cannot be sent would fail the
    Test Connection with an encoding error, or every delivery at send time."""

    def check(value: Mapping[str, str]) -> None:
        for name, header_value in value.items():
            shown = repr(name[:100])
            if not HEADER_NAME.fullmatch(name):
                raise ValidationError(
                    f"{shown} is not a valid header name (RFC 7230: letters, digits and "
                    "!#$%&'*+-.^_`|~ only)."
                )
            if name.lower() in reserved:
                raise ValidationError(f"Header {name} is set by Broadcast.")
            if not HEADER_VALUE.fullmatch(header_value):
                raise ValidationError(
                    f"Header {name}: the value must be visible characters (Latin-1) and "
                    "inner spaces or tabs only, with no control character and no space at "
                    "either end (RFC 7230)."
                )

    return check
