"""The format of this server's tokens: RFC 9068 access tokens and what they say about the
end user, signed by the key store (the one signer of every JWT this server issues) and
read back by `decode_own_jwt`, the one verifier. Where issued tokens are stored, rotated and
revoked is `tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet

from authserver import db, dpop, resource_server
from authserver.cache import TtlCache
from authserver.keystore import ALGORITHMS, KeyStore
from authserver.oauth import resources
from authserver.oauth.resources import Audience
from authserver.resource_server import API_SCOPES, TokenError
from authserver.security import new_token
from authserver.settings import Settings
from authserver.users.models import User

#: The scope under which the user picks one organization for the grant (SPEC §5).
ORGANIZATION = "organization"


@dataclass(frozen=True)
class EndUser:
    """The resource owner as a grant sees them: the account, plus when and how they signed
    in (OIDC Core §2 `auth_time`, `amr`, `acr`), in which browser session (`sid`), and
    the organization the grant chose with the role read at this issue."""

    user: User
    session_id: str | None
    auth_time: datetime
    amr: str = "pwd"
    acr: str | None = None
    organization_id: str | None = None
    org_role: str | None = None

    def get_user_id(self) -> str:
        return self.user.id

    def org_claims(self, scope: str) -> dict[str, str]:
        """A refresh may narrow the scope: a token without `organization` names none."""
        if self.organization_id and self.org_role and ORGANIZATION in scope.split():
            return {"org_id": self.organization_id, "org_role": self.org_role}
        return {}


class AccessTokenGenerator(JWTBearerTokenGenerator):
    """RFC 9068 access tokens, RS256 unless `settings.access_token_alg` says ES256.

    Audience rule: a token for a resource the client named (RFC 8707, see `resources`) is
    for that resource and carries only the scopes it accepts. Without one, a token issued
    for a user is for this server's API resource (`settings.api_audience`, which /userinfo
    and /api/v1 accept); a client_credentials token speaks for the client alone, so its
    audience is the client itself and our user-facing resources refuse it. Refresh tokens
    are 256-bit random strings.
    """

    def __init__(self, keystore: KeyStore, settings: Settings) -> None:
        super().__init__(
            issuer=settings.issuer,
            alg=settings.access_token_alg,
            refresh_token_generator=lambda **_: new_token(),
            expires_generator=lambda client, grant_type: settings.access_token_ttl,
        )
        self.keystore = keystore
        self.settings = settings

    def get_audiences(self, client: Any, user: EndUser | None, scope: str) -> str:
        """A client acting alone speaks for the API only when an operator gave it API scopes
        (e.g. `admin` for automation); otherwise its token is for nobody but itself."""
        if user is not None or set(scope.split()) & set(API_SCOPES):
            return self.settings.api_audience
        return client.get_client_id()

    def generate(
        self,
        grant_type: str,
        client: Any,
        user: EndUser | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
        *,
        audience: Audience | None = None,
        jkt: str | None = None,
    ) -> dict[str, Any]:
        """Authlib's token response, with the access token for `audience` when the request
        named a resource; the response's `scope` then says what the access token carries
        plus the OpenID Connect scopes (`resources.response_scope`). With `jkt` (a DPoP
        proof's key) the token is bound to that key and its type is `DPoP` (RFC 9449 §5)."""
        scope = self.get_allowed_scope(client, scope)
        if audience is None:
            audience = Audience(self.get_audiences(client, user, scope), scope)
            response_scope = scope
        else:
            response_scope = resources.response_scope(audience, scope)
        token: dict[str, Any] = {
            "token_type": dpop.token_type(jkt),
            "access_token": self.access_token_for(client, user, audience, jkt),
            "expires_in": self.settings.access_token_ttl,
        }
        if include_refresh_token:
            token["refresh_token"] = new_token()
        if response_scope:
            token["scope"] = response_scope
        return token

    def access_token_generator(
        self, client: Any, grant_type: str, user: EndUser | None, scope: str
    ) -> str:
        return self.access_token_for(
            client, user, Audience(self.get_audiences(client, user, scope), scope)
        )

    def access_token_for(
        self, client: Any, user: EndUser | None, audience: Audience, jkt: str | None = None
    ) -> str:
        """RFC 9068 §2.2: iss, exp, aud, sub, client_id, iat, jti (+ scope, auth_time, acr,
        amr (§2.2.1), `cnf.jkt` for a DPoP-bound token (RFC 9449 §6.1), and
        `org_id`/`org_role` as extra claims, §2.2.3);
        the header says `typ: at+jwt` (§2.1) so an access token is never taken for an ID
        token, or the other way round."""
        now = int(db.utcnow().timestamp())
        sub = user.get_user_id() if user is not None else client.get_client_id()
        claims = self._claims(client, sub, audience, now, now + self.settings.access_token_ttl, jkt)
        if user is not None:
            claims.update(
                auth_time=int(user.auth_time.timestamp()),
                amr=user.amr.split(),
                **({"acr": user.acr} if user.acr else {}),
                **user.org_claims(audience.scope),
            )
        return self.keystore.sign(claims, alg=self.alg, typ="at+jwt")

    def exchanged(
        self,
        client: Any,
        subject: dict[str, Any],
        audience: Audience,
        act: dict[str, Any],
        jkt: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """RFC 8693 §4.1: a token about the subject token's person, issued to `client`, which
        `act` names as acting for them; it ends when the subject token ends, or sooner.
        How and when the person signed in (and their organization, while the scope keeps
        it) carry over; the signed token and its claims."""
        now = int(db.utcnow().timestamp())
        expires = min(int(subject["exp"]), now + self.settings.access_token_ttl)
        claims = self._claims(client, str(subject["sub"]), audience, now, expires, jkt)
        carried = ["auth_time", "amr", "acr"]
        if ORGANIZATION in audience.scope.split():
            carried += ["org_id", "org_role"]
        claims.update({name: subject[name] for name in carried if name in subject})
        claims["act"] = act
        return self.keystore.sign(claims, alg=self.alg, typ="at+jwt"), claims

    def _claims(
        self, client: Any, sub: str, audience: Audience, now: int, expires: int, jkt: str | None
    ) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": audience.aud,
            "exp": expires,
            "iat": now,
            "jti": new_token(16),
            "client_id": client.get_client_id(),
        }
        if audience.scope:
            claims["scope"] = audience.scope
        if jkt is not None:
            claims["cnf"] = {"jkt": jkt}
        return claims


#: Signatures already checked, by token and type: a signature under a key never changes, so a
#: token introspected or presented again skips the RSA or ECDSA check while the key set that
#: verified it is the one published now (a key that leaves the JWKS takes its tokens with
#: it). Claims (expiry, audience) and state (revocation) are still checked on every call.
_VERIFIED: TtlCache[tuple[str, str], tuple[KeySet, dict[str, Any]]] = TtlCache(
    ttl=300, max_entries=1024
)


def decode_own_jwt(keystore: KeyStore, raw: str | None, *, typ: str) -> dict[str, Any] | None:
    """The claims of a JWT this server signed, or None; claims are the caller's to check.

    The shared core (`resource_server.decode`, docs/security.md F51) with our published keys
    and the algorithms the key store signs with.
    """
    if raw is None:
        return None
    keys = keystore.verification_keys()

    def find_key(kid: str) -> Key | None:
        try:
            return keys.get_by_kid(kid)
        except (JoseError, ValueError):
            return None

    def verify() -> tuple[KeySet, dict[str, Any]]:
        return keys, resource_server.decode(raw, find_key, types=(typ,), algorithms=ALGORITHMS)

    try:
        verified_by, claims = _VERIFIED.get((raw, typ), verify)
        if verified_by is not keys:
            _VERIFIED.forget((raw, typ))
            verified_by, claims = _VERIFIED.get((raw, typ), verify)
    except TokenError:
        return None
    return dict(claims)


def verify_access_token(
    keystore: KeyStore,
    settings: Settings,
    raw: str | None,
    now: datetime,
    *,
    audience: str | None = None,
) -> dict[str, Any] | None:
    """Signature and claims of one of our access tokens (RFC 9068 §4), for `audience` when
    given, not yet its state: the same checks the `ResourceServer` helper makes."""
    claims = decode_own_jwt(keystore, raw, typ="at+jwt")
    if claims is None:
        return None
    try:
        return resource_server.check_claims(
            claims, issuer=settings.issuer, audience=audience, now=now.timestamp(), leeway=0
        )
    except TokenError:
        return None
