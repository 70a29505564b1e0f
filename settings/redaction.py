"""Remove credentials from text that is stored, logged or shown, in every form they travel.

How each destination sends its credentials (destinations/*.py), and so what a vendor may
echo back in an error:

| type | credential on the wire |
| --- | --- |
| langfuse | `Authorization: Basic base64(public_key:secret_key)` |
| grafana | `Authorization: Basic base64(instance_id:api_key)` |
| braintrust, phoenix | `Authorization: Bearer <api_key>` |
| dynatrace | `Authorization: Api-Token <api_token>` |
| arize | `authorization: <api_key>` (and `arize-space-id`, not secret) |
| datadog | `DD-API-KEY: <api_key>` |
| langsmith | `x-api-key: <api_key>` |
| weave | `wandb-api-key: <api_key>` |
| newrelic | `api-key: <license_key>` |
| webhook, otel-collector | custom `headers` (any value, often `Bearer ...` or `Basic ...`); |
|  | webhook `signing_secret` signs: `webhook-signature: v1,<base64 HMAC>` |
| s3, firehose | SigV4: `Authorization: AWS4-HMAC-SHA256 Credential=..., Signature=<hex>` |
| opik | `Authorization: <api_key>` (and `Comet-Workspace`, not secret) |
| raindrop, ramp | `Authorization: Bearer <write_key / api_key>` |
| posthog | `api_key` in the JSON body |
| sentry | `X-Sentry-Auth: Sentry sentry_key=<the DSN's public key>, ...`; the DSN is the secret |

So `redact` replaces each secret as given; its token without an auth scheme (`Bearer`,
`Basic`, `Api-Token`, `whsec_`); the user:password inside a `Basic` value; the user and
password inside a URL (a Sentry DSN's public key); their URL-encoded, JSON-escaped, hex
(either case) and base64 forms (standard and URL-safe, padded or not); any
base64 word that decodes to text containing a secret, which catches `x:secret` and
`secret:x` pairs with any other value (Langfuse's and Grafana's Basic header); and
signatures (SigV4 `Signature=`, `X-Amz-Signature=`, Standard Webhooks `v1,`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

REDACTED = "[redacted]"
# Shorter values are not redacted: replacing "abc" everywhere would shred the text.
MIN_SECRET_CHARS = 4
AUTH_SCHEMES = ("bearer", "basic", "token", "api-token", "apikey", "dsn")
SECRET_PREFIXES = ("whsec_",)

_BASE64_WORD = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")
_SIGNATURES = re.compile(
    r"(?i)((?:x-amz-)?signature(?:=|%3D)|v1(?:,|%2C))([A-Za-z0-9+/_%-]{16,}={0,2})",
)


def redact(text: str, secret_values: Mapping[str, Any]) -> str:
    """`text` with every secret in `secret_values` (a destination's decrypted secret
    fields; a mapping value, e.g. custom headers, counts each of its values) replaced by
    `[redacted]`, in any of the forms listed in the module docstring."""
    if not text:
        return text
    cores = _cores(_secret_strings(secret_values.values()))
    for needle in sorted(_derived_forms(cores), key=len, reverse=True):
        text = text.replace(needle, REDACTED)
    if cores:
        text = _BASE64_WORD.sub(lambda m: _redact_word(m.group(), cores), text)
    return _SIGNATURES.sub(lambda m: m.group(1) + REDACTED, text)


def _secret_strings(values: Iterable[Any]) -> Iterable[str]:
    for value in values:
        if isinstance(value, str):
            yield value
        elif isinstance(value, Mapping):
            yield from _secret_strings(value.values())


def _cores(secrets: Iterable[str]) -> frozenset[str]:
    """Each secret, and the credential inside it: without an auth scheme or a known
    prefix, and the user:password of a Basic value and its password."""
    found: set[str] = set()
    for secret in secrets:
        value = secret.strip()
        found.add(value)
        scheme, _, rest = value.partition(" ")
        if rest and scheme.lower() in AUTH_SCHEMES:
            found.add(rest.strip())
            if scheme.lower() == "basic":
                decoded = _b64_text(rest.strip())
                if decoded:
                    found.add(decoded)
                    found.add(decoded.partition(":")[2])
        for prefix in SECRET_PREFIXES:
            if value.startswith(prefix):
                found.add(value[len(prefix) :])
        found |= _url_credentials(value)
    return frozenset(core for core in found if len(core) >= MIN_SECRET_CHARS)


def _url_credentials(value: str) -> set[str]:
    """The user and password of a URL that carries them (a Sentry DSN's keys)."""
    if "://" not in value or "@" not in value:
        return set()
    userinfo = value.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    return {part for part in (user, password) if part}


def _derived_forms(cores: Iterable[str]) -> set[str]:
    forms: set[str] = set()
    for core in cores:
        raw = core.encode()
        encoded = base64.b64encode(raw).decode()
        urlsafe = base64.urlsafe_b64encode(raw).decode()
        forms |= {
            core,
            quote(core, safe=""),
            quote(core),
            quote_plus(core),
            json.dumps(core)[1:-1],
            encoded,
            encoded.rstrip("="),
            urlsafe,
            urlsafe.rstrip("="),
            raw.hex(),
            raw.hex().upper(),
        }
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


def _redact_word(word: str, cores: frozenset[str]) -> str:
    # Each of the four alignments: the word may start with a stray prefix ("20" of a
    # URL-encoded space before the base64 value).
    for start in range(4):
        decoded = _b64_text(word[start:])
        if decoded and any(core in decoded for core in cores):
            return REDACTED
    return word


def _b64_text(word: str) -> str | None:
    """`word` decoded as base64 (standard or URL-safe, padding optional), or None."""
    padded = word + "=" * (-len(word) % 4)
    altchars = b"-_" if ("-" in word or "_" in word) else None
    try:
        return base64.b64decode(padded, altchars=altchars).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None
