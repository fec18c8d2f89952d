"""Housekeeping shared by `authserver purge` and the periodic in-process task."""

from __future__ import annotations

import logging

import anyio

from authserver.db import Database, utcnow
from authserver.oauth import codes, device, par, tokens
from authserver.sessions import models as sessions
from authserver.users import models as users


def purge_expired() -> dict[str, int]:
    """Delete expired codes, tokens, sessions and email links; return counts by kind."""
    now = utcnow()
    return {
        "authorization_codes": codes.purge(now),
        "device_authorizations": device.purge(now),
        "pushed_authorization_requests": par.purge(now),
        **tokens.purge(now),
        "login_sessions": sessions.purge(now),
        "email_tokens": users.purge_email_tokens(now),
    }


log = logging.getLogger("authserver.maintenance")


async def purge_periodically(db: Database, interval: int) -> None:
    """Run `purge_expired` every `interval` seconds until cancelled (the app's lifespan).

    Every worker runs it; the deletes are idempotent, so overlap between workers is harmless.
    A failed round is logged and retried next time rather than killing the server.
    """
    while True:
        await anyio.sleep(interval)
        try:
            counts = await db.run_sync(purge_expired)
        except Exception:
            log.exception("periodic purge failed")
        else:
            log.info("purged expired rows", extra={"fields": counts})
