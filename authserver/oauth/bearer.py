"""Our own access tokens as a resource server sees them: the verifier behind `/api/v1`.

One rule for every resource of this issuer: a valid signature and claims (`tokens`), the
expected audience, and a token still live by reference (not revoked, its family, session
and user all still good). Anything less is `invalid_token`, never a reason why.
"""

from __future__ import annotations

from typing import Any

from authserver.db import utcnow
from authserver.keystore import KeyStore
from authserver.oauth import clients, token_format, tokens
from authserver.resource_server import InvalidToken, Principal, TokenVerifier
from authserver.settings import Settings
from authserver.users import models as users

ADMIN = "admin"


def make_verifier(keystore: KeyStore, settings: Settings) -> TokenVerifier:
    def verify(token: str, *, audience: str) -> Principal:
        now = utcnow()
        claims = token_format.verify_access_token(keystore, settings, token, now, audience=audience)
        if claims is None:
            raise InvalidToken()
        if not tokens.access_token_is_live(claims, now):
            raise InvalidToken()
        if ADMIN in str(claims.get("scope", "")).split() and not _still_admin(claims):
            scopes = [s for s in str(claims["scope"]).split() if s != ADMIN]
            claims = {**claims, "scope": " ".join(scopes)}
        client_id = str(claims["client_id"])
        return Principal(
            client_id=client_id,
            user_id=claims["sub"] if claims["sub"] != client_id else None,
            scopes=frozenset(str(claims.get("scope", "")).split()),
            claims=claims,
            session_id=tokens.session_of(claims["jti"]),
        )

    return verify


def _still_admin(claims: dict[str, Any]) -> bool:
    """`admin` counts only while its holder may hold it (docs/security.md J78): a person who is
    still an active administrator, or a client an operator still registers with `admin`
    (automation through client_credentials). Checked on every request, not at issue time."""
    if claims["sub"] != claims["client_id"]:
        user = users.get(claims["sub"])
        return user is not None and user.is_active and user.is_admin
    client = clients.query(claims["client_id"])
    return client is not None and ADMIN in client.scope.split()
