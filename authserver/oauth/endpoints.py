"""/token, /revoke, /introspect and /userinfo: read the request, run Authlib in one unit of work.

Each route freezes the request into a snapshot and hands it to Authlib in the threadpool;
an OAuth error is an answer, not a failure, so its transaction commits (a replayed code's
revocation sticks). Anything else that goes wrong rolls the whole request back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from authlib.oauth2.rfc6749 import InvalidRequestError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authserver import audit, db
from authserver.dpop import (
    NONCE_HEADER,
    ProofError,
    ProofVerifier,
    bound_key,
    proof_header,
    token_type,
)
from authserver.errors import NO_STORE, AppError, oauth_error_response
from authserver.keystore import KeyStore
from authserver.oauth import clients, cors, metadata_documents, resources, token_format, tokens
from authserver.oauth.grants import CLIENT_AUTH_METHODS
from authserver.oauth.oidc import userinfo as userinfo_claims
from authserver.oauth.requests import (
    MalformedRequest,
    RequestSnapshot,
    read_form_request,
    read_resource_request,
)
from authserver.oauth.token_format import ORGANIZATION
from authserver.oauth.tokens import PresentedRefreshToken
from authserver.organizations import models as orgs
from authserver.resource_server import (
    TokenError,
    audiences,
    bearer_token,
    check_sender,
    error_response,
    insufficient_scope,
    scopes_of,
)
from authserver.security import Digester
from authserver.services import Services, services
from authserver.settings import Settings
from authserver.users import models as users

if TYPE_CHECKING:
    from authserver.oauth.server import AuthorizationServer


async def token(request: Request) -> Response:
    """RFC 6749 §3.2: the token endpoint (authorization_code, refresh_token,
    client_credentials). A missing `grant_type` is `invalid_request` (§5.2), not an
    unsupported one. A DPoP proof, when sent, is checked before any grant runs."""
    return await _form_endpoint(request, _token_response, browser_apps=True, proofs=True)


def _token_response(server: AuthorizationServer, snapshot: RequestSnapshot) -> Response:
    if snapshot.first("grant_type") is None:
        return oauth_error_response("invalid_request", "The grant_type parameter is required.")
    response: Response = server.create_token_response(snapshot)
    return response


async def revoke(request: Request) -> Response:
    """RFC 7009 §2."""
    return await _form_endpoint(
        request,
        lambda server, snapshot: server.create_endpoint_response("revocation", snapshot),
        browser_apps=True,
    )


async def introspect(request: Request) -> Response:
    """RFC 7662 §2."""
    return await _form_endpoint(
        request, lambda server, snapshot: server.create_endpoint_response("introspection", snapshot)
    )


async def _form_endpoint(
    request: Request, handle: Any, *, browser_apps: bool = False, proofs: bool = False
) -> Response:
    """`browser_apps`: the endpoint answers cross-origin calls from public clients' pages;
    `proofs`: it reads DPoP proofs (RFC 9449 §5)."""

    def run(svc: Services, snapshot: RequestSnapshot) -> Response:
        origin = cors.foreign_origin(snapshot.headers, svc.settings.issuer)
        checked = handle
        if proofs and svc.dpop is not None:
            checked = _with_proof(handle, svc.dpop)
        if origin is not None and browser_apps:
            checked = _from_browser_app(checked, origin)
        response: Response = checked(svc.oauth, snapshot)
        return response

    return await client_form(request, run)


async def client_form(
    request: Request, handle: Callable[[Services, RequestSnapshot], Response]
) -> Response:
    """A client's form POST (token, revocation, introspection, device authorization, PAR):
    the body read once, a client named by its metadata document URL fetched before the unit
    of work, then `handle` inside one; a malformed body is `invalid_request`."""
    svc = services(request)
    try:
        snapshot = await read_form_request(request, svc.settings.issuer)
    except MalformedRequest as error:
        return oauth_error_response("invalid_request", error.description)
    await svc.clients.prefetch(metadata_documents.named_client(snapshot))
    response: Response = await svc.db.run_sync(handle, svc, snapshot)
    return response


def _with_proof(handle: Any, verifier: ProofVerifier) -> Any:
    """RFC 9449 §5: a request with a `DPoP` header gets tokens bound to the proof's key
    (`RequestSnapshot.dpop_jkt`), a bad proof gets `invalid_dpop_proof` (or
    `use_dpop_nonce`, §8) before anything is redeemed; every answer carries the current
    server nonce while nonces are on."""

    def checked(server: AuthorizationServer, snapshot: RequestSnapshot) -> Response:
        try:
            snapshot = with_proof_key(verifier, snapshot)
        except ProofError as error:
            return proof_refusal(error)
        response: Response = handle(server, snapshot)
        nonce = verifier.fresh_nonce()
        if nonce is not None:
            response.headers[NONCE_HEADER] = nonce
        return response

    return checked


def with_proof_key(verifier: ProofVerifier, snapshot: RequestSnapshot) -> RequestSnapshot:
    """`snapshot` with the key of its verified DPoP proof, unchanged without one."""
    sent = proof_header(snapshot.headers)
    if sent is None:
        return snapshot
    proof = verifier.verify(sent, method=snapshot.method, uri=snapshot.uri)
    return dataclasses.replace(snapshot, dpop_jkt=proof.jkt)


def proof_refusal(error: ProofError) -> Response:
    """An RFC 9449 §5 / §8 token error, with the nonce to use next when there is one."""
    headers = {NONCE_HEADER: error.nonce} if error.nonce is not None else None
    return oauth_error_response(error.error, error.description, headers=headers)


def _from_browser_app(handle: Any, origin: str) -> Any:
    """Refuse a cross-origin call before it redeems or revokes anything unless `origin` is
    the client's own (see `cors`); a public client names itself with `client_id`."""

    def checked(server: AuthorizationServer, snapshot: RequestSnapshot) -> Response:
        client_id = snapshot.first("client_id")
        client = clients.query(client_id) if "authorization" not in snapshot.headers else None
        if not cors.allows(client, origin, public_only=True):
            return oauth_error_response(
                "invalid_request", "Cross-origin requests are not allowed from this origin."
            )
        try:
            return cors.allow(handle(server, snapshot), origin)
        except AppError as error:
            error.headers.update(cors.headers(origin))
            raise

    return checked


# -- revocation and introspection ----------------------------------------------------------


@dataclass
class FoundAccessToken:
    """An access token presented at /revoke or /introspect, found by its signature."""

    claims: dict[str, Any]
    kind: ClassVar[str] = "access_token"

    @property
    def client_id(self) -> str:
        return str(self.claims["client_id"])

    def check_client(self, client: Any) -> bool:
        return self.client_id == client.get_client_id()

    def may_introspect(self, client: Any) -> bool:
        """Its own client, or the resource server an operator linked to a resource the token
        is for (`resources.Resource.client_id`): an API learns about the tokens meant for
        it, never about those for another API."""
        if self.check_client(client):
            return True
        if not client.resource_server:
            return False
        return bool(set(audiences(self.claims)) & resources.served_by(client.id))

    def is_active(self, now: datetime) -> bool:
        return tokens.access_token_is_live(self.claims, now)

    def revoke(self, now: datetime) -> tuple[str, str]:
        """Denied until it expires; the rest of its grant lives on (RFC 7009 §2.1)."""
        tokens.revoke_access_token(self.claims["jti"], now)
        return "access_token", str(self.claims["jti"])

    def introspection(self, issuer: str) -> dict[str, Any]:
        """RFC 9449 §6.2: a DPoP-bound token says so, with the key it is bound to."""
        names = ("scope", "client_id", "sub", "exp", "iat", "iss", "aud", "jti")
        jkt = bound_key(self.claims)
        return {
            "active": True,
            **{n: self.claims.get(n, "") for n in names},
            **({"act": self.claims["act"]} if "act" in self.claims else {}),
            "token_type": token_type(jkt),
            **({"cnf": {"jkt": jkt}} if jkt is not None else {}),
        }


@dataclass
class FoundRefreshToken:
    """A refresh token presented at /revoke or /introspect, found by its digest."""

    presented: PresentedRefreshToken
    kind: ClassVar[str] = "refresh_token"

    @property
    def client_id(self) -> str:
        return self.presented.family.client_id

    def check_client(self, client: Any) -> bool:
        return self.presented.check_client(client)

    def may_introspect(self, client: Any) -> bool:
        """A refresh token never goes to a resource server: only its own client asks."""
        return self.check_client(client)

    def is_active(self, now: datetime) -> bool:
        row = self.presented.row
        return (
            row.rotated_at is None
            and row.expires_at > now
            and tokens.family_is_live(self.presented.family, now)
        )

    def revoke(self, now: datetime) -> tuple[str, str]:
        """The whole family goes, its access tokens with it (RFC 7009 §2.1 SHOULD)."""
        tokens.revoke_family(self.presented.family.id, "revoked", now)
        return "token_family", self.presented.family.id

    def introspection(self, issuer: str) -> dict[str, Any]:
        """RFC 7662 §2.2's `token_type` is an RFC 6749 §7.1 access token type (`Bearer`),
        which a refresh token has none of, so it is left out."""
        family, row = self.presented.family, self.presented.row
        return {
            "active": True,
            "scope": family.scope,
            "client_id": family.client_id,
            "sub": family.user_id,
            "exp": int(row.expires_at.timestamp()),
            "iat": int(row.created_at.timestamp()),
            "iss": issuer,
            "aud": family.client_id,
        }


FoundToken = FoundAccessToken | FoundRefreshToken


class _TokenLookup:
    """Find a token of either kind. RFC 7009 §2.1 / RFC 7662 §2.1: the hint only says where
    to look first; a wrong or unknown hint still finds the token."""

    SUPPORTED_TOKEN_TYPES = ("access_token", "refresh_token")

    def __init__(self, keystore: KeyStore, settings: Settings, digester: Digester) -> None:
        super().__init__()
        self.keystore = keystore
        self.settings = settings
        self.digester = digester

    def check_params(self, request: Any, client: Any) -> None:
        if "token" not in request.form:
            raise InvalidRequestError("The token parameter is required.")

    def query_token(self, token_string: str, token_type_hint: str | None) -> FoundToken | None:
        order = [self._refresh_token, self._access_token]
        if token_type_hint != "refresh_token":
            order.reverse()
        return next((found for find in order if (found := find(token_string))), None)

    def _refresh_token(self, raw: str) -> FoundToken | None:
        presented = tokens.find_refresh_token(self.digester, raw)
        return FoundRefreshToken(presented) if presented is not None else None

    def _access_token(self, raw: str) -> FoundToken | None:
        claims = token_format.verify_access_token(self.keystore, self.settings, raw, db.utcnow())
        return FoundAccessToken(claims) if claims is not None else None


class Revocation(_TokenLookup, RevocationEndpoint):
    """RFC 7009. Public clients may revoke their tokens with their `client_id` (§2.1)."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def authenticate_token(self, request: Any, client: Any) -> FoundToken | None:
        """§2.1: "the authorization server ... verifies whether the token was issued to the
        client making the revocation request. If this validation fails, the request is
        refused" — node-oidc-provider's `invalid_request`; the token stays active."""
        self.check_params(request, client)
        found = self.query_token(request.form["token"], request.form.get("token_type_hint"))
        if found is not None and not found.check_client(client):
            raise InvalidRequestError("The token was not issued to this client.")
        return found

    def revoke_token(self, token: FoundToken, request: Any) -> None:
        target_type, target_id = token.revoke(db.utcnow())
        audit.record(
            "token.revoked",
            actor_type="client",
            actor_id=token.client_id,
            ip=request.snapshot.client_ip,
            target_type=target_type,
            target_id=target_id,
            token_type=token.kind,
        )


class Introspection(_TokenLookup, IntrospectionEndpoint):
    """RFC 7662. Callers authenticate (§2.1, against token scanning) and see their own
    tokens, plus, when registered as a resource server, the access tokens for the
    resources they are linked to;
    everything else is `{"active": false}` and nothing more (§2.2)."""

    CLIENT_AUTH_METHODS = list(clients.CONFIDENTIAL_AUTH_METHODS)

    def check_permission(self, token: FoundToken, client: Any, request: Any) -> bool:
        return token.may_introspect(client)

    def create_introspection_payload(self, token: FoundToken | None) -> dict[str, Any]:
        if token is None or not token.is_active(db.utcnow()):
            return {"active": False}
        return token.introspection(self.settings.issuer)


# -- userinfo ------------------------------------------------------------------------------


async def userinfo(request: Request) -> Response:
    """OIDC Core §5.3 with RFC 6750 errors. The token must come in the Authorization
    header: OAuth 2.1 §5.2 drops the query parameter, and we refuse the body form too.

    A cross-origin page may read the claims when it runs on one of the token's client's
    redirect origins (see `cors`); an error says nothing, so any origin may read it.
    """
    svc = services(request)
    origin = cors.foreign_origin(request.headers, svc.settings.issuer)
    response: Response = await _userinfo_response(request, svc, origin)
    if origin is not None and response.status_code != 200:
        cors.allow(response, origin)
    return response


async def _userinfo_response(request: Request, services: Services, origin: str | None) -> Response:
    try:
        snapshot = await read_resource_request(request, services.settings.issuer)
    except MalformedRequest as error:
        return bearer_error(services.settings, 400, "invalid_request", error.description)
    if snapshot.first("access_token") is not None:
        return bearer_error(
            services.settings,
            400,
            "invalid_request",
            "Send the access token in the Authorization header.",
        )
    response: Response = await services.db.run_sync(_userinfo, services, snapshot, origin)
    return response


def _userinfo(services: Services, snapshot: RequestSnapshot, origin: str | None) -> Response:
    settings = services.settings
    try:
        claims = _caller(services, snapshot)
    except TokenError as error:
        return error_response(settings.api_audience, error)
    if origin is not None and not cors.allows(
        clients.query(claims.get("client_id")), origin, public_only=False
    ):
        return bearer_error(
            settings,
            400,
            "invalid_request",
            "Cross-origin requests are not allowed from this origin.",
        )
    user = users.get(claims["sub"])
    if user is None:
        return bearer_error(settings, 401, "invalid_token", "The user is gone.")
    scope = claims.get("scope", "")
    response = JSONResponse(
        userinfo_claims(user, scope, _organization(claims, user.id, scope)), headers=NO_STORE
    )
    return cors.allow(response, origin) if origin is not None else response


def _caller(services: Services, snapshot: RequestSnapshot) -> dict[str, Any]:
    """The claims of the request's bearer token: one of our access tokens for the API
    resource (which UserInfo belongs to), still live by reference, holding `openid`."""
    presented = bearer_token(snapshot.headers)
    now = db.utcnow()
    settings = services.settings
    claims = token_format.verify_access_token(
        services.keystore, settings, presented.token, now, audience=settings.api_audience
    )
    if claims is None or not tokens.access_token_is_live(claims, now):
        raise TokenError(description="The access token is invalid or expired.")
    check_sender(
        claims,
        presented,
        snapshot.headers,
        method=snapshot.method,
        uri=snapshot.uri,
        proofs=services.dpop,
    )
    if "openid" not in scopes_of(claims):
        raise insufficient_scope(["openid"])
    return claims


def _organization(claims: dict[str, Any], user_id: str, scope: str) -> dict[str, str] | None:
    """The token's organization with the user's role as it is now: a live token's family
    still has the membership, and the role may have changed since the token was issued."""
    org_id = claims.get("org_id")
    if ORGANIZATION not in scope.split() or not isinstance(org_id, str):
        return None
    role = orgs.role_of(org_id, user_id)
    return {"org_id": org_id, "org_role": role} if role is not None else None


def bearer_error(
    settings: Settings, status: int, error: str | None = None, description: str = ""
) -> Response:
    """RFC 6750 §3 for UserInfo, part of the API resource (`resource_server.error_response`)."""
    return error_response(settings.api_audience, TokenError(error, description, status=status))
