"""Google's OAuth 2.0 token endpoint for service accounts, on loopback.

A service account's key file names this endpoint as its `token_uri`; the client signs a
JWT (RS256, `iss` the account's email, `aud` Google's token endpoint, `scope` what it asks
for, `iat` and `exp` at most an hour apart) with the key's private half and posts it as
`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`. This endpoint
keeps only the public half of each key it made, so an access token is issued only for an
assertion really signed by that key (checked by google-auth's own verifier).

| request | answer (as Google's endpoint documents) |
| --- | --- |
| a valid assertion | 200 `{"access_token", "expires_in": 3599, "token_type": "Bearer"}` |
| another grant type | 400 `unsupported_grant_type` |
| a bad signature, audience or time, or an unknown key | 400 `invalid_grant` |
| a disabled account (`disable`) | 400 `invalid_grant`, "account not found" |
| no `scope` claim | 400 `invalid_scope` |

The front (`bigquery_front`) asks `grant(token)` who a bearer token belongs to and with
which scopes; `expire_tokens` and `disable` let a test end tokens the client still thinks
are valid, as Google does when a key is deleted or a token revoked.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from harness.receiver import ReceivedRequest, Reply
from tests.emulators import Emulator, json_reply

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# The `aud` Google requires of every assertion, whichever address the token_uri has
# ("this value is always https://oauth2.googleapis.com/token"); google-auth sends it.
AUDIENCE = "https://oauth2.googleapis.com/token"
TOKEN_LIFETIME_SECONDS = 3599


@dataclass
class Account:
    email: str
    key_id: str
    public_pem: bytes
    disabled: bool = False


@dataclass(frozen=True)
class Grant:
    """What an access token stands for."""

    email: str
    scopes: frozenset[str]
    expires_at: float


class GoogleTokenEndpoint(Emulator):
    def __init__(self, project_id: str) -> None:
        super().__init__()
        self.project_id = project_id
        self._lock = threading.Lock()
        self._accounts: dict[str, Account] = {}
        self._tokens: dict[str, Grant] = {}
        self.issued: list[str] = []  # the email of each grant, in order

    @property
    def token_uri(self) -> str:
        return self.url + "/token"

    def new_account(self, name: str, token_uri: str | None = None) -> str:
        """A new service account with a fresh RSA key: its key file (JSON text), with
        `token_uri` this endpoint unless given."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        email = f"{name}@{self.project_id}.iam.gserviceaccount.com"
        key_id = secrets.token_hex(20)
        with self._lock:
            self._accounts[email] = Account(
                email,
                key_id,
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
            )
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return json.dumps(
            {
                "type": "service_account",
                "project_id": self.project_id,
                "private_key_id": key_id,
                "private_key": private_pem,
                "client_email": email,
                "client_id": str(secrets.randbelow(10**20)),
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": token_uri or self.token_uri,
            }
        )

    def grant(self, token: str) -> Grant | None:
        """Who `token` was issued to, or None when it is unknown, expired or revoked."""
        with self._lock:
            grant = self._tokens.get(token)
        if grant is None or grant.expires_at <= time.time():
            return None
        return grant

    def tokens_of(self, email: str) -> list[str]:
        """Every access token issued to the account (for scans that they leak nowhere)."""
        with self._lock:
            return [token for token, grant in self._tokens.items() if grant.email == email]

    def expire_tokens(self, email: str) -> None:
        """End every token of the account now (the client still believes them valid);
        the key can still be exchanged for new ones."""
        with self._lock:
            for token, grant in list(self._tokens.items()):
                if grant.email == email:
                    self._tokens[token] = Grant(grant.email, grant.scopes, 0.0)

    def disable(self, email: str) -> None:
        """Disable the account: its tokens end and its key is no longer exchanged."""
        with self._lock:
            self._accounts[email].disabled = True
        self.expire_tokens(email)

    def _respond(self, request: ReceivedRequest) -> Reply:
        if request.method != "POST" or urlsplit(request.path).path != "/token":
            return json_reply(404, {"error": "not_found"})
        form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
        if form.get("grant_type") != JWT_BEARER:
            return _oauth_error("unsupported_grant_type", "Invalid grant_type.")
        return self._exchange(form.get("assertion", ""))

    def _exchange(self, assertion: str) -> Reply:
        from google.auth import exceptions, jwt

        try:
            claims = jwt.decode(assertion, verify=False)
            header = jwt.decode_header(assertion)
        except (ValueError, exceptions.GoogleAuthError):
            return _oauth_error("invalid_grant", "Invalid JWT: malformed assertion.")
        with self._lock:
            account = self._accounts.get(claims.get("iss", ""))
        if account is None or header.get("kid") not in (None, account.key_id):
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        if account.disabled:
            return _oauth_error("invalid_grant", "Invalid grant: account not found")
        try:
            # Signature with the account's public key, audience and iat/exp (google-auth's
            # own verifier; a second of skew for clocks read in two processes).
            jwt.decode(
                assertion,
                certs=account.public_pem,
                audience=AUDIENCE,
                clock_skew_in_seconds=1,
            )
        except (ValueError, exceptions.GoogleAuthError) as exc:
            text = str(exc)
            if "signature" in text.lower():
                return _oauth_error("invalid_grant", "Invalid JWT Signature.")
            return _oauth_error(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                f"reasonable timeframe. ({text})",
            )
        if claims.get("exp", 0) - claims.get("iat", 0) > 3600:
            return _oauth_error(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived "
                "token (60 minutes) and in a reasonable timeframe.",
            )
        scopes = frozenset(str(claims.get("scope") or "").split())
        if not scopes:
            return _oauth_error(
                "invalid_scope", "Invalid OAuth scope or ID token audience provided."
            )
        token = "ya29." + secrets.token_urlsafe(48)
        with self._lock:
            self._tokens[token] = Grant(account.email, scopes, time.time() + TOKEN_LIFETIME_SECONDS)
            self.issued.append(account.email)
        return json_reply(
            200,
            {"access_token": token, "expires_in": TOKEN_LIFETIME_SECONDS, "token_type": "Bearer"},
        )


def _oauth_error(error: str, description: str) -> Reply:
    return json_reply(400, {"error": error, "error_description": description})
