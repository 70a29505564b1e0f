"""The shared HTTP transport: one pooled session, timeouts, TLS verification, pinned addresses.

The transport knows nothing of vendors or Celery. It sends one request and returns a
frozen `TransportResult`; it never raises for network trouble and never retries (the
deliver task is the only layer that retries).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3.connection
import urllib3.connectionpool
from requests.adapters import HTTPAdapter

from destinations.outcomes import parse_retry_after
from destinations.url_guard import (
    BlockedUrl,
    NetworkPolicy,
    check_url_form,
    is_public_address,
    pinned_connection_class,
)

RESPONSE_EXCERPT_BYTES = 2048


@dataclass(frozen=True)
class HttpRequest:
    """`response_limit`: how much of the response body to keep (a vendor that answers
    per-item results in a 207 body asks for more than the default excerpt)."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes = b""
    response_limit: int = RESPONSE_EXCERPT_BYTES


@dataclass(frozen=True)
class TransportResult:
    """What came back. `status_code` is None when no response arrived; `error` says why.

    `refused` marks a request that was never sent because it cannot be (a blocked URL, a
    malformed header): unlike a network failure, trying again will not help.

    `private_peer` marks an answer from a private, loopback or link-local address (reached
    only with `BROADCAST_ALLOW_PRIVATE_NETWORKS`): Test Connection never quotes its body
    (`destinations.base.check_from_transport`).
    """

    status_code: int | None
    duration_ms: float
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None
    retry_after: float | None = None
    refused: bool = False
    private_peer: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, policy: NetworkPolicy, pool_maxsize: int) -> None:
        self._policy = policy
        super().__init__(pool_connections=32, pool_maxsize=pool_maxsize, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        http_pool = type(
            "GuardedHTTPConnectionPool",
            (urllib3.connectionpool.HTTPConnectionPool,),
            {
                "ConnectionCls": pinned_connection_class(
                    urllib3.connection.HTTPConnection, self._policy
                )
            },
        )
        https_pool = type(
            "GuardedHTTPSConnectionPool",
            (urllib3.connectionpool.HTTPSConnectionPool,),
            {
                "ConnectionCls": pinned_connection_class(
                    urllib3.connection.HTTPSConnection, self._policy
                )
            },
        )
        self.poolmanager.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}


class HttpTransport:
    """Sends `HttpRequest`s. Thread-safe; one per process is enough."""

    def __init__(
        self,
        policy: NetworkPolicy,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        pool_maxsize: int = 32,
    ) -> None:
        self.policy = policy
        self.timeouts = (connect_timeout, read_timeout)
        self._session = requests.Session()
        # Proxies and .netrc from the environment would bypass the address pinning.
        self._session.trust_env = False
        adapter = _GuardedAdapter(policy, pool_maxsize)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def send(self, request: HttpRequest) -> TransportResult:
        """Send once. Network failures come back as a result with `error` set, never raised.

        Error texts name the kind of failure only, never the URL (which may carry a token).
        """
        started = time.perf_counter()
        try:
            check_url_form(request.url, self.policy)
            response = self._session.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                data=request.body,
                timeout=self.timeouts,
                allow_redirects=False,
                verify=True,
                stream=True,
            )
        except BlockedUrl as exc:
            return self._failure(started, f"blocked: {exc}", refused=True)
        except requests.Timeout:
            return self._failure(started, "timeout")
        except requests.ConnectionError as exc:
            kind = _connection_error_kind(exc)
            return self._failure(started, kind, refused=kind.startswith("blocked"))
        except (
            requests.exceptions.InvalidHeader,
            requests.exceptions.InvalidURL,
            UnicodeError,  # a header http.client cannot encode (a name past ASCII, ...)
        ) as exc:
            return self._failure(started, f"invalid request: {type(exc).__name__}", refused=True)
        except requests.RequestException as exc:
            return self._failure(started, f"request error: {type(exc).__name__}")
        private_peer = _private_peer(response)
        try:
            body = response.raw.read(request.response_limit, decode_content=True) or b""
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
            body = b""
        finally:
            response.close()
        headers = {key.lower(): value for key, value in response.headers.items()}
        return TransportResult(
            status_code=response.status_code,
            duration_ms=_elapsed_ms(started),
            headers=headers,
            body=body,
            retry_after=parse_retry_after(headers.get("retry-after")),
            private_peer=private_peer,
        )

    @staticmethod
    def _failure(started: float, error: str, *, refused: bool = False) -> TransportResult:
        return TransportResult(
            status_code=None, duration_ms=_elapsed_ms(started), error=error, refused=refused
        )

    def close(self) -> None:
        self._session.close()


TEST_CONNECTION_HEADER = "X-Test-Connection"


class HeaderTransport:
    """A transport that adds headers to every request it sends, then sends it through
    `inner` (an `HttpTransport`, or another `HeaderTransport`).

    `defaults` go under the request's own headers (a header the destination sets, e.g. its
    credentials, wins over a user's `headers` entry of the same name); `overrides` go over
    them (the `X-Test-Connection: true` of a Test Connection). Names compare
    case-insensitively. Everything else (`policy`, `timeouts`, `close`) is `inner`'s.
    """

    def __init__(
        self,
        inner: HttpTransport | HeaderTransport,
        *,
        defaults: Mapping[str, str] | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        self.inner = inner
        self.defaults = dict(defaults or {})
        self.overrides = dict(overrides or {})

    def headers_for(self, headers: Mapping[str, str]) -> dict[str, str]:
        """`headers` as they go out: this layer's, then every inner layer's additions.

        The boto3 destinations (which do not send through `send`) put these on their
        requests themselves."""
        merged = _merged(_merged(self.defaults, headers), self.overrides)
        if isinstance(self.inner, HeaderTransport):
            return self.inner.headers_for(merged)
        return merged

    def send(self, request: HttpRequest) -> TransportResult:
        """`HttpTransport.send` with the added headers."""
        return self.base.send(
            dataclasses.replace(request, headers=self.headers_for(request.headers))
        )

    @property
    def base(self) -> HttpTransport:
        """The `HttpTransport` at the bottom of the layers."""
        inner = self.inner
        return inner.base if isinstance(inner, HeaderTransport) else inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def added_headers(transport: HttpTransport | HeaderTransport) -> dict[str, str]:
    """What `transport` adds to a request that has no headers of its own (none for a plain
    `HttpTransport`)."""
    return transport.headers_for({}) if isinstance(transport, HeaderTransport) else {}


def _merged(under: Mapping[str, str], over: Mapping[str, str]) -> dict[str, str]:
    """`under` and `over` in one dict; a name in both (any case) keeps `over`'s value."""
    replaced = {name.lower() for name in over}
    return {
        **{name: value for name, value in under.items() if name.lower() not in replaced},
        **over,
    }


def join_url(base: str, path: str) -> str:
    """`base` (with or without a trailing slash) followed by `path` (starting with `/`)."""
    return base.rstrip("/") + path


def _private_peer(response: requests.Response) -> bool:
    """Whether the answer came from an address that is not public (the pinned connection
    records where it connected; urllib3 keeps the connection while the body is unread)."""
    connection = getattr(response.raw, "connection", None)
    address = getattr(connection, "pinned_address", None)
    return address is not None and not is_public_address(address)


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _connection_error_kind(exc: requests.ConnectionError) -> str:
    cause = exc.args[0] if exc.args else exc
    reason = getattr(cause, "reason", cause)
    if isinstance(reason, BlockedUrl):
        return f"blocked: {reason}"
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return "connection error: name did not resolve"
    if isinstance(reason, urllib3.exceptions.SSLError) or "SSL" in type(reason).__name__:
        return "connection error: TLS verification failed"
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return "connection error: connection refused or unreachable"
    return "connection error"
