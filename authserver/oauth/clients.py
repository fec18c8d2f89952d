"""OAuth clients: registration data, hashed secrets, redirect URI matching, authentication.

`Client` implements Authlib's `ClientMixin`, so Authlib's grants ask the client itself which
redirect URIs, scopes, response and grant types it may use.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from authlib.oauth2.rfc6749 import ClientMixin, InvalidClientError, InvalidRequestError
from sqlalchemy import JSON, Boolean, String, event, false, inspect, select, tuple_
from sqlalchemy.orm import Mapped, Session, mapped_column, object_session

from authserver.cache import TtlCache
from authserver.db import Base, Position, current_session, utcnow
from authserver.errors import Conflict, Invalid, TooManyRequests
from authserver.keystore import ALGORITHMS
from authserver.oauth import assertions
from authserver.oauth.assertions import AssertionFailed, AssertionVerifier
from authserver.ratelimit import RateLimiter
from authserver.security import Digester, new_token

#: The device grant (RFC 8628) is named by its URN; see `device.GRANT_TYPE`.
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials", DEVICE_CODE)
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
SECRET_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
#: The methods that prove who the client is (everything but `none`).
CONFIDENTIAL_AUTH_METHODS = (*SECRET_AUTH_METHODS, "private_key_jwt")


#: OIDC Back-Channel Logout §2.2 client metadata, kept in `Client.info` (see `backchannel`).
BACKCHANNEL_URI = "backchannel_logout_uri"
BACKCHANNEL_SESSION_REQUIRED = "backchannel_logout_session_required"

#: Long enough for a client ID metadata document URL (see `metadata_documents`).
CLIENT_ID_MAX = 255


class Client(Base, ClientMixin):
    __tablename__ = "clients"

    #: A random id, or for a client ID metadata document the document's URL.
    id: Mapped[str] = mapped_column(String(CLIENT_ID_MAX), primary_key=True)
    secret_digest: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    post_logout_redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    grant_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    response_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    scope: Mapped[str] = mapped_column(String(1000), default="")
    token_endpoint_auth_method: Mapped[str] = mapped_column(String(40))
    id_token_signed_response_alg: Mapped[str] = mapped_column(String(10), default="RS256")
    jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    jwks_uri: Mapped[str | None] = mapped_column(String(2000))
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    skip_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    #: An API that may introspect access tokens issued to any client (RFC 7662 §2.1: the
    #: server decides who may ask); operators grant it, never the client itself.
    resource_server: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    refresh_rotation: Mapped[bool] = mapped_column(Boolean, default=True)
    #: RFC 9126 §6: every authorization request of this client must be pushed to /par.
    require_pushed_authorization_requests: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    #: RFC 9701: a resource server registered for signed introspection answers, signed
    #: with this algorithm; None: plain JSON only.
    introspection_signed_response_alg: Mapped[str | None] = mapped_column(String(10))
    #: RFC 8693 policy: the resources this client may exchange a person's access token for
    #: (`token_exchange`); None or empty: it may not exchange. Operators set it.
    token_exchange_audiences: Mapped[list[str] | None] = mapped_column(JSON)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    dynamically_registered: Mapped[bool] = mapped_column(Boolean, default=False)
    registration_token_digest: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def is_public(self) -> bool:
        return self.token_endpoint_auth_method == "none"

    @property
    def unverified(self) -> bool:
        """Nobody running this server vouched for the client: it registered itself, or it
        is known only by its metadata document. Such a client always asks for consent, and
        the consent page says so (ASVS 10.4.7)."""
        return self.dynamically_registered or self.metadata_document

    @property
    def metadata_document(self) -> bool:
        """Known by the URL of its client ID metadata document (`metadata_documents`)."""
        return bool((self.info or {}).get("metadata_document"))

    def get_client_id(self) -> str:
        return self.id

    def get_default_redirect_uri(self) -> str | None:
        """OAuth 2.1 §2.3.2: `redirect_uri` may be omitted only when exactly one is
        registered; with more, guessing would be a choice the client did not make."""
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return any(
            redirect_uri_matches(registered, redirect_uri, any_loopback_port=self.is_public)
            for registered in self.redirect_uris
        )

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The requested scope when every value is allowed for this client, else None
        (`invalid_scope`): a request is never narrowed or broadened silently (ASVS 10.4.11)."""
        requested = list(dict.fromkeys((scope or "").split()))
        if not set(requested) <= set(self.scope.split()):
            return None
        return " ".join(requested)

    def check_client_secret(self, client_secret: str) -> bool:
        raise NotImplementedError("secrets are checked by ClientAuthentication")

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type in self.response_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


def backchannel_logout(client: Client) -> dict[str, Any]:
    """The client's back-channel logout registration as metadata; empty when it has none."""
    info = client.info or {}
    if not info.get(BACKCHANNEL_URI):
        return {}
    return {
        BACKCHANNEL_URI: info[BACKCHANNEL_URI],
        BACKCHANNEL_SESSION_REQUIRED: bool(info.get(BACKCHANNEL_SESSION_REQUIRED)),
    }


def get(client_id: str) -> Client | None:
    return current_session().get(Client, client_id)


def plausible_client_id(client_id: str | None) -> bool:
    """Whether `client_id` could name a client at all: 1 to `CLIENT_ID_MAX` printable
    characters (a random id or a metadata document URL). NUL and
    other control characters (from an HTTP Basic header or a form field) never reach the
    database, where PostgreSQL would refuse them with an error (docs/security.md B30)."""
    if not client_id or len(client_id) > CLIENT_ID_MAX:
        return False
    return client_id.isprintable()


#: Every token, introspection and revocation request reads its client, so `query` keeps
#: registrations this many seconds per process. A change made through the ORM in this
#: process (disable, delete, new secret, fewer scopes) counts at once; one made by another
#: worker or instance counts within this bound.
CLIENT_CACHE_SECONDS = 2.0
_registrations: TtlCache[str, Client | None] = TtlCache(CLIENT_CACHE_SECONDS, max_entries=1024)


def query(client_id: str | None) -> Client | None:
    """The client Authlib asks for: a disabled client does not exist for the protocol.

    A read-only copy bound to no session (see `CLIENT_CACHE_SECONDS`); change a client
    through `get`."""
    if client_id is None or not plausible_client_id(client_id):
        return None
    client = _registrations.get(client_id, lambda: _unbound_copy(get(client_id)))
    return client if client is not None and client.is_active else None


def _unbound_copy(client: Client | None) -> Client | None:
    """A copy no unit of work can expire or change under another thread's feet."""
    if client is None:
        return None
    columns = inspect(Client).column_attrs
    return Client(**{c.key: copy.deepcopy(getattr(client, c.key)) for c in columns})


@event.listens_for(Client, "after_insert")
@event.listens_for(Client, "after_update")
@event.listens_for(Client, "after_delete")
def _forget_changed(_mapper: Any, _connection: Any, client: Client) -> None:
    """Forget at flush, and again at commit: a reader in another thread may have cached
    the row as it was committed in between."""
    _registrations.forget(client.id)
    session = object_session(client)
    if session is not None:
        session.info.setdefault("changed_clients", set()).add(client.id)


@event.listens_for(Session, "after_commit")
def _forget_committed(session: Session) -> None:
    for client_id in session.info.pop("changed_clients", ()):
        _registrations.forget(client_id)


_LOOPBACK = re.compile(r"http://(127\.0\.0\.1|\[::1\])(?::([0-9]{1,5}))?(/.*)?", re.DOTALL)


def redirect_uri_matches(registered: str, sent: str, *, any_loopback_port: bool) -> bool:
    """Exact string comparison (RFC 9700 §2.1, OAuth 2.1 §4.1.1): no case folding, no path
    normalisation, no added query. The one exception is RFC 8252 §7.3: a native app's
    (a public client's, `any_loopback_port`) loopback redirect `http://127.0.0.1` or
    `http://[::1]` may use any port, with path and query still byte-identical. A
    confidential client is a server with a fixed address: its port must match too."""
    if sent == registered:
        return True
    if not any_loopback_port:
        return False
    ours, theirs = _LOOPBACK.fullmatch(registered), _LOOPBACK.fullmatch(sent)
    if ours is None or theirs is None:
        return False
    port = theirs.group(2)
    if port is not None and not 0 < int(port) < 65536:
        return False
    return ours.group(1) == theirs.group(1) and ours.group(3) == theirs.group(3)


DEFAULT_SCOPE = "openid profile email offline_access"
SECRET_PURPOSE = "client_secret"


def validate_redirect_uri(uri: str) -> str:
    """RFC 9700 §2.1 / RFC 8252: absolute, no fragment, https, loopback http, or a private-use
    scheme for native apps; never script-bearing schemes, wildcards or userinfo."""
    if not uri or len(uri) > 2000 or any(ch.isspace() or ord(ch) < 32 for ch in uri):
        raise Invalid(f"Invalid redirect URI {uri!r}: empty, too long or contains spaces.")
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise Invalid(f"Invalid redirect URI {uri!r}: not a URI.") from None
    scheme = parts.scheme.lower()
    if not scheme or "*" in uri or parts.fragment or "#" in uri:
        raise Invalid(f"Invalid redirect URI {uri!r}: must be absolute, without '*' or '#'.")
    if scheme in {"javascript", "data", "vbscript", "file", "blob", "about"}:
        raise Invalid(f"Invalid redirect URI {uri!r}: scheme {scheme!r} is not allowed.")
    if scheme in {"http", "https"}:
        if not parts.hostname or parts.username is not None or "@" in parts.netloc:
            raise Invalid(f"Invalid redirect URI {uri!r}: needs a host and no user info.")
        if scheme == "http" and _LOOPBACK.fullmatch(uri) is None:
            raise Invalid(
                f"Invalid redirect URI {uri!r}: plain http is only for loopback "
                "(http://127.0.0.1 or http://[::1])."
            )
    elif "." not in scheme:
        raise Invalid(
            f"Invalid redirect URI {uri!r}: a native app's private-use scheme must be a "
            "reversed domain name (RFC 8252 §7.1), e.g. com.example.app:/callback."
        )
    return uri


def validate_registration(
    *,
    redirect_uris: list[str],
    grant_types: list[str],
    auth_method: str,
    jwks: dict[str, Any] | None = None,
    jwks_uri: str | None = None,
) -> None:
    for grant_type in grant_types:
        if grant_type not in GRANT_TYPES:
            raise Invalid(
                f"Unknown grant type {grant_type!r}: choose from {', '.join(GRANT_TYPES)}."
            )
    if auth_method not in AUTH_METHODS:
        raise Invalid(
            f"Unknown auth method {auth_method!r}: choose from {', '.join(AUTH_METHODS)}."
        )
    if auth_method == "private_key_jwt":
        if jwks is None and jwks_uri is None:
            raise Invalid("private_key_jwt needs the client's public keys: jwks or jwks_uri.")
        assertions.check_key_source(jwks, jwks_uri)
    elif jwks is not None or jwks_uri is not None:
        raise Invalid("jwks and jwks_uri are only for the private_key_jwt auth method.")
    if auth_method == "none" and "client_credentials" in grant_types:
        raise Invalid("A public client cannot use the client_credentials grant.")
    if "authorization_code" in grant_types and not redirect_uris:
        raise Invalid("The authorization_code grant needs at least one redirect URI.")
    for uri in redirect_uris:
        validate_redirect_uri(uri)


def _check_resource_server(resource_server: bool, auth_method: str) -> None:
    """RFC 7662 §2.1 wants introspection callers authenticated: a public client, which
    anyone can claim to be, must not read other clients' tokens."""
    if resource_server and auth_method not in CONFIDENTIAL_AUTH_METHODS:
        raise Invalid("A resource server must authenticate (a secret or private_key_jwt).")


def _check_introspection_alg(alg: str | None, auth_method: str) -> None:
    """RFC 9701: signed introspection answers, with an algorithm the key store signs with,
    for a caller that authenticates (introspection needs it, RFC 7662 §2.1)."""
    if alg is None:
        return
    if alg not in ALGORITHMS:
        raise Invalid(f"introspection_signed_response_alg must be one of {', '.join(ALGORITHMS)}.")
    if auth_method not in CONFIDENTIAL_AUTH_METHODS:
        raise Invalid("Signed introspection needs a client that authenticates.")


#: More than a service plausibly calls on a person's behalf; bounds the stored policy.
EXCHANGE_AUDIENCES_MAX = 20


def _exchange_audiences(values: list[str], auth_method: str) -> list[str] | None:
    """A token-exchange policy, for a client that authenticates. What may be in it
    (registered resources) is `token_exchange.check_policy`, checked again at every
    exchange, so deleting a resource ends it."""
    audiences = list(dict.fromkeys(values))
    if not audiences:
        return None
    if auth_method not in CONFIDENTIAL_AUTH_METHODS:
        raise Invalid("Only a client that authenticates may exchange tokens.")
    if len(audiences) > EXCHANGE_AUDIENCES_MAX:
        raise Invalid(f"At most {EXCHANGE_AUDIENCES_MAX} token exchange audiences.")
    return audiences


def create(
    digester: Digester,
    *,
    name: str,
    redirect_uris: list[str] | None = None,
    grant_types: list[str] | None = None,
    scope: str = DEFAULT_SCOPE,
    auth_method: str = "client_secret_basic",
    post_logout_redirect_uris: list[str] | None = None,
    skip_consent: bool = False,
    resource_server: bool = False,
    jwks: dict[str, Any] | None = None,
    jwks_uri: str | None = None,
    require_pushed_authorization_requests: bool = False,
    introspection_signed_response_alg: str | None = None,
    token_exchange_audiences: list[str] | None = None,
) -> tuple[Client, str | None]:
    """Register a client; returns it with its secret, which exists only in this return value."""
    name = name.strip()
    if not name or len(name) > 200:
        raise Invalid("The client name must be 1 to 200 characters.")
    redirect_uris = list(dict.fromkeys(redirect_uris or []))
    grant_types = list(dict.fromkeys(grant_types or ["authorization_code", "refresh_token"]))
    post_logout_redirect_uris = list(dict.fromkeys(post_logout_redirect_uris or []))
    validate_registration(
        redirect_uris=redirect_uris,
        grant_types=grant_types,
        auth_method=auth_method,
        jwks=jwks,
        jwks_uri=jwks_uri,
    )
    _check_resource_server(resource_server, auth_method)
    _check_introspection_alg(introspection_signed_response_alg, auth_method)
    exchange_audiences = _exchange_audiences(token_exchange_audiences or [], auth_method)
    for uri in post_logout_redirect_uris:
        validate_redirect_uri(uri)
    secret = None if auth_method in {"none", "private_key_jwt"} else new_token()
    client = Client(
        id=new_token(16),
        secret_digest=digester.digest(SECRET_PURPOSE, secret) if secret else None,
        name=name,
        redirect_uris=redirect_uris,
        post_logout_redirect_uris=post_logout_redirect_uris,
        grant_types=grant_types,
        response_types=["code"] if "authorization_code" in grant_types else [],
        scope=" ".join(dict.fromkeys(scope.split())),
        token_endpoint_auth_method=auth_method,
        skip_consent=skip_consent,
        resource_server=resource_server,
        jwks=jwks,
        jwks_uri=jwks_uri,
        require_pushed_authorization_requests=require_pushed_authorization_requests,
        introspection_signed_response_alg=introspection_signed_response_alg,
        token_exchange_audiences=exchange_audiences,
    )
    current_session().add(client)
    current_session().flush()
    return client, secret


def as_dict(client: Client) -> dict[str, Any]:
    return {
        "client_id": client.id,
        "client_name": client.name,
        "redirect_uris": client.redirect_uris,
        "post_logout_redirect_uris": client.post_logout_redirect_uris,
        "grant_types": client.grant_types,
        "response_types": client.response_types,
        "scope": client.scope,
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "skip_consent": client.skip_consent,
        "resource_server": client.resource_server,
        "is_active": client.is_active,
        "created_at": client.created_at.isoformat(),
        "require_pushed_authorization_requests": client.require_pushed_authorization_requests,
        **(
            {"introspection_signed_response_alg": client.introspection_signed_response_alg}
            if client.introspection_signed_response_alg
            else {}
        ),
        "token_exchange_audiences": client.token_exchange_audiences or [],
        **({"jwks": client.jwks} if client.jwks else {}),
        **({"jwks_uri": client.jwks_uri} if client.jwks_uri else {}),
        **backchannel_logout(client),
    }


class ClientAuthentication:
    """RFC 6749 §2.3 client authentication with one method per request.

    The method is read from the request's shape (an `Authorization: Basic` header, a
    `client_secret` in the body, a `client_assertion` for private_key_jwt, checked by
    `assertions`, or a bare `client_id` for public clients) and must be the one the
    client registered. §2.3 says a client "MUST NOT use more than one
    authentication method in each request", so Basic plus a body secret is
    `invalid_request`. Secrets are compared as keyed digests in constant time, and every
    failure is 401 `invalid_client` with a Basic challenge (§5.2, RFC 7235 §3.1).
    """

    def __init__(
        self,
        digester: Digester,
        realm: str,
        *,
        limiter: RateLimiter,
        per_minute: int,
        assertions: AssertionVerifier,
        lookup: Callable[[str | None], Client | None] | None = None,
    ) -> None:
        self._digester = digester
        self._realm = realm
        self._limiter = limiter
        self._per_minute = per_minute
        self._assertions = assertions
        self._lookup = lookup or query

    def __call__(self, request: Any, methods: list[str], endpoint: str = "token") -> Client:
        method, client_id, credential = self._presented(request)
        if method not in methods:
            raise self._failed("This endpoint needs client authentication with a secret.")
        client = self._lookup(client_id)
        if client is None:
            raise self._failed("Unknown client.")
        if not client.check_endpoint_auth_method(method, endpoint):
            raise self._failed("The client must use its registered authentication method.")
        if method == "private_key_jwt":
            try:
                self._assertions.verify(client, credential or "", endpoint)
            except AssertionFailed as failure:
                raise self._failed(str(failure)) from None
        elif method != "none" and not (
            client.secret_digest
            and self._digester.matches(SECRET_PURPOSE, credential or "", client.secret_digest)
        ):
            raise self._failed("Client authentication failed.")
        self._throttle(client, endpoint)
        request.auth_method = method
        return client

    def _throttle(self, client: Client, endpoint: str) -> None:
        """SPEC §8: a budget per client and endpoint, counted once the client is known, so
        that nobody can spend another client's budget by naming it."""
        retry_after = self._limiter.check(f"client-{endpoint}", client.id, self._per_minute, 60)
        if retry_after is not None:
            raise TooManyRequests(
                "Too many requests from this client: slow down.", retry_after=retry_after
            )

    def _presented(self, request: Any) -> tuple[str, str | None, str | None]:
        header = request.headers.get("Authorization")
        body_id = request.form.get("client_id")
        body_secret = request.form.get("client_secret")
        assertion_type = request.form.get("client_assertion_type")
        assertion = request.form.get("client_assertion")
        if assertion_type is not None or assertion is not None:
            if header is not None or body_secret is not None:
                raise InvalidRequestError("Use one client authentication method, not two.")
            if assertion_type != assertions.ASSERTION_TYPE or not assertion:
                raise self._failed(
                    f"private_key_jwt needs client_assertion_type={assertions.ASSERTION_TYPE}"
                    " and a client_assertion."
                )
            try:
                client_id = assertions.unverified_subject(assertion)
            except AssertionFailed as failure:
                raise self._failed(str(failure)) from None
            if body_id is not None and body_id != client_id:
                raise self._failed("The client_id does not match the client assertion.")
            return "private_key_jwt", client_id, assertion
        if header is not None:
            if body_secret is not None:
                raise InvalidRequestError("Use one client authentication method, not two.")
            client_id, secret = self._basic(header)
            if body_id is not None and body_id != client_id:
                raise InvalidRequestError("The client_id does not match the authenticated client.")
            return "client_secret_basic", client_id, secret
        if body_secret is not None:
            return "client_secret_post", body_id, body_secret
        if body_id is not None:
            return "none", body_id, None
        raise self._failed("Client authentication is required.")

    def _basic(self, header: str) -> tuple[str, str]:
        """RFC 7617 credentials, each form-url-decoded as RFC 6749 §2.3.1 requires."""
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":
            raise self._failed("Use HTTP Basic client authentication.")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise self._failed("Malformed HTTP Basic credentials.") from None
        client_id, colon, secret = decoded.partition(":")
        if not colon or not client_id:
            raise self._failed("Malformed HTTP Basic credentials.")
        return unquote_plus(client_id), unquote_plus(secret)

    def _failed(self, description: str) -> InvalidClientError:
        return ChallengedClientError(description, realm=self._realm)


class ChallengedClientError(InvalidClientError):
    """`invalid_client` as 401 with `WWW-Authenticate: Basic realm=...` (RFC 6749 §5.2)."""

    status_code = 401

    def __init__(self, description: str, *, realm: str) -> None:
        super().__init__(description=description, status_code=401)
        self.realm = realm

    def get_headers(self) -> list[tuple[str, str]]:
        headers = [h for h in super().get_headers() if h[0].lower() != "www-authenticate"]
        return [*headers, ("WWW-Authenticate", f'Basic realm="{self.realm}"')]


def listing(*, after: Position | None, limit: int) -> list[Client]:
    """Clients oldest first, from the keyset position `after` (created_at, id)."""
    query = select(Client)
    if after is not None:
        query = query.where(tuple_(Client.created_at, Client.id) > after)
    query = query.order_by(Client.created_at, Client.id).limit(limit)
    return list(current_session().scalars(query))


def update(
    client: Client,
    *,
    name: str | None = None,
    redirect_uris: list[str] | None = None,
    post_logout_redirect_uris: list[str] | None = None,
    grant_types: list[str] | None = None,
    scope: str | None = None,
    skip_consent: bool | None = None,
    resource_server: bool | None = None,
    is_active: bool | None = None,
    require_pushed_authorization_requests: bool | None = None,
    introspection_signed_response_alg: str | None = None,
    token_exchange_audiences: list[str] | None = None,
) -> list[str]:
    """Change a registration, validated as `create` validates it; None leaves a field as it
    is. Returns the names of the fields that changed, for the audit trail.

    Deactivating a client ends its tokens by reference (`tokens.family_is_live`) without
    touching them."""
    if name is not None:
        name = name.strip()
        if not name or len(name) > 200:
            raise Invalid("The client name must be 1 to 200 characters.")
    if grant_types is not None and not grant_types:
        raise Invalid("A client needs at least one grant type.")
    uris = list(dict.fromkeys(redirect_uris)) if redirect_uris is not None else None
    grants = list(dict.fromkeys(grant_types)) if grant_types is not None else None
    if uris is not None or grants is not None:
        validate_registration(
            redirect_uris=uris if uris is not None else client.redirect_uris,
            grant_types=grants if grants is not None else client.grant_types,
            auth_method=client.token_endpoint_auth_method,
            jwks=client.jwks,
            jwks_uri=client.jwks_uri,
        )
    if resource_server:
        _check_resource_server(resource_server, client.token_endpoint_auth_method)
    _check_introspection_alg(introspection_signed_response_alg, client.token_endpoint_auth_method)
    exchange_audiences = None
    if token_exchange_audiences is not None:
        audiences = _exchange_audiences(token_exchange_audiences, client.token_endpoint_auth_method)
        exchange_audiences = audiences or []
    logout_uris = None
    if post_logout_redirect_uris is not None:
        logout_uris = [validate_redirect_uri(u) for u in dict.fromkeys(post_logout_redirect_uris)]
    response_types = None
    if grants is not None:
        response_types = ["code"] if "authorization_code" in grants else []
    wanted: dict[str, Any] = {
        "name": name,
        "redirect_uris": uris,
        "post_logout_redirect_uris": logout_uris,
        "grant_types": grants,
        "response_types": response_types,
        "scope": None if scope is None else " ".join(dict.fromkeys(scope.split())),
        "skip_consent": skip_consent,
        "resource_server": resource_server,
        "is_active": is_active,
        "require_pushed_authorization_requests": require_pushed_authorization_requests,
        "introspection_signed_response_alg": introspection_signed_response_alg,
        "token_exchange_audiences": exchange_audiences,
    }
    changed = [f for f, v in wanted.items() if v is not None and getattr(client, f) != v]
    for field in changed:
        setattr(client, field, wanted[field])
    current_session().flush()
    return changed


def rotate_secret(digester: Digester, client: Client) -> str:
    """A new secret, returned once; the old one stops working as this commits, because
    only the new secret's digest is kept."""
    if client.token_endpoint_auth_method not in SECRET_AUTH_METHODS:
        raise Conflict("This client authenticates without a secret; there is none to rotate.")
    secret = new_token()
    client.secret_digest = digester.digest(SECRET_PURPOSE, secret)
    current_session().flush()
    return secret


def delete(client: Client) -> None:
    """Remove a client. The database's ON DELETE CASCADE removes every code, consent and
    token family (with its refresh and access tokens) issued to it, so none stays live."""
    current_session().delete(client)
    current_session().flush()
