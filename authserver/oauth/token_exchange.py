"""Token exchange (RFC 8693) at /token: a service trades a person's access token it received
for one to call another API on their behalf, with a narrower audience and scope.

Delegation only, never impersonation (§1.1): the new token names the person as `sub` and
the calling client as `act.sub`, nesting the subject token's own `act` when it was exchanged
already, so every API down the chain sees who is acting. What a client may do:

- authenticate (a secret or private_key_jwt; a public client is `invalid_client`), and hold
  a policy (`Client.token_exchange_audiences`, set by an operator; none is
  `unauthorized_client`);
- present as `subject_token` a live access token of this server (type `access_token`, or
  `jwt`, which names the same thing: our access tokens are JWTs, and anything but one of
  them, an ID token included, is refused) that speaks for a person and that was issued to
  it or is for a resource it serves (as introspection lets it read), else `invalid_grant`;
- ask, with `audience` or `resource` (one URI), for a registered resource its policy names,
  else `invalid_target`, and at most the subject token's scope (`invalid_scope`), of which
  the new token carries what that resource accepts;
- get an access token (`requested_token_type` may only be `access_token`), without a
  refresh token, living no longer than the subject token. `actor_token` is refused: the
  actor is the authenticated client.

The exchanged token shares the subject token's family and names it (`subject_jti`), so
revoking either (or ending the person's session, or disabling them) ends it too. The cases
are docs/security.md Q123 to Q127.
"""

from __future__ import annotations

from typing import Any, ClassVar

from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.grants import BaseGrant, TokenEndpointMixin
from authlib.oauth2.rfc6749.hooks import hooked

from authserver import audit, db, dpop
from authserver.errors import Invalid
from authserver.oauth import resources, token_format, tokens
from authserver.oauth.clients import CONFIDENTIAL_AUTH_METHODS
from authserver.oauth.endpoints import FoundAccessToken
from authserver.oauth.grants import RESOURCE
from authserver.oauth.requests import proof_key
from authserver.oauth.resources import InvalidTargetError
from authserver.settings import Settings

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
SUBJECT_TOKEN_TYPES = (ACCESS_TOKEN_TYPE, JWT_TYPE)
AUDIENCE = "audience"
#: Actors in one token's `act` chain: bounds the chain every check of it walks.
MAX_ACTORS = 5


def grant_types(settings: Settings) -> list[str]:
    """For discovery's `grant_types_supported`."""
    return [GRANT_TYPE] if settings.token_exchange else []


def check_policy(settings: Settings, audiences: list[str] | None) -> None:
    """What an operator may put in a client's policy: registered resources (this server's
    API included), as the admin API and the CLI check before storing it."""
    if not audiences:
        return
    try:
        resources.targets(settings, resources.parse(audiences))
    except InvalidTargetError as error:
        raise Invalid(f"token_exchange_audiences: {error.description}") from None


def actors(act: Any) -> int:
    count = 0
    while isinstance(act, dict):
        count += 1
        act = act.get("act")
    return count


class TokenExchangeGrant(BaseGrant, TokenEndpointMixin):
    GRANT_TYPE = GRANT_TYPE
    TOKEN_ENDPOINT_AUTH_METHODS = list(CONFIDENTIAL_AUTH_METHODS)
    settings: ClassVar[Settings]
    generator: ClassVar[token_format.AccessTokenGenerator]

    def __init__(self, request: Any, server: Any) -> None:
        super().__init__(request, server)
        self.now = db.utcnow()

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        self.request.client = client
        payload = self.request.payload
        data, datalist = payload.data, payload.datalist
        repeatable = (RESOURCE, AUDIENCE)
        if any(len(values) > 1 for name, values in datalist.items() if name not in repeatable):
            raise InvalidRequestError("Parameters must not be repeated (RFC 6749 section 3.1).")
        policy = client.token_exchange_audiences or []
        if not policy:
            raise UnauthorizedClientError("This client may not exchange tokens.")
        if "actor_token" in data or "actor_token_type" in data:
            raise InvalidRequestError("actor_token is not supported: the client is the actor.")
        if not data.get("subject_token"):
            raise InvalidRequestError("The subject_token parameter is required.")
        if data.get("subject_token_type") not in SUBJECT_TOKEN_TYPES:
            raise InvalidRequestError("subject_token_type must name an access token.")
        if data.get("requested_token_type", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
            raise InvalidRequestError("Only access tokens are issued by exchange.")
        uris = resources.parse([*datalist.get(AUDIENCE, []), *datalist.get(RESOURCE, [])])
        if not uris:
            raise InvalidRequestError("Name the resource wanted: audience or resource.")
        if len(uris) > 1:
            raise InvalidTargetError("Ask for one resource per access token.")
        if uris[0] not in policy:
            raise InvalidTargetError("This client may not exchange tokens for that resource.")
        chosen = resources.targets(self.settings, uris)
        subject = self._subject(client, data["subject_token"])
        self.request.audience = self._audience(chosen, subject, payload.scope)

    def _subject(self, client: Any, raw: str) -> dict[str, Any]:
        """A live access token of ours for a person, that this client may read."""
        claims = token_format.verify_access_token(
            self.generator.keystore, self.settings, raw, self.now
        )
        if claims is None or not tokens.access_token_is_live(claims, self.now):
            raise InvalidGrantError("The subject token is invalid, expired or revoked.")
        row = tokens.access_token_row(claims["jti"])
        if row is None or row.user_id is None:
            raise InvalidGrantError("The subject token must speak for a person.")
        if not FoundAccessToken(claims).may_introspect(client):
            raise InvalidGrantError("The subject token was not issued to or for this client.")
        if actors(claims.get("act")) >= MAX_ACTORS:
            raise InvalidGrantError("The subject token's delegation chain is too long.")
        self.request.subject_row = row
        self.request.subject_claims = claims
        return claims

    @staticmethod
    def _audience(
        chosen: list[resources.Target], subject: dict[str, Any], requested: str | None
    ) -> resources.Audience:
        """Never wider than the subject token: the scope asked for (all of it within the
        subject's), or the subject's, narrowed to what the resource accepts."""
        held = str(subject.get("scope", "")).split()
        if requested is None:
            scope = " ".join(held)
        else:
            wanted = list(dict.fromkeys(requested.split()))
            if not wanted or not set(wanted) <= set(held):
                raise InvalidScopeError("The scope must be within the subject token's scope.")
            scope = " ".join(wanted)
            resources.check_scope(chosen, scope)
        audience = resources.audience_of(chosen, scope)
        if not audience.scope:
            raise InvalidTargetError("No scope of the subject token is for that resource.")
        return audience

    @hooked
    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        client, audience = self.request.client, self.request.audience
        subject, row = self.request.subject_claims, self.request.subject_row
        act = {"sub": client.id, **({"act": subject["act"]} if "act" in subject else {})}
        jkt = proof_key(self.request)
        raw, claims = self.generator.exchanged(client, subject, audience, act, jkt)
        tokens.record_access_token(claims, row.family_id, row.user_id, subject_jti=row.jti)
        audit.record(
            "token.exchanged",
            actor_type="client",
            actor_id=client.id,
            ip=self.request.snapshot.client_ip,
            target_type="user",
            target_id=row.user_id,
            subject_client_id=row.client_id,
            family_id=row.family_id,
            audience=claims["aud"],
            scope=audience.scope,
        )
        token = {
            "access_token": raw,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": dpop.token_type(jkt),
            "expires_in": claims["exp"] - claims["iat"],
            "scope": audience.scope,
        }
        return 200, token, self.TOKEN_RESPONSE_HEADER
