"""Fixed-window rate limits on the kv backend: sign-in now, token and registration next.

A limit counts an attempt *before* the work it guards, so fifty parallel guesses are fifty
counts, not fifty checks of a counter nobody has raised yet (docs/security.md I71, Keycloak
#31726). Windows are aligned to the wall clock so every instance sharing Redis agrees on them,
and keys are hashed so emails and IPs never sit in Redis in the clear.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from authserver.kv import KV


class RateLimiter:
    def __init__(self, kv: KV, clock: Callable[[], float] | None = None) -> None:
        self.kv = kv
        self._clock = clock or time.time

    def check(self, kind: str, key: str, limit: int, window: int) -> int | None:
        """Count one attempt for `key`; when that makes more than `limit` in this `window`
        (seconds), return the seconds until the window ends (the `Retry-After`), else None."""
        bucket, retry_after = self._bucket(kind, key, window)
        if self.kv.incr(bucket, window) > limit:
            return retry_after
        return None

    def forgive(self, kind: str, key: str, window: int) -> None:
        """Take back one attempt counted by `check`, e.g. a sign-in that turned out right.

        Should the window roll over in between, the next window starts one lower: one extra
        attempt at most, once per success.
        """
        bucket, _ = self._bucket(kind, key, window)
        self.kv.incr(bucket, window, -1)

    def close(self) -> None:
        self.kv.close()

    def _bucket(self, kind: str, key: str, window: int) -> tuple[str, int]:
        now = int(self._clock())
        start = now - now % window
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"rl:{kind}:{window}:{start}:{digest}", start + window - now
