"""Dynamic client registration (RFC 7591) and its management protocol (RFC 7592).

`POST /register` takes client metadata as JSON and answers 201 with the new client: its
`client_id`, a secret for a confidential client, and a `registration_access_token` for
the `registration_client_uri` (`/register/{client_id}`), where the client reads (GET),
replaces (PUT) or deletes (DELETE) its own registration. The secret and the token leave
the server once, in that answer; only their keyed digests are stored.

`AUTHSERVER_REGISTRATION` says who may register: anyone (`open`), the holder of an initial
access token made with `authserver registration-tokens create` (`token`), or nobody
(`closed`: 404, and discovery does not name the endpoint). The server, not the client,
decides what a registration gets (RFC 7591 §2 lets it refuse or replace any value):

- an anonymous registration gets the code and refresh grants and the sign-in scopes only;
  never client_credentials and never the scopes of the server's own API, which speak for
  its users. With an initial access token, client_credentials and the API's scopes are
  allowed too, except `admin`, which only an operator grants;
- redirect URIs follow `clients.validate_redirect_uri` (https, loopback http, private-use
  schemes); every other URI the client gives (logo, policy, terms, jwks_uri) is https;
- the client never picks its `client_id` or secret (docs/security.md G55), nor its own
  trust: `skip_consent` is not client metadata and is ignored like any unknown member, and
  a dynamically registered client sees the consent page every time, marked unverified.

Every answer has `Cache-Control: no-store` and may be read by any origin (CORS `*`): no
cookie is involved, a caller proves itself with the token in its Authorization header.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.util import urlsafe_b64decode
from sqlalchemy import Integer, String, delete, or_, update
from sqlalchemy.orm import Mapped, mapped_column
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authserver import audit, db
from authserver.db import Base, current_session, new_id, utcnow
from authserver.errors import NO_STORE, AppError, NotFound, oauth_error_response, render_error
from authserver.oauth import backchannel, clients, cors, resources
from authserver.oauth.clients import Client
from authserver.oauth.discovery import SCOPES, signing_algs
from authserver.oauth.requests import (
    MalformedRequest,
    RequestSnapshot,
    read_json_request,
    read_resource_request,
)
from authserver.resource_server import API_SCOPES
from authserver.security import Digester, new_token
from authserver.services import Services, services
from authserver.settings import Settings
from authserver.web import client_ip

ACCESS_TOKEN_PURPOSE = "registration_access_token"
INITIAL_TOKEN_PURPOSE = "initial_access_token"
RATE_WINDOW = 3600
#: Bounds on what one registration may hold, so that a request of any shape is checked in
#: microseconds (docs/security.md G60: ten thousand redirect URIs are refused, not parsed).
MAX_URIS = 20
MAX_LIST = 10
URI_MAX = 2000
TEXT_MAX = 200
CONTACT_MAX = 320
RSA_MIN_BITS = 2048
PUBLIC_KEY_TYPES = ("RSA", "EC", "OKP")
#: RFC 7517 §9.2 / RFC 7518 §6: members that only a private or symmetric key has.
PRIVATE_KEY_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
#: Metadata kept in `Client.info` and returned as registered.
INFO_URIS = ("client_uri", "logo_uri", "policy_uri", "tos_uri")
INFO_TEXTS = ("software_id", "software_version")
#: The RFC 7591 members of `clients.as_dict` (the rest of it is the operator's business).
LISTED_METADATA = (
    "client_id", "client_name", "redirect_uris", "post_logout_redirect_uris", "grant_types",
    "response_types", "scope", "token_endpoint_auth_method",
)  # fmt: skip
#: Where `Client.info` remembers under which policy the client registered, for RFC 7592
#: updates; never returned to the client.
POLICY_KEY = "registration_policy"
DEFAULT_NAME = "Unnamed application"


@dataclass(frozen=True)
class Policy:
    """What a registration may ask for."""

    name: str
    grant_types: tuple[str, ...]
    scopes: frozenset[str]

    def with_resources(self) -> Policy:
        """The policy plus the scopes of the protected resources an operator registered
        (never `admin`): an app registers itself to call those APIs on a person's behalf,
        and the person still consents to each scope."""
        extra = resources.registered_scopes() - {"admin"}
        return dataclasses.replace(self, scopes=self.scopes | extra)


POLICIES = {
    "open": Policy(
        "open",
        ("authorization_code", "refresh_token", clients.DEVICE_CODE),
        frozenset(SCOPES) - set(API_SCOPES),
    ),
    "token": Policy("token", clients.GRANT_TYPES, frozenset(SCOPES) - {"admin"}),
}


# -- initial access tokens -------------------------------------------------------------


class InitialAccessToken(Base):
    """RFC 7591 §3: an operator's permission to register clients when registration is in
    `token` mode. Only the keyed digest of the token is stored."""

    __tablename__ = "initial_access_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column()
    #: None: any number of registrations.
    max_uses: Mapped[int | None] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer, default=0)


def create_initial_access_token(
    digester: Digester, *, expires_in: int | None = None, max_uses: int | None = None
) -> tuple[InitialAccessToken, str]:
    """A new initial access token; the raw token exists only in this return value."""
    now = db.utcnow()
    token = new_token()
    row = InitialAccessToken(
        digest=digester.digest(INITIAL_TOKEN_PURPOSE, token),
        created_at=now,
        expires_at=now + timedelta(seconds=expires_in) if expires_in else None,
        max_uses=max_uses,
        uses=0,
    )
    current_session().add(row)
    current_session().flush()
    return row, token


def use_initial_access_token(digester: Digester, token: str, now: datetime) -> str | None:
    """Count one registration against the token: its id if it is live and has a use left,
    else None. One conditional UPDATE decides, so parallel registrations cannot spend a
    last use twice; a registration that fails later rolls its count back with it."""
    digest = digester.digest(INITIAL_TOKEN_PURPOSE, token)
    found = current_session().execute(
        update(InitialAccessToken)
        .where(
            InitialAccessToken.digest == digest,
            or_(InitialAccessToken.expires_at.is_(None), InitialAccessToken.expires_at > now),
            or_(
                InitialAccessToken.max_uses.is_(None),
                InitialAccessToken.uses < InitialAccessToken.max_uses,
            ),
        )
        .values(uses=InitialAccessToken.uses + 1)
        .returning(InitialAccessToken.id)
        .execution_options(synchronize_session=False)
    )
    return found.scalar_one_or_none()


def purge(now: datetime) -> int:
    """Forget initial access tokens once they have expired."""
    result = current_session().execute(
        delete(InitialAccessToken).where(InitialAccessToken.expires_at < now)
    )
    return int(db.rowcount(result) or 0)


def initial_access_token_as_dict(row: InitialAccessToken) -> dict[str, Any]:
    return {
        "id": row.id,
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "max_uses": row.max_uses,
        "uses": row.uses,
    }


# -- metadata -------------------------------------------------------------------------


class Refused(Exception):
    """A request answered with an error; raised inside the unit of work so that nothing
    it did (a counted token use, a half-made client) is kept."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _invalid_metadata(description: str) -> Refused:
    return Refused(oauth_error_response("invalid_client_metadata", description))


def _invalid_redirect_uri(description: str) -> Refused:
    return Refused(oauth_error_response("invalid_redirect_uri", description))


@dataclass
class Metadata:
    """Client metadata after validation and the policy: what will be registered."""

    client_name: str
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str]
    grant_types: list[str]
    scope: str
    token_endpoint_auth_method: str
    id_token_signed_response_alg: str
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def client_fields(self) -> dict[str, Any]:
        """What `clients.create` and `clients.update` take, validated there once more."""
        return {
            "name": self.client_name,
            "redirect_uris": self.redirect_uris,
            "post_logout_redirect_uris": self.post_logout_redirect_uris,
            "grant_types": self.grant_types,
            "scope": self.scope,
        }


def read_metadata(
    document: dict[str, Any],
    policy: Policy,
    algorithms: list[str],
    *,
    auth_method: str = "client_secret_basic",
) -> Metadata:
    """RFC 7591 §2 metadata, validated member by member, under `policy`; unknown members
    are ignored (§2). A member that is null, "" or [] counts as left out (RFC 7592 §2.2
    treats left-out members as null). `auth_method` is the default authentication method.
    Raises `Refused` with `invalid_redirect_uri` or `invalid_client_metadata`."""
    redirect_uris = _redirect_uris(document)
    grant_types = _grant_types(document, policy)
    if "authorization_code" in grant_types and not redirect_uris:
        raise _invalid_redirect_uri("The authorization_code grant needs redirect_uris.")
    _check_response_types(document, grant_types)
    method = _text(document, "token_endpoint_auth_method", 40) or auth_method
    jwks, jwks_uri = _keys(document)
    if method == "private_key_jwt" and jwks is None and jwks_uri is None:
        raise _invalid_metadata("private_key_jwt needs the client's keys: jwks or jwks_uri.")
    info: dict[str, Any] = {}
    for name in INFO_URIS:
        if (uri := _https_uri(document, name)) is not None:
            info[name] = uri
    for name in INFO_TEXTS:
        if (text := _text(document, name, TEXT_MAX)) is not None:
            info[name] = text
    contacts = _strings(document, "contacts", MAX_LIST)
    for contact in contacts:
        _check_text("contacts", contact, CONTACT_MAX)
    if contacts:
        info["contacts"] = contacts
    return Metadata(
        client_name=_text(document, "client_name", TEXT_MAX) or _default_name(redirect_uris),
        redirect_uris=redirect_uris,
        post_logout_redirect_uris=_strings(document, "post_logout_redirect_uris", MAX_URIS),
        grant_types=grant_types,
        scope=_scope(document, policy),
        token_endpoint_auth_method=method,
        id_token_signed_response_alg=_signing_alg(document, algorithms),
        jwks=jwks,
        jwks_uri=jwks_uri,
        info=info,
    )


def _read_backchannel(services: Services, document: dict[str, Any], metadata: Metadata) -> None:
    """OIDC Back-Channel Logout §2.2: `backchannel_logout_uri` is one the outbound client
    will POST to (docs/security.md P118), kept in `Client.info` with the session flag."""
    try:
        metadata.info.update(
            backchannel.registered(
                services.fetcher,
                _present(document, clients.BACKCHANNEL_URI),
                document.get(clients.BACKCHANNEL_SESSION_REQUIRED),
            )
        )
    except AppError as error:
        raise _invalid_metadata(error.detail) from None


def _present(document: dict[str, Any], name: str) -> Any:
    value = document.get(name)
    return None if value is None or value == "" or value == [] else value


def _text(document: dict[str, Any], name: str, limit: int) -> str | None:
    value = _present(document, name)
    if value is None:
        return None
    return _check_text(name, value, limit)


def _check_text(name: str, value: Any, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise _invalid_metadata(f"{name} must be text of at most {limit} printable characters.")
    return value


def _strings(
    document: dict[str, Any], name: str, limit: int, refuse: Callable[[str], Refused] | None = None
) -> list[str]:
    """An array of at most `limit` strings (the count is checked first), without repeats."""
    value = _present(document, name)
    if value is None:
        return []
    refuse = refuse or _invalid_metadata
    if isinstance(value, list) and len(value) > limit:
        raise refuse(f"{name} may hold at most {limit} values.")
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise refuse(f"{name} must be an array of strings.")
    return list(dict.fromkeys(value))


def _redirect_uris(document: dict[str, Any]) -> list[str]:
    """docs/security.md G56: every URI passes `clients.validate_redirect_uri`."""
    uris = _strings(document, "redirect_uris", MAX_URIS, _invalid_redirect_uri)
    for uri in uris:
        try:
            clients.validate_redirect_uri(uri)
        except AppError as error:
            raise _invalid_redirect_uri(error.detail) from None
    return uris


def _grant_types(document: dict[str, Any], policy: Policy) -> list[str]:
    """docs/security.md G57: password and implicit do not exist here; client_credentials
    only with an initial access token."""
    grant_types = _strings(document, "grant_types", MAX_LIST) or [
        "authorization_code",
        "refresh_token",
    ]
    for grant_type in grant_types:
        if grant_type not in clients.GRANT_TYPES:
            raise _invalid_metadata(
                f"The grant type {grant_type!r} is not supported: choose from "
                f"{', '.join(policy.grant_types)}."
            )
        if grant_type not in policy.grant_types:
            raise _invalid_metadata(
                f"The grant type {grant_type!r} needs an initial access token from the "
                "operator of this server."
            )
    if "refresh_token" in grant_types and not {"authorization_code", clients.DEVICE_CODE} & set(
        grant_types
    ):
        raise _invalid_metadata(
            "The refresh_token grant goes with authorization_code or the device code grant."
        )
    return grant_types


def _check_response_types(document: dict[str, Any], grant_types: list[str]) -> None:
    """Only `code` (no implicit or hybrid response types), and only with its grant
    (RFC 7591 §2.1: the two must agree)."""
    response_types = _strings(document, "response_types", MAX_LIST)
    if any(response_type != "code" for response_type in response_types):
        raise _invalid_metadata("The only response type supported is 'code'.")
    if response_types and "authorization_code" not in grant_types:
        raise _invalid_metadata("The response type 'code' needs the authorization_code grant.")


def _scope(document: dict[str, Any], policy: Policy) -> str:
    """The scopes asked for, each of which the policy must allow (nothing is dropped
    silently); the sign-in scopes when none are asked for."""
    text = _text(document, "scope", 1000)
    requested = list(dict.fromkeys((text or clients.DEFAULT_SCOPE).split()))
    refused = [scope for scope in requested if scope not in policy.scopes]
    if refused:
        who = "an anonymous" if policy.name == "open" else "a"
        raise _invalid_metadata(
            f"Scope not available to {who} registration: {' '.join(refused)}. "
            f"Choose from {' '.join(sorted(policy.scopes))}."
        )
    return " ".join(requested)


def _signing_alg(document: dict[str, Any], algorithms: list[str]) -> str:
    """docs/security.md G57: never `none`, only what discovery advertises."""
    alg = _text(document, "id_token_signed_response_alg", 10)
    if alg is None:
        return "RS256" if "RS256" in algorithms else algorithms[0]
    if alg not in algorithms:
        raise _invalid_metadata(
            f"id_token_signed_response_alg must be one of {', '.join(algorithms)}."
        )
    return alg


def _https_uri(document: dict[str, Any], name: str) -> str | None:
    """An absolute https URL with a host and no credentials: what a consent page may link
    or a server may fetch (docs/security.md G59)."""
    uri = _text(document, name, URI_MAX)
    if uri is None:
        return None
    try:
        parts = urlsplit(uri)
        valid = parts.scheme == "https" and bool(parts.hostname) and parts.username is None
    except ValueError:
        valid = False
    if not valid or " " in uri:
        raise _invalid_metadata(f"{name} must be an https URL.")
    return uri


def _keys(document: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """`jwks` or `jwks_uri`, not both (RFC 7591 §2); a `jwks` holds public keys only."""
    jwks, jwks_uri = _present(document, "jwks"), _https_uri(document, "jwks_uri")
    if jwks is not None and jwks_uri is not None:
        raise _invalid_metadata("Send jwks or jwks_uri, not both.")
    if jwks is not None:
        _check_jwks(jwks)
    return jwks, jwks_uri


def _check_jwks(jwks: Any) -> None:
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not 0 < len(keys) <= MAX_LIST:
        raise _invalid_metadata(
            f'jwks must be a JWK Set {{"keys": [...]}} of 1 to {MAX_LIST} keys.'
        )
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") not in PUBLIC_KEY_TYPES:
            raise _invalid_metadata(
                f"Each key in jwks needs a kty of {', '.join(PUBLIC_KEY_TYPES)}."
            )
        private = sorted(PRIVATE_KEY_MEMBERS & set(key))
        if private:
            raise _invalid_metadata(
                f"jwks must hold public keys only; remove {', '.join(private)}."
            )
        if key["kty"] == "RSA" and _rsa_bits(key.get("n")) < RSA_MIN_BITS:
            raise _invalid_metadata(f"RSA keys in jwks need at least {RSA_MIN_BITS} bits.")
    try:
        KeySet.import_key_set(jwks)
    except (JoseError, ValueError, TypeError, KeyError):
        raise _invalid_metadata("jwks is not a valid JWK Set.") from None


def _rsa_bits(modulus: Any) -> int:
    if not isinstance(modulus, str) or len(modulus) > 4096:
        return 0
    try:
        return int.from_bytes(urlsafe_b64decode(modulus.encode("ascii")), "big").bit_length()
    except (ValueError, UnicodeError):
        return 0


def _default_name(redirect_uris: list[str]) -> str:
    """RFC 7591 §2: without `client_name` a server may show something else; the host the
    client redirects to says most about who it is."""
    if not redirect_uris:
        return DEFAULT_NAME
    parts = urlsplit(redirect_uris[0])
    return parts.hostname or parts.scheme or DEFAULT_NAME


# -- the client's configuration ---------------------------------------------------------


def configuration(client: Client, issuer: str) -> dict[str, Any]:
    """RFC 7591 §3.2.1 / RFC 7592 §3: every registered metadata value, as the server
    registered it, with the client's id and management URI."""
    listed = clients.as_dict(client)
    body: dict[str, Any] = {name: listed[name] for name in LISTED_METADATA}
    body.update(
        client_id_issued_at=int(client.created_at.timestamp()),
        id_token_signed_response_alg=client.id_token_signed_response_alg,
        registration_client_uri=f"{issuer}/register/{client.id}",
    )
    if client.jwks is not None:
        body["jwks"] = client.jwks
    if client.jwks_uri is not None:
        body["jwks_uri"] = client.jwks_uri
    info = client.info or {}
    for name in (*INFO_URIS, *INFO_TEXTS, "contacts"):
        if name in info:
            body[name] = info[name]
    body.update(clients.backchannel_logout(client))
    return body


def _apply(client: Client, metadata: Metadata, policy: Policy) -> None:
    """What `clients.create` and `clients.update` do not set."""
    client.dynamically_registered = True
    client.id_token_signed_response_alg = metadata.id_token_signed_response_alg
    client.jwks = metadata.jwks
    client.jwks_uri = metadata.jwks_uri
    client.info = {**metadata.info, POLICY_KEY: policy.name}
    current_session().flush()


def _policy_of(client: Client) -> Policy:
    return POLICIES[(client.info or {}).get(POLICY_KEY, "open")].with_resources()


# -- RFC 7591: POST /register -------------------------------------------------------------


def _register(services: Services, snapshot: RequestSnapshot) -> dict[str, Any]:
    settings, digester = services.settings, services.digester
    policy, initial_token = POLICIES["open"], None
    if settings.registration == "token":
        presented = _bearer_token(snapshot.headers)
        if presented is None:
            raise _bad_token(settings, "Registering a client needs an initial access token.")
        initial_token = use_initial_access_token(digester, presented, db.utcnow())
        if initial_token is None:
            raise _bad_token(settings, "The initial access token is invalid, expired or used up.")
        policy = POLICIES["token"]
    metadata = read_metadata(
        snapshot.json, policy.with_resources(), signing_algs(services.keystore)
    )
    _read_backchannel(services, snapshot.json, metadata)
    try:
        client, secret = clients.create(
            digester, auth_method=metadata.token_endpoint_auth_method, **metadata.client_fields()
        )
    except AppError as error:
        raise _invalid_metadata(error.detail) from None
    _apply(client, metadata, policy)
    access_token = new_token()
    client.registration_token_digest = digester.digest(ACCESS_TOKEN_PURPOSE, access_token)
    details = {"policy": policy.name}
    if initial_token is not None:
        details["initial_access_token"] = initial_token
    _record("client.registered", client.id, snapshot, **details)
    body = configuration(client, settings.issuer)
    if secret is not None:
        body.update(client_secret=secret, client_secret_expires_at=0)
    body["registration_access_token"] = access_token
    return body


async def _create_answer(request: Request, services: Services) -> Response:
    """RFC 7591 §3.1: the per-IP budget is spent before anything else is looked at."""
    settings = services.settings
    _check_open(settings)
    retry_after = await run_in_threadpool(
        services.limiter.check,
        "register-ip",
        client_ip(request),
        settings.registration_rate_per_ip,
        RATE_WINDOW,
    )
    if retry_after is not None:
        return render_error(
            request,
            429,
            "Too many client registrations from your network: try again later.",
            {"Retry-After": str(retry_after)},
        )
    snapshot = await read_json_request(request, settings.issuer)
    body = await services.db.run_sync(_register, services, snapshot)
    return JSONResponse(body, 201)


# -- RFC 7592: GET, PUT, DELETE /register/{client_id} -----------------------------------


def _authorized(services: Services, headers: Headers, client_id: str) -> Client:
    """RFC 7592 §2: the registration access token of this very client, or 401. Another
    client's token, an unknown client and a client registered by an operator (which has
    no such token) look the same; the digest is compared in constant time."""
    presented = _bearer_token(headers)
    if presented is None:
        raise _bad_token(services.settings, "A registration access token is required.")
    client = clients.get(client_id) if clients.plausible_client_id(client_id) else None
    stored = client.registration_token_digest if client is not None else None
    matches = services.digester.matches(ACCESS_TOKEN_PURPOSE, presented, stored or "")
    if client is None or not stored or not matches:
        raise _bad_token(services.settings, "The registration access token is invalid.")
    return client


def _read(services: Services, snapshot: RequestSnapshot, client_id: str) -> Response:
    client = _authorized(services, snapshot.headers, client_id)
    return JSONResponse(configuration(client, services.settings.issuer))


def _replace(services: Services, snapshot: RequestSnapshot, client_id: str) -> Response:
    """RFC 7592 §2.2: the body is the whole new registration; what it leaves out is reset
    to its default. The client_id must be the client's own, a client_secret (if sent) its
    current one, and the authentication method cannot change (register a new client)."""
    client = _authorized(services, snapshot.headers, client_id)
    document = snapshot.json
    if document.get("client_id") != client.id:
        raise Refused(
            oauth_error_response("invalid_request", "The body must carry this client_id.")
        )
    secret = document.get("client_secret")
    if secret is not None and not (
        isinstance(secret, str)
        and client.secret_digest
        and services.digester.matches(clients.SECRET_PURPOSE, secret, client.secret_digest)
    ):
        raise Refused(
            oauth_error_response("invalid_request", "The client_secret is not this client's.")
        )
    policy = _policy_of(client)
    metadata = read_metadata(
        document,
        policy,
        signing_algs(services.keystore),
        auth_method=client.token_endpoint_auth_method,
    )
    _read_backchannel(services, document, metadata)
    if metadata.token_endpoint_auth_method != client.token_endpoint_auth_method:
        raise _invalid_metadata(
            "token_endpoint_auth_method cannot change; register a new client instead."
        )
    try:
        changed = clients.update(client, **metadata.client_fields())
    except AppError as error:
        raise _invalid_metadata(error.detail) from None
    _apply(client, metadata, policy)
    _record("client.updated", client.id, snapshot, fields=",".join(changed))
    return JSONResponse(configuration(client, services.settings.issuer))


def _delete(services: Services, snapshot: RequestSnapshot, client_id: str) -> Response:
    """RFC 7592 §2.3: the client and everything issued to it go (`clients.delete`)."""
    client = _authorized(services, snapshot.headers, client_id)
    clients.delete(client)
    _record("client.deleted", client_id, snapshot)
    return Response(status_code=204)


MANAGEMENT = {"GET": _read, "HEAD": _read, "PUT": _replace, "DELETE": _delete}


async def _manage_answer(request: Request, services: Services) -> Response:
    _check_open(services.settings)
    issuer = services.settings.issuer
    if request.method == "PUT":
        snapshot = await read_json_request(request, issuer)
    else:
        snapshot = await read_resource_request(request, issuer)
    client_id = str(request.path_params["client_id"])
    handle = MANAGEMENT[request.method]
    response: Response = await services.db.run_sync(handle, services, snapshot, client_id)
    return response


# -- plumbing -----------------------------------------------------------------------------


def _record(event: str, client_id: str, snapshot: RequestSnapshot, **details: str) -> None:
    """The client acts on its own registration (an anonymous registrant has no other name)."""
    audit.record(
        event,
        actor_type="client",
        actor_id=client_id,
        ip=snapshot.client_ip,
        target_type="client",
        target_id=client_id,
        **details,
    )


def _check_open(settings: Settings) -> None:
    if settings.registration == "closed":
        raise NotFound("Dynamic client registration is turned off on this server.")


def _bearer_token(headers: Headers) -> str | None:
    """RFC 6750 §2.1: the token in `Authorization: Bearer <token>`, else None."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token and " " not in token else None


def _bad_token(settings: Settings, description: str) -> Refused:
    """RFC 6750 §3.1 `invalid_token` with its Bearer challenge. Imported here, not at the
    top: `authserver.models` loads this module for its table, and the token endpoints
    should not load with the tables."""
    from authserver.oauth.endpoints import bearer_error

    return Refused(bearer_error(settings, 401, "invalid_token", description))


def _endpoint(
    answer: Callable[[Request, Services], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Every answer of these endpoints, errors included, is RFC 7591 §3.2.2 JSON, never
    cached, and readable from any origin."""

    async def endpoint(request: Request) -> Response:
        try:
            response = await answer(request, services(request))
        except Refused as refused:
            response = refused.response
        except MalformedRequest as error:
            response = oauth_error_response("invalid_request", error.description, error.status)
        except AppError as error:
            response = render_error(request, error.status_code, error.detail, error.headers)
        response.headers.update(NO_STORE)
        return cors.allow(response, "*")

    return endpoint


register = _endpoint(_create_answer)
manage = _endpoint(_manage_answer)
register_preflight = cors.preflight(["POST"])
manage_preflight = cors.preflight(["GET", "PUT", "DELETE"])
