"""The one place that turns a store URL into a Redis client: a server, or a Redis Cluster.

`redis://` and `rediss://` (and `unix://`) give a plain client. `redis+cluster://` (or
`rediss+cluster://` for TLS) gives a cluster client; the URL lists one or more nodes to
start from, `redis+cluster://[user:password@]host:port[,host:port...]`, and the client
discovers the rest. Every key Broadcast uses is hash-tagged (settings/keys.py), so each
multi-key operation stays in one slot.
"""

from __future__ import annotations

from urllib.parse import unquote

import redis
from redis.cluster import ClusterNode, RedisCluster

from settings.config import ConfigurationError
from settings.redis_commands import RedisClient, typed_client

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def connect(url: str) -> RedisClient:
    """A client for `url`. Raises `ConfigurationError` for a malformed cluster URL (the
    message never repeats the password)."""
    scheme, _, rest = url.partition("://")
    if scheme not in CLUSTER_SCHEMES:
        return typed_client(redis.Redis.from_url(url))
    auth, _, location = rest.rpartition("@")
    hosts = location.split("/", 1)[0].split("?", 1)[0]
    nodes = []
    for host in hosts.split(","):
        name, _, port = host.strip().rpartition(":")
        if not name or not port.isdigit():
            raise ConfigurationError(
                f"{scheme}:// URL must list host:port[,host:port...], not {host.strip()!r}"
            )
        nodes.append(ClusterNode(name, int(port)))
    username, _, password = auth.partition(":")
    return typed_client(
        RedisCluster(
            startup_nodes=nodes,
            username=unquote(username) or None,
            password=unquote(password) or None,
            ssl=scheme == "rediss+cluster",
        )
    )
