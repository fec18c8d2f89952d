"""Housekeeping shared by `authserver purge` and the periodic in-process task."""

from __future__ import annotations

from authserver.db import utcnow
from authserver.oauth import codes, tokens
from authserver.sessions import models as sessions
from authserver.users import models as users


def purge_expired() -> dict[str, int]:
    """Delete expired codes, tokens, sessions and email links; return counts by kind."""
    now = utcnow()
    return {
        "authorization_codes": codes.purge(now),
        **tokens.purge(now),
        "login_sessions": sessions.purge(now),
        "email_tokens": users.purge_email_tokens(now),
    }
