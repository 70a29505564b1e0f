"""Config fields the OTLP destinations share, so each schema states only what differs."""

from __future__ import annotations

from typing import Any

from marshmallow import fields, validate


def url_field(**kwargs: Any) -> fields.Url:
    """An http(s) URL field that the URL guard checks on save. Hosts without a TLD (a
    collector at `http://otel:4318`) pass the schema: reaching a private address is the
    network policy's decision, not the schema's."""
    return fields.Url(
        schemes={"http", "https"}, require_tld=False, metadata={"url": True}, **kwargs
    )


def secret_field() -> fields.String:
    """A required, non-empty credential: encrypted at rest and masked on read."""
    return fields.String(required=True, validate=validate.Length(min=1), metadata={"secret": True})
