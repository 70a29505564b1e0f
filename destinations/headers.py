"""Validation of user-supplied custom headers (a secret config field of several vendors)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from marshmallow import ValidationError


def custom_headers_validator(reserved: frozenset[str]) -> Callable[[Mapping[str, str]], None]:
    """A marshmallow validator: names are HTTP tokens and not in `reserved` (lower-case);
    values have no line breaks (which `requests` would refuse at send time, forever)."""

    def validate(value: Mapping[str, str]) -> None:
        for name, header_value in value.items():
            if not name or any(ch in name for ch in " :\r\n\t"):
                raise ValidationError(f"{name!r} is not a valid header name.")
            if name.lower() in reserved:
                raise ValidationError(f"Header {name} is set by Broadcast.")
            if "\r" in header_value or "\n" in header_value:
                raise ValidationError(f"Header {name} must not contain line breaks.")

    return validate
