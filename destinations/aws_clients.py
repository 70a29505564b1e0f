"""boto3 clients for the AWS destinations (`s3`, `firehose`): cached, pinned, headed.

- cached: boto3 clients are costly to build and thread-safe to share, so a few are kept
  per process, keyed by a hash of everything that shapes them (service, config, timeouts,
  network policy, extra headers): changed credentials get a new client;
- pinned: every connection resolves, checks and connects to the checked address, as the
  HTTP transport's do (`url_guard.pinned_connection_class`), so an `endpoint_url` cannot
  rebind to a private address between the check and the connection;
- headed: the destination's custom `headers` and, for Test Connection,
  `X-Test-Connection: true` are added to every request before it is signed;
- one attempt: boto3's own retries are off (`total_max_attempts=1`); only the deliver
  task retries.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import boto3
import botocore.config

from destinations.url_guard import NetworkPolicy, pinned_connection_class

CLIENT_CACHE_SIZE = 64


class ClientCache:
    """boto3 clients of one service, at most `size`, least recently used dropped first."""

    def __init__(self, service: str, size: int = CLIENT_CACHE_SIZE) -> None:
        self._service = service
        self._clients: OrderedDict[str, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(
        self,
        config: Mapping[str, Any],
        timeouts: tuple[float, float],
        policy: NetworkPolicy,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """A client for `config` (`region`, `endpoint_url`, `access_key_id`,
        `secret_access_key`, `session_token`) that adds `headers` to every request."""
        fingerprint = hashlib.sha256(
            json.dumps(
                [self._service, config, timeouts, id(policy), headers or {}],
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()
        with self._lock:
            client = self._clients.get(fingerprint)
            if client is not None:
                self._clients.move_to_end(fingerprint)
                return client
        # The service is chosen at run time; boto3's stubs type each service's client apart.
        session: Any = boto3.session.Session()
        client = session.client(
            self._service,
            region_name=config["region"],
            endpoint_url=config.get("endpoint_url"),
            aws_access_key_id=config["access_key_id"],
            aws_secret_access_key=config["secret_access_key"],
            aws_session_token=config.get("session_token"),
            config=botocore.config.Config(
                connect_timeout=timeouts[0],
                read_timeout=timeouts[1],
                # Only the deliver task retries: boto3's own retries would hide attempts.
                # botocore reads `max_attempts` as retries after the first attempt (so 1
                # meant two attempts), `total_max_attempts` as all of them.
                retries={"total_max_attempts": 1, "mode": "standard"},
            ),
        )
        pin_connections(client, policy)
        if headers:
            _add_headers(client, dict(headers))
        with self._lock:
            self._clients[fingerprint] = client
            while len(self._clients) > self._size:
                self._clients.popitem(last=False)
        return client


def _add_headers(client: Any, headers: dict[str, str]) -> None:
    """Put `headers` on every request of `client`, before SigV4 signs it (a header set
    after signing would be refused by a server that checks signed headers)."""

    def add(request: Any, **_: Any) -> None:
        for name, value in headers.items():
            if name not in request.headers:
                request.headers[name] = value

    client.meta.events.register_first("before-sign", add)


def pin_connections(client: Any, policy: NetworkPolicy) -> None:
    """Make the client's connections resolve, check and connect to the checked address.

    botocore resolves `endpoint_url` itself when it connects, so a check before the call
    alone loses to a DNS answer that changes in between (rebinding). Its HTTP session keeps
    the urllib3 pool classes per scheme; each gets a connection class pinned like the
    HTTP transport's. Raises RuntimeError if botocore no longer has that layout, rather
    than connecting unpinned.
    """
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    pools = getattr(session, "_pool_classes_by_scheme", None)
    manager = getattr(session, "_manager", None)
    if session is None or not isinstance(pools, dict) or manager is None:
        raise RuntimeError("cannot pin AWS connections: botocore's HTTP session changed")
    pinned = {
        scheme: type(
            f"Pinned{pool.__name__}",
            (pool,),
            {"ConnectionCls": pinned_connection_class(pool.ConnectionCls, policy)},
        )
        for scheme, pool in pools.items()
    }
    session._pool_classes_by_scheme = pinned
    manager.pool_classes_by_scheme = pinned
