"""Failed management-key attempts, counted per client address, slow the address down.

After `failures` wrong or missing keys from one address within `window_seconds`, the API
answers that address 429 with a `Retry-After` until the window has passed, without
checking the key it sends (1,000 wrong keys took 1.8 s before). The count lives in Redis
(`bc:{apiauth}:failures:ADDRESS`, expiring with its window), so every API process behind
a load balancer counts together. The address is what the server saw: behind a proxy,
let uvicorn read the client's address from the proxy (`FORWARDED_ALLOW_IPS`).
"""

from __future__ import annotations

import hashlib
import re

from settings import keys
from settings.redis_commands import RedisClient

DEFAULT_FAILURES = 10
DEFAULT_WINDOW_SECONDS = 60.0
# An address as it is written into a key: IPv4 or IPv6 text; anything else is hashed.
_ADDRESS = re.compile(r"[0-9A-Fa-f:.]{1,45}")


class AuthThrottle:
    def __init__(
        self,
        client: RedisClient,
        *,
        failures: int = DEFAULT_FAILURES,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
    ) -> None:
        self.redis = client
        self.failures = failures
        self.window_ms = int(window_seconds * 1000)

    def wait_seconds(self, address: str) -> float:
        """How long `address` must wait before a key of its is checked again (0: now)."""
        key = keys.auth_failures(_key_part(address))
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            count, ttl_ms = pipe.execute()
        if count is None or int(count) < self.failures:
            return 0.0
        return max(ttl_ms, 1) / 1000.0

    def failed(self, address: str) -> None:
        """Count a wrong or missing key from `address`; the window starts at its first."""
        key = keys.auth_failures(_key_part(address))
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(key, 0, px=self.window_ms, nx=True)  # INCR keeps the TTL it set
            pipe.incr(key)
            pipe.execute()


def _key_part(address: str) -> str:
    if _ADDRESS.fullmatch(address):
        return address
    return "h:" + hashlib.sha256(address.encode("utf-8", "surrogatepass")).hexdigest()[:32]
