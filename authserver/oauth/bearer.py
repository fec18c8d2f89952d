"""Our own access tokens as a resource server sees them: the verifier behind `/api/v1`.

One rule for every resource of this issuer: a valid signature and claims (`tokens`), the
expected audience, and a token still live by reference (not revoked, its family, session
and user all still good). Anything less is `invalid_token`, never a reason why.
"""

from __future__ import annotations

from typing import Any

from authserver.db import utcnow
from authserver.keystore import KeyStore
from authserver.oauth import tokens
from authserver.rest import InvalidToken, TokenVerifier
from authserver.settings import Settings


def make_verifier(keystore: KeyStore, settings: Settings) -> TokenVerifier:
    def verify(token: str, *, audience: str) -> dict[str, Any]:
        now = utcnow()
        claims = tokens.verify_access_token(keystore, settings, token, now)
        if claims is None or not _for_audience(claims, audience):
            raise InvalidToken()
        if not tokens.access_token_is_live(claims, now):
            raise InvalidToken()
        return claims

    return verify


def _for_audience(claims: dict[str, Any], audience: str) -> bool:
    aud = claims.get("aud")
    return aud == audience or (isinstance(aud, list) and audience in aud)
