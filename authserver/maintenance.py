"""Housekeeping shared by `authserver purge` and the periodic in-process task."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import anyio

from authserver import audit
from authserver.db import Database, utcnow
from authserver.keystore import KeyStore
from authserver.mfa import models as mfa_models
from authserver.oauth import codes, device, par, registration, tokens
from authserver.sessions import models as sessions
from authserver.users import models as users


def purge_expired() -> dict[str, int]:
    """Delete expired codes, tokens, sessions, email links and initial access tokens;
    return counts by kind."""
    now = utcnow()
    return {
        "authorization_codes": codes.purge(now),
        "device_authorizations": device.purge(now),
        "pushed_authorization_requests": par.purge(now),
        **tokens.purge(now),
        "login_sessions": sessions.purge(now),
        "email_tokens": users.purge_email_tokens(now),
        "initial_access_tokens": registration.purge(now),
        "webauthn_challenges": mfa_models.purge_challenges(now),
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


def rotate_keys(keystore: KeyStore, period: int) -> list[str]:
    """One step of automatic key rotation, each change written to the audit log in the
    current unit of work: "rotated" (made and published), "retired" (no longer signs; the
    JWKS keeps it until `published_until`), "removed" (gone from the ring). Returns
    "<step> <kid>" lines."""
    done = []
    for step, info in keystore.rotate_due(period):
        details: dict[str, Any]
        if step == "rotated":
            details = {
                "alg": info.alg,
                "signs_from": _iso(info.activates_at),
                "period": info.rotation_slot,
            }
        elif step == "removed":
            details = {"alg": info.alg}
        else:
            published_until = (info.retired_at or 0) + keystore.retention
            details = {"alg": info.alg, "published_until": _iso(published_until)}
        audit.record(f"key.{step}", target_type="key", target_id=info.kid, **details)
        done.append(f"{step} {info.kid}")
    return done


def _iso(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def rotation_tick(period: int) -> float:
    """How often each instance checks whether a rotation step is due: a small fraction of
    the period, at least every minute, never busier than once a second."""
    return max(1.0, min(60.0, period / 10))


async def rotate_periodically(db: Database, keystore: KeyStore, period: int) -> None:
    """Every instance runs this; the key store's exclusive lock (and, in the database, a
    unique key per algorithm and period) makes sure only one of them makes each key."""
    while True:
        await anyio.sleep(rotation_tick(period))
        try:
            done = await db.run_sync(rotate_keys, keystore, period)
        except Exception:
            log.exception("automatic key rotation failed; retrying")
        else:
            if done:
                log.info("key rotation", extra={"fields": {"changes": done}})
