"""Authlib's grants, made as strict as docs/security.md promises, and thin over codes and tokens.

Authlib redeems a code as read → issue → delete and ships no refresh rotation (§6 of
docs/security.md); here a code is consumed by one conditional UPDATE in the token transaction,
a replay revokes what the code bought, and refresh tokens rotate with reuse detection and
a short retry window. Grants are bound to one app's settings by `bind`.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import replace
from typing import Any, ClassVar

from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    grants,
)
from authlib.oauth2.rfc6749.hooks import hooked
from authlib.oauth2.rfc7636 import CodeChallenge, create_s256_code_challenge
from authlib.oidc.core.errors import RequestNotSupportedError, RequestURINotSupportedError

from authserver import audit, db, dpop
from authserver.db import current_session
from authserver.oauth import codes, resources, token_format, tokens
from authserver.oauth.clients import AUTH_METHODS, CONFIDENTIAL_AUTH_METHODS
from authserver.oauth.requests import proof_key
from authserver.oauth.token_format import ORGANIZATION, EndUser
from authserver.oauth.tokens import PresentedRefreshToken
from authserver.organizations import models as orgs
from authserver.security import Digester, new_token
from authserver.sessions.models import LoginSession
from authserver.settings import Settings
from authserver.users import models as users

CLIENT_AUTH_METHODS = list(AUTH_METHODS)
RESPONSE_MODES = ("query", "form_post")
PROMPTS = {"none", "login", "consent", "select_account"}
#: Scopes that speak for a signed-in person, meaningless in a client_credentials token.
USER_SCOPES = {"openid", "profile", "email", "offline_access", ORGANIZATION}
#: Acts on every account through /api/v1: granted for a user only while they are an admin.
ADMIN_SCOPE = "admin"
NONCE_MAX = 512
#: RFC 8707 resource indicator: the one parameter that may be repeated.
RESOURCE = "resource"
#: `max_age` as OIDC Core §3.1.2.1 allows it: ASCII digits only (`str.isdigit` also takes
#: `²` or `①`, which `int` refuses), and short enough to convert cheaply (docs/security.md A15).
MAX_AGE = re.compile(r"[0-9]{1,9}")


def bind(
    grant_cls: type[Any],
    settings: Settings,
    digester: Digester,
    generator: token_format.AccessTokenGenerator,
) -> type[Any]:
    """A subclass of `grant_cls` bound to one app's settings (Authlib instantiates grants
    per request with only the request and the server)."""
    bound = {"settings": settings, "digester": digester, "generator": generator}
    return type(grant_cls.__name__, (grant_cls,), bound)


class ForResource:
    """Issues access tokens for the resource the token request settled on (RFC 8707): the
    grant's validation stores it as `request.audience` (None: no resource was named)."""

    request: Any
    GRANT_TYPE: str | None
    generator: ClassVar[token_format.AccessTokenGenerator]

    def generate_token(
        self,
        user: EndUser | None = None,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        return self.generator.generate(
            grant_type or str(self.GRANT_TYPE),
            self.request.client,
            user,
            scope,
            expires_in,
            include_refresh_token,
            audience=getattr(self.request, "audience", None),
            jkt=proof_key(self.request),
        )


def sent_resources(request: Any) -> list[str]:
    """The `resource` parameters of a request (RFC 8707 §2 lets it repeat)."""
    return list(request.payload.datalist.get(RESOURCE, []))


class PKCE(CodeChallenge):
    """RFC 7636 with our policy (docs/security.md A8, B28): S256 required from every client.

    Authlib defaults to `plain` and only enforces PKCE for public clients. Here a request
    without `code_challenge`, with `plain`, or with no method (which RFC 7636 §4.3 would
    read as `plain`) is `invalid_request`; every code then carries a challenge, so every
    token request needs the verifier, and a verifier for a code without one is refused.
    """

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {
        "S256": lambda verifier, challenge: hmac.compare_digest(
            create_s256_code_challenge(verifier), challenge
        )
    }

    def __init__(self) -> None:
        super().__init__(required=True)

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send a code_challenge (S256).")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256.")
        super().validate_code_challenge(grant, redirect_uri)


def check_admin_scope(scope: str, end_user: EndUser) -> None:
    """`admin` is granted for a user only while they are an admin, at /authorize and again
    at every refresh, so a demoted admin's grant stops carrying it."""
    if ADMIN_SCOPE in scope.split() and not end_user.user.is_admin:
        raise InvalidScopeError("The admin scope is only for administrators.")


def in_organization(end_user: EndUser, organization_id: str | None, scope: str) -> EndUser | None:
    """The end user acting in the organization their grant chose, with their role as it is
    now, so that a role change shows in the next token; None once they have left it (or it
    was deleted, which empties the column), which the grants answer with `invalid_grant`."""
    if ORGANIZATION not in scope.split():
        return end_user
    role = orgs.role_of(organization_id, end_user.user.id) if organization_id else None
    if role is None:
        return None
    return replace(end_user, organization_id=organization_id, org_role=role)


def check_authorization_parameters(grant: Any, redirect_uri: str) -> None:
    """Checks that run once the redirect URI is trusted, so their errors go back to the
    client (Authlib sets `redirect_uri` on errors raised from this hook)."""
    datalist, data = grant.request.payload.datalist, grant.request.payload.data
    if any(len(values) > 1 for name, values in datalist.items() if name != RESOURCE):
        raise InvalidRequestError("Parameters must not be repeated (RFC 6749 section 3.1).")
    if "request" in data:
        raise RequestNotSupportedError()
    if "request_uri" in data:
        raise RequestURINotSupportedError()
    mode = data.get("response_mode", "query")
    if mode not in RESPONSE_MODES:
        raise InvalidRequestError("response_mode must be query or form_post.")
    if mode == "form_post" and not redirect_uri.startswith(("https://", "http://")):
        raise InvalidRequestError("The form_post response mode needs an http(s) redirect URI.")
    prompts = set(data.get("prompt", "").split())
    if not prompts <= PROMPTS or ("none" in prompts and len(prompts) > 1):
        raise InvalidRequestError("Unsupported prompt value (OIDC Core section 3.1.2.1).")
    if "max_age" in data and not MAX_AGE.fullmatch(data["max_age"]):
        raise InvalidRequestError("max_age must be a whole number of seconds.")
    if len(data.get("nonce", "")) > NONCE_MAX:
        raise InvalidRequestError(f"The nonce must be at most {NONCE_MAX} characters.")
    if not data.get("scope", "").split():
        raise InvalidScopeError("The scope parameter is required.")
    if grant.settings.dpop and "dpop_jkt" in data and not dpop.is_thumbprint(data["dpop_jkt"]):
        raise InvalidRequestError("dpop_jkt must be a SHA-256 JWK thumbprint (RFC 9449).")
    resources.check_authorization_request(
        grant.settings, sent_resources(grant.request), data["scope"]
    )


class AuthorizationCodeGrant(ForResource, grants.AuthorizationCodeGrant):
    """RFC 6749 §4.1 with exact redirect URIs, PKCE always, and single-use codes."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    settings: ClassVar[Settings]
    digester: ClassVar[Digester]

    def __init__(self, request: Any, server: Any) -> None:
        super().__init__(request, server)
        self.now = db.utcnow()
        self.register_hook(
            "before_validate_authorization_request_payload", check_authorization_parameters
        )

    @staticmethod
    def validate_no_multiple_request_parameter(request: Any) -> None:
        """A repeated `client_id` or `redirect_uri` leaves no trusted place to send the
        error, so it is an error page; other repeats are checked after the redirect URI."""
        datalist = request.payload.datalist
        if len(datalist.get("client_id", [])) > 1 or len(datalist.get("redirect_uri", [])) > 1:
            raise InvalidRequestError("The client_id or redirect_uri parameter is repeated.")

    @staticmethod
    def validate_authorization_redirect_uri(request: Any, client: Any) -> str:
        """OAuth 2.1 §4.1.2.1: an unregistered or missing redirect URI is never redirected
        to. (Authlib's own message quotes the URI, which may hold characters an error
        description cannot.)"""
        sent = request.payload.redirect_uri
        if sent is not None:
            if not client.check_redirect_uri(sent):
                raise InvalidRequestError("The redirect_uri is not registered for this client.")
            return str(sent)
        default = client.get_default_redirect_uri()
        if not default:
            raise InvalidRequestError("The redirect_uri parameter is required for this client.")
        return str(default)

    def generate_authorization_code(self) -> str:
        return new_token()

    def issue_code(self, end_user: EndUser) -> str:
        """Authlib's `create_authorization_response` without the HTTP part: the code is
        made and stored here, and `authorize.py` writes the response in the mode asked."""
        self.request.user = end_user
        code = self.generate_authorization_code()
        self.save_authorization_code(code, self.request)
        return code

    def save_authorization_code(self, code: str, request: Any) -> None:
        data, end_user = request.payload.data, request.user
        codes.create(
            self.digester,
            code,
            client_id=request.client.id,
            user_id=end_user.user.id,
            session_id=end_user.session_id,
            redirect_uri=request.payload.redirect_uri or "",
            scope=request.scope,
            nonce=data.get("nonce"),
            organization_id=end_user.organization_id,
            code_challenge=data["code_challenge"],
            code_challenge_method=data["code_challenge_method"],
            auth_time=end_user.auth_time,
            amr=end_user.amr,
            acr=end_user.acr,
            resources=resources.parse(sent_resources(request)),
            now=self.now,
            ttl=self.settings.code_ttl,
            dpop_jkt=data.get("dpop_jkt") if self.settings.dpop else None,
        )

    def query_authorization_code(self, code: str, client: Any) -> codes.AuthorizationCode | None:
        """The code, if it was issued to this client and is still unused and fresh.

        A used code presented by its client is a replay (OAuth 2.1 §4.1.3): the tokens it
        bought are revoked. A code of another client is just `invalid_grant` and changes
        nothing (docs/security.md B27).
        """
        found = codes.find(self.digester, code)
        if found is None or found.client_id != client.id:
            return None
        if found.used_at is not None:
            raise self._replayed(found)
        return found if found.expires_at > self.now else None

    def delete_authorization_code(self, authorization_code: Any) -> None:
        """Nothing to do: `create_token_response` consumed the code, and a consumed code is
        kept so that a replay can be recognised."""

    def authenticate_user(self, authorization_code: codes.AuthorizationCode) -> EndUser | None:
        """The code's user, unless deleted or disabled since (docs/security.md B33), no longer
        in the organization they chose, or signed out of the browser session the code was
        issued in (the user ended it between /authorize and /token)."""
        user = users.get(authorization_code.user_id)
        if user is None or not user.is_active:
            return None
        if authorization_code.session_id is not None:
            login = current_session().get(LoginSession, authorization_code.session_id)
            if login is None or not login.is_active(self.now):
                return None
        end_user = EndUser(
            user,
            authorization_code.session_id,
            authorization_code.auth_time,
            authorization_code.amr,
            authorization_code.acr,
        )
        return in_organization(
            end_user, authorization_code.organization_id, authorization_code.scope
        )

    def validate_token_request(self) -> None:
        """Authlib's checks, then the resource (RFC 8707 §2.2): one of the code's, or all of
        them, decided before the code is consumed."""
        super().validate_token_request()
        code = self.request.authorization_code
        if code.dpop_jkt is not None and code.dpop_jkt != proof_key(self.request):
            raise InvalidGrantError(
                "The authorization code is bound to a DPoP key: send a proof signed with it."
            )
        self.request.audience = resources.for_token(
            self.settings,
            code.resources or [],
            sent_resources(self.request),
            code.scope,
            scope_sent=False,
        )

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        """Consume the code first, in this transaction: if anything later fails the
        consumption rolls back with it (docs/security.md L89); if another request consumed it
        in between, this one is the replay."""
        code = self.request.authorization_code
        if not codes.redeem(code.id, self.now):
            if code.expires_at <= self.now:
                raise InvalidGrantError("The authorization code has expired.")
            raise self._replayed(code)
        return super().create_token_response()

    def save_token(self, token: dict[str, Any]) -> None:
        code = self.request.authorization_code
        tokens.store_grant(
            self.digester,
            self.settings,
            self.request,
            token,
            code_id=code.id,
            scope=code.scope,
            resources=code.resources,
            now=self.now,
        )
        super().save_token(token)

    def _replayed(self, code: codes.AuthorizationCode) -> InvalidGrantError:
        family = tokens.revoke_issued_from_code(code.id, self.now)
        audit.record(
            "code.reuse_detected",
            outcome="failure",
            actor_type="client",
            actor_id=code.client_id,
            ip=self.request.snapshot.client_ip,
            target_type="user",
            target_id=code.user_id,
            family_id=family.id if family else None,
        )
        return InvalidGrantError("The authorization code has already been used.")


class RefreshTokenGrant(ForResource, grants.RefreshTokenGrant):
    """RFC 6749 §6 with rotation and reuse detection (RFC 9700 §4.14.2), which Authlib
    leaves to the application.

    Each use retires the presented token and returns its successor, derived from it with
    a keyed HMAC. Presenting a retired token again is reuse and revokes the whole family,
    except within `refresh_grace_seconds` of its rotation while the successor is still
    unused: that is a client retrying a request whose answer it lost, and it gets the
    same successor again (and a fresh access token). A client with `refresh_rotation`
    off keeps its token, whose idle expiry slides instead.
    """

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = False
    settings: ClassVar[Settings]
    digester: ClassVar[Digester]

    def __init__(self, request: Any, server: Any) -> None:
        super().__init__(request, server)
        self.now = db.utcnow()

    def authenticate_refresh_token(self, refresh_token: str) -> PresentedRefreshToken | None:
        return tokens.find_refresh_token(self.digester, refresh_token)

    def authenticate_user(self, refresh_token: PresentedRefreshToken) -> EndUser | None:
        """The family's user in the family's organization, with their current role."""
        family = refresh_token.family
        end_user = tokens.end_user_of(family)
        if end_user is None:
            return None
        return in_organization(end_user, family.organization_id, family.scope)

    def validate_token_request(self) -> None:
        """Authlib checks client, grant type, token ownership and scope (a broader scope
        is `invalid_scope`); then the token must still be live, and fresh or retried."""
        super().validate_token_request()
        self._check(self.request.refresh_token)
        bound = self.request.refresh_token.family.dpop_jkt
        if bound is not None and bound != proof_key(self.request):
            raise InvalidGrantError(
                "The refresh token is bound to a DPoP key: send a proof signed with it."
            )
        family, scope = self.request.refresh_token.family, self.request.payload.scope
        self.request.audience = resources.for_token(
            self.settings,
            family.resources or [],
            sent_resources(self.request),
            scope or family.scope,
            scope_sent=scope is not None,
        )

    @hooked
    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        presented: PresentedRefreshToken = self.request.refresh_token
        end_user = self.authenticate_user(presented)
        if end_user is None:
            raise InvalidGrantError("The refresh token is no longer valid.")
        successor = None
        if self.request.client.refresh_rotation:
            successor = tokens.successor_of(self.digester, presented.raw)
            if presented.row.rotated_at is None:
                if tokens.mark_rotated(presented.row.id, self.now):
                    tokens.add_refresh_token(
                        self.digester,
                        successor,
                        presented.family,
                        self.now,
                        self.settings.refresh_token_idle_ttl,
                    )
                else:
                    self._check(tokens.reload(presented))
        else:
            tokens.slide(presented, self.now, self.settings.refresh_token_idle_ttl)
        scope = self.request.payload.scope or presented.get_scope()
        check_admin_scope(scope, end_user)
        token = self.generate_token(user=end_user, scope=scope, include_refresh_token=False)
        if successor is not None:
            token["refresh_token"] = successor
        self.request.user = end_user
        self.request.family_id = presented.family.id
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER

    def revoke_old_credential(self, refresh_token: PresentedRefreshToken) -> None:
        """Unused: rotation happens in `create_token_response`, before anything is issued,
        so that of two concurrent refreshes only one can retire the token."""

    def _check(self, presented: PresentedRefreshToken) -> None:
        family, row = presented.family, presented.row
        if not tokens.family_is_live(family, self.now) or row.expires_at <= self.now:
            raise InvalidGrantError("The refresh token is invalid, expired or revoked.")
        if row.rotated_at is None or self._retried(presented):
            return
        tokens.revoke_family(family.id, "refresh_reuse", self.now)
        audit.record(
            "refresh.reuse_detected",
            outcome="failure",
            actor_type="client",
            actor_id=family.client_id,
            ip=self.request.snapshot.client_ip,
            target_type="token_family",
            target_id=family.id,
            user_id=family.user_id,
        )
        raise InvalidGrantError("The refresh token has already been used.")

    def _retried(self, presented: PresentedRefreshToken) -> bool:
        grace = self.settings.refresh_grace_seconds
        rotated_at = presented.row.rotated_at
        if grace <= 0 or rotated_at is None or (self.now - rotated_at).total_seconds() > grace:
            return False
        successor = tokens.find_refresh_token(
            self.digester, tokens.successor_of(self.digester, presented.raw)
        )
        return successor is not None and successor.row.rotated_at is None


class ClientCredentialsGrant(ForResource, grants.ClientCredentialsGrant):
    """RFC 6749 §4.4: confidential clients only (public ones cannot authenticate, so
    they get `invalid_client`), no refresh token, and no scope that speaks for
    a person."""

    TOKEN_ENDPOINT_AUTH_METHODS = list(CONFIDENTIAL_AUTH_METHODS)
    settings: ClassVar[Settings]

    def validate_token_request(self) -> None:
        super().validate_token_request()
        self.request.audience = resources.for_client(
            self.settings, sent_resources(self.request), self.request.payload.scope or ""
        )

    def validate_requested_scope(self) -> None:
        scope = self.request.payload.scope
        if set((scope or "").split()) & USER_SCOPES:
            raise InvalidScopeError("User scopes cannot be granted to a client alone.")
        if self.request.client.get_allowed_scope(scope) is None:
            raise InvalidScopeError()
