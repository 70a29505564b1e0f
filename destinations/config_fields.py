"""Config fields that several destinations share, so each schema states only what differs."""

from __future__ import annotations

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


def _headers_validator(reserved: frozenset[str]) -> Callable[[Mapping[str, str]], None]:
    """Names are HTTP tokens and not in `reserved` (lower-case); values have no line breaks
    (which `requests` would refuse at send time, on every retry)."""

    def check(value: Mapping[str, str]) -> None:
        for name, header_value in value.items():
            if not name or any(ch in name for ch in " :\r\n\t"):
                raise ValidationError(f"{name!r} is not a valid header name.")
            if name.lower() in reserved:
                raise ValidationError(f"Header {name} is set by Broadcast.")
            if "\r" in header_value or "\n" in header_value:
                raise ValidationError(f"Header {name} must not contain line breaks.")

    return check
