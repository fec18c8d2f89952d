"""The federation feature's per-app state (`Services.federation`)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from authserver.db import Database
from authserver.federation import providers
from authserver.federation.providers import SecretBox
from authserver.federation.upstream import Upstream
from authserver.fetch import Fetcher

log = logging.getLogger("authserver.federation")
#: How long the sign-in page may show a provider list that an administrator just changed.
CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class Choice:
    id: str
    name: str
    domains: tuple[str, ...]


class Federation:
    """The federation feature's per-app state: the relying-party client, the box sealing
    attempt cookies, and the cached list of enabled providers."""

    def __init__(self, database: Database, fetcher: Fetcher, root_secret: bytes, issuer: str):
        self.upstream = Upstream(fetcher, SecretBox(root_secret), issuer)
        self.flow_box = SecretBox(root_secret, b"authserver/federation/flow")
        self._database = database
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Choice]] = (0.0, [])

    @property
    def box(self) -> SecretBox:
        return self.upstream.box

    def enabled(self) -> list[Choice]:
        with self._lock:
            at, cached = self._cached
            if time.monotonic() - at < CACHE_SECONDS:
                return cached

        def read() -> list[Choice]:
            return [Choice(p.id, p.name, tuple(p.domains or ())) for p in providers.enabled()]

        try:
            fresh = self._database.call(read)
        except SQLAlchemyError as error:
            # The sign-in page still renders while the database is away (its POST then
            # answers 503): the last list known, tried again after the same interval.
            log.warning("identity providers unavailable: %s", type(error).__name__)
            with self._lock:
                self._cached = (time.monotonic(), self._cached[1])
                return self._cached[1]
        with self._lock:
            self._cached = (time.monotonic(), fresh)
        return fresh

    async def prefetch(self) -> None:
        """Refresh the list in the threadpool, so the sign-in page, rendered on the event
        loop, reads it from memory."""
        with self._lock:
            fresh = time.monotonic() - self._cached[0] < CACHE_SECONDS
        if not fresh:
            await run_in_threadpool(self.enabled)

    def forget(self) -> None:
        with self._lock:
            self._cached = (0.0, [])
