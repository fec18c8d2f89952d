"""A short-lived, bounded, per-process cache for rows every token request reads.

What it holds may be stale for at most `ttl` seconds after another worker or instance
changes it; a change made in this process forgets the entry at once. Only values that are
safe to see that late belong here, and their module says so.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """`get(key, load)` returns the cached value while it is younger than `ttl`, else
    calls `load` (in the caller's unit of work) and keeps what it returns, misses too. At
    most `max_entries` are kept; the oldest goes first."""

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0

    def get(self, key: K, load: Callable[[], V]) -> V:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                return entry[1]
            generation = self._generation
        value = load()
        with self._lock:
            # A `forget` while we loaded may have been about this very row: keep nothing.
            if generation == self._generation:
                self._entries[key] = (now + self.ttl, value)
                self._entries.move_to_end(key)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return value

    def forget(self, key: K) -> None:
        with self._lock:
            self._generation += 1
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
