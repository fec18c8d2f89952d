"""A tiny key-value backend for counters and replay caches: in-process, or Redis when configured.

Counters (rate limits) and set-if-absent markers (replay caches) must hold across instances, so
with `redis_url` they live in Redis. When Redis stops answering, each call falls back to this
process's memory: limits keep holding per process (weaker, never off), sign-in does not fail,
and one warning per outage tells the operator (docs/security.md I73, L94).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    import redis

log = logging.getLogger("authserver.kv")
T = TypeVar("T")

REDIS_PREFIX = "authserver:"
REDIS_TIMEOUT = 0.5
REDIS_RETRY_AFTER = 5.0


class KV(Protocol):
    def incr(self, key: str, ttl: int, amount: int = 1) -> int:
        """Add `amount` to a counter that vanishes `ttl` seconds after it is created."""

    def set_if_absent(self, key: str, ttl: int) -> bool:
        """Mark `key` for `ttl` seconds; False when it was already marked (a replay)."""

    def close(self) -> None: ...


class LocalKV:
    """A lock-guarded dict with expiry times; expired entries are swept every few calls."""

    SWEEP_EVERY = 1024

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._items: dict[str, tuple[int, float]] = {}
        self._calls = 0

    def incr(self, key: str, ttl: int, amount: int = 1) -> int:
        with self._lock:
            now = self._tick()
            value, expires = self._items.get(key, (0, now))
            if expires <= now:
                value, expires = 0, now + ttl
            self._items[key] = (value + amount, expires)
            return value + amount

    def set_if_absent(self, key: str, ttl: int) -> bool:
        with self._lock:
            now = self._tick()
            current = self._items.get(key)
            if current is not None and current[1] > now:
                return False
            self._items[key] = (1, now + ttl)
            return True

    def close(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def _tick(self) -> float:
        now = self._clock()
        self._calls += 1
        if self._calls % self.SWEEP_EVERY == 0:
            self._items = {k: v for k, v in self._items.items() if v[1] > now}
        return now


class RedisKV:
    """Shared counters in Redis, falling back to `fallback` while Redis is unreachable.

    After a failure Redis is left alone for `retry_after` seconds, so an outage costs one
    timeout per few seconds instead of one per request.
    """

    def __init__(
        self,
        client: redis.Redis,
        fallback: LocalKV,
        *,
        prefix: str = REDIS_PREFIX,
        retry_after: float = REDIS_RETRY_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import redis  # 16 MiB, loaded only where Redis is configured

        self._errors = redis.RedisError
        self.client = client
        self.fallback = fallback
        self._prefix = prefix
        self._retry_after = retry_after
        self._clock = clock
        self._lock = threading.Lock()
        self._down_until: float | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisKV:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, LocalKV())

    def incr(self, key: str, ttl: int, amount: int = 1) -> int:
        def shared(client: redis.Redis) -> int:
            pipe = client.pipeline(transaction=True)
            pipe.incrby(self._prefix + key, amount)
            pipe.expire(self._prefix + key, ttl)
            value, _ = pipe.execute()
            return int(value)

        return self._call(shared, lambda local: local.incr(key, ttl, amount))

    def set_if_absent(self, key: str, ttl: int) -> bool:
        def shared(client: redis.Redis) -> bool:
            return bool(client.set(self._prefix + key, 1, nx=True, ex=ttl))

        return self._call(shared, lambda local: local.set_if_absent(key, ttl))

    def close(self) -> None:
        self.client.close()
        self.fallback.close()

    @property
    def degraded(self) -> bool:
        return self._down_until is not None

    def _call(self, shared: Callable[[redis.Redis], T], local: Callable[[LocalKV], T]) -> T:
        down_until = self._down_until
        if down_until is not None and self._clock() < down_until:
            return local(self.fallback)
        try:
            result = shared(self.client)
        except self._errors as exc:
            with self._lock:
                if self._down_until is None:
                    log.warning(
                        "Redis unreachable (%s): rate limits and replay caches are per "
                        "process until it answers again",
                        type(exc).__name__,
                    )
                self._down_until = self._clock() + self._retry_after
            return local(self.fallback)
        if down_until is not None:
            with self._lock:
                if self._down_until is not None:
                    log.warning("Redis answers again: rate limits are shared again")
                self._down_until = None
        return result


def open_kv(redis_url: str | None) -> KV:
    """Redis when a URL is configured, else this process's memory."""
    return RedisKV.from_url(redis_url) if redis_url else LocalKV()
