"""OpenID Connect on the code and refresh grants: ID tokens, UserInfo claims, id_token_hint.

Authlib's `OpenIDCode` extension validates the nonce and adds `id_token` to the token
response; we keep its hooks and replace how the token is made, so that the same function
serves the refresh grant (OIDC Core §12.2) and carries `sid`, `amr` and the original
`auth_time`, and so that the key store stays the one signer.
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749 import InvalidRequestError
from authlib.oidc.core import OpenIDCode as _OpenIDCode
from authlib.oidc.core import OpenIDToken, UserInfo
from authlib.oidc.core.grants.util import create_half_hash

from authserver import db
from authserver.keystore import KeyStore
from authserver.oauth.token_format import EndUser, decode_own_jwt
from authserver.resource_server import audiences
from authserver.settings import Settings
from authserver.users.models import User


def userinfo(user: User, scope: str, organization: dict[str, str] | None = None) -> UserInfo:
    """OIDC Core §5.4: `sub` always; `profile` → name; `email` → email, email_verified;
    `organization` → the grant's `org_id` and `org_role` (`EndUser.org_claims`), which
    Authlib's scope filter does not know. Claims without a value are left out rather than
    sent empty."""
    claims: dict[str, Any] = {
        "sub": user.id,
        "email": user.email,
        "email_verified": user.email_verified,
    }
    if user.name:
        claims["name"] = user.name
    return UserInfo({**UserInfo(claims).filter(scope), **(organization or {})})


def id_token(
    keystore: KeyStore,
    settings: Settings,
    *,
    client: Any,
    end_user: EndUser,
    scope: str,
    access_token: str | None,
    nonce: str | None,
) -> str:
    """An ID token per OIDC Core §2 and §3.1.3.6, signed with the client's registered
    `id_token_signed_response_alg` (RS256 by default).

    `auth_time` is when the user signed in, also in tokens from a refresh (§12.2); `sid`
    names the browser session for logout; `at_hash` binds the access token issued with it;
    `org_id` and `org_role` name the organization the user chose (role as of this issue).
    The scope's profile and email claims are included too, as Authlib does, because
    relying parties built on its client read them from the ID token.
    """
    alg = client.id_token_signed_response_alg or "RS256"
    now = int(db.utcnow().timestamp())
    claims: dict[str, Any] = {
        **userinfo(end_user.user, scope, end_user.org_claims(scope)),
        "iss": settings.issuer,
        "sub": end_user.user.id,
        "aud": client.get_client_id(),
        "exp": now + settings.id_token_ttl,
        "iat": now,
        "auth_time": int(end_user.auth_time.timestamp()),
        "amr": end_user.amr.split(),
    }
    if end_user.session_id:
        claims["sid"] = end_user.session_id
    if end_user.acr:
        claims["acr"] = end_user.acr
    if nonce:
        claims["nonce"] = nonce
    if access_token:
        at_hash = create_half_hash(access_token, alg)
        if at_hash is not None:
            claims["at_hash"] = at_hash.decode()
    return keystore.sign(claims, alg=alg, typ="JWT")


class IDTokens(OpenIDToken):
    """Adds `id_token` to a token response whose scope includes `openid`."""

    def __init__(self, keystore: KeyStore, settings: Settings) -> None:
        self.keystore = keystore
        self.settings = settings

    def __call__(self, grant: Any) -> None:
        grant.register_hook("after_create_token_response", self.process_token)

    def encode_id_token(self, token: dict[str, Any], request: Any) -> str:
        code = request.authorization_code
        return id_token(
            self.keystore,
            self.settings,
            client=request.client,
            end_user=request.user,
            scope=token["scope"],
            access_token=token.get("access_token"),
            nonce=code.get_nonce() if code is not None else None,
        )

    def generate_user_info(self, user: EndUser, scope: str) -> UserInfo:
        return userinfo(user.user, scope, user.org_claims(scope))


class OpenIDCode(IDTokens, _OpenIDCode):
    """The code grant's OIDC extension: nonce checks at /authorize, ID token at /token.

    Authlib's `prompt` handling is not registered: prompt, max_age and consent depend on
    our session and consent records, and `authorize.py` decides them in one place.
    """

    def __init__(self, keystore: KeyStore, settings: Settings) -> None:
        IDTokens.__init__(self, keystore, settings)
        _OpenIDCode.__init__(self, require_nonce=False)

    def __call__(self, grant: Any) -> None:
        grant.register_hook("after_create_token_response", self.process_token)
        grant.register_hook(
            "after_validate_authorization_request_payload",
            self.validate_openid_authorization_request,
        )

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        """The nonce is the relying party's replay check on the ID token (OIDC Core
        §3.1.2.1); the code is single use already, so we do not keep a nonce register."""
        return False


def verify_id_token_hint(
    keystore: KeyStore, issuer: str, hint: str | None, client_id: str = ""
) -> dict[str, Any] | None:
    """The claims of an ID token this server issued (to `client_id`, when given), or None.

    One strict JWT check for every hint (`decode_own_jwt`: our keys, our algorithms, no
    foreign header members). An expired hint is fine: it only names the user, and
    RP-Initiated Logout §2 expects RPs to send ID tokens whose `exp` has passed.
    """
    claims = decode_own_jwt(keystore, hint, typ="JWT")
    if claims is None or claims.get("iss") != issuer or not isinstance(claims.get("sub"), str):
        return None
    audience = audiences(claims)
    if not audience or (client_id and client_id not in audience):
        return None
    return claims


def id_token_hint_subject(keystore: KeyStore, settings: Settings, hint: str, client_id: str) -> str:
    """The `sub` of an `id_token_hint` we issued to this client (OIDC Core §3.1.2.1);
    anything else is `invalid_request`."""
    claims = verify_id_token_hint(keystore, settings.issuer, hint, client_id)
    if claims is None:
        raise InvalidRequestError("The id_token_hint is not an ID token this server issued.")
    return str(claims["sub"])
