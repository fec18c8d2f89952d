"""Protecting an API with this server's access tokens: one validation core, two users.

The core (`read_header`, `verify_signature`, `check_claims`, `audiences`) checks a JWT
access token the way RFC 9068 §4 tells a resource server to: `typ` is `at+jwt`, the
algorithm is on an explicit allowlist (never `none`, never HMAC, so a public key can never
serve as a MAC secret), the header holds nothing but `alg`, `typ` and `kid`
(docs/security.md F51), then `iss`, `aud`, `exp`/`nbf`/`iat` and the claims RFC 9068 §2.2
requires. The authorization server's own API runs it with the local key store (never over
HTTP) and then checks liveness by reference; `ResourceServer` runs it for a third party's
Starlette or FastAPI app with the issuer's JWKS fetched over HTTP, cached, and refreshed on
an unknown `kid` no more often than `refresh_floor` seconds.

`bearer_challenge` is the one writer of RFC 6750 §3 and RFC 9449 §7.1 challenges, each naming
the resource's RFC 9728 metadata document (`resource_metadata`), and
`protected_resource_metadata` the one builder of that document. `check_sender` is the one
sender check (RFC 9449 §7): a token bound to a DPoP key (`cnf.jkt`) counts only with the
`DPoP` scheme and a proof of that key for this request and this token.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from authserver import dpop, jsonsafe
from authserver.dpop import ProofError, ProofVerifier
from authserver.errors import NO_STORE, Forbidden
from authserver.keystore import jws_registry
from authserver.kv import LocalKV

#: Algorithms an access token of this server may be signed with (RFC 9068 §4: the resource
#: server chooses); `none` and every HS* are absent on purpose.
ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
#: RFC 9068 §4: `typ` is `at+jwt` or `application/at+jwt` (media types are case-insensitive).
ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")
JWT_MAX_LENGTH = 8192
#: A JWT this server issued has exactly these header members; anything else (`jwk`, `jku`,
#: `x5u`, `crit`, ...) means someone else made it (docs/security.md F51).
HEADER_MEMBERS = {"alg", "typ", "kid"}
#: `iat` may be this far in the future (another instance's clock): FAPI 2.0 §5.3.1.1.
CLOCK_SKEW = 60
#: Leeway on `exp` and `nbf` for a resource server whose clock is not the issuer's.
LEEWAY = 30
#: Seconds between two JWKS fetches caused by an unknown `kid` (a flood of forged `kid`s
#: must not turn into a flood of requests to the issuer).
REFRESH_FLOOR = 30.0
#: JWKS and discovery documents larger than this are refused.
DOCUMENT_MAX_BYTES = 256 * 1024
TIMEOUT = httpx.Timeout(5.0)
WELL_KNOWN = "/.well-known/oauth-protected-resource"


class TokenError(Exception):
    """An RFC 6750 §3.1 error: `invalid_token` (401), `insufficient_scope` (403) or
    `invalid_request` (400); no `error` at all for a request without a token (401).
    `scheme` is `DPoP` for a refusal about DPoP (RFC 9449 §7.1: also `invalid_dpop_proof`
    and `use_dpop_nonce`), with the server `nonce` to use next when there is one."""

    def __init__(
        self,
        error: str | None = "invalid_token",
        description: str = "The access token is invalid.",
        *,
        status: int = 401,
        scope: str | None = None,
        scheme: str = "Bearer",
        nonce: str | None = None,
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.scope = scope
        self.scheme = scheme
        self.nonce = nonce


def insufficient_scope(scopes: Sequence[str]) -> TokenError:
    wanted = " ".join(scopes)
    return TokenError(
        "insufficient_scope",
        f"The access token lacks the scope this needs ({wanted}).",
        status=403,
        scope=wanted,
    )


# -- the validation core ---------------------------------------------------------------------


def audiences(claims: dict[str, Any]) -> list[str]:
    """`aud` as a list (RFC 7519 §4.1.3 allows a string or an array); [] when malformed."""
    aud = claims.get("aud")
    values: list[Any] = aud if isinstance(aud, list) else [aud]
    return [str(v) for v in values] if all(isinstance(v, str) for v in values) else []


def read_header(
    raw: str | None, *, types: Collection[str], algorithms: Collection[str] = ALGORITHMS
) -> dict[str, Any]:
    """The protected header of a compact JWS, checked before any key is looked at."""
    if not raw or len(raw) > JWT_MAX_LENGTH or raw.count(".") != 2:
        raise TokenError()
    try:
        header = jsonsafe.loads(b64url_decode(raw.split(".", 1)[0]), max_depth=1)
    except ValueError:
        raise TokenError() from None
    if not isinstance(header, dict) or not set(header) <= HEADER_MEMBERS:
        raise TokenError()
    typ, alg, kid = header.get("typ"), header.get("alg"), header.get("kid")
    if not isinstance(typ, str) or typ.lower() not in {t.lower() for t in types}:
        raise TokenError()
    if alg not in algorithms or not isinstance(kid, str):
        raise TokenError()
    return header


def verify_signature(raw: str, header: dict[str, Any], key: Key | None) -> dict[str, Any]:
    """The claims, once `key` (the one named by `kid`) verifies the signature with the
    header's algorithm; a key published for another algorithm does not count."""
    if key is None or key.alg not in (None, header["alg"]):
        raise TokenError()
    try:
        token = jwt.decode(raw, key, registry=jws_registry([header["alg"]]))
    except (JoseError, ValueError, TypeError):
        raise TokenError() from None
    if not isinstance(token.claims, dict):
        raise TokenError()
    return token.claims


def check_claims(
    claims: dict[str, Any], *, issuer: str, audience: str | None, now: float, leeway: int
) -> dict[str, Any]:
    """RFC 9068 §4 on the claims: our issuer, for `audience` (skipped when None: the
    introspection endpoint asks about any resource's token), within its lifetime (give or
    take `leeway`), and with the members §2.2 requires."""
    if claims.get("iss") != issuer:
        raise TokenError()
    if audience is not None and audience not in audiences(claims):
        raise TokenError(description="The access token is not meant for this resource.")
    exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf", 0)
    if not (_number(exp) and _number(iat) and _number(nbf)):
        raise TokenError()
    if exp + leeway <= now or nbf - leeway > now or iat > now + CLOCK_SKEW:
        raise TokenError(description="The access token is expired or not yet valid.")
    if not all(isinstance(claims.get(name), str) for name in ("jti", "sub", "client_id")):
        raise TokenError()
    return claims


def decode(
    raw: str | None,
    find_key: Callable[[str], Key | None],
    *,
    types: Collection[str],
    algorithms: Collection[str] = ALGORITHMS,
) -> dict[str, Any]:
    """Header, key lookup and signature in one call, for a caller whose keys are local."""
    header = read_header(raw, types=types, algorithms=algorithms)
    assert raw is not None
    return verify_signature(raw, header, find_key(header["kid"]))


def scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    scope = claims.get("scope", "")
    return frozenset(scope.split()) if isinstance(scope, str) else frozenset()


# -- RFC 6750 challenges and RFC 9728 metadata -----------------------------------------------


def metadata_url(resource: str) -> str:
    """RFC 9728 §3.1: the well-known segment goes between the host and the resource's path."""
    parts = urlsplit(resource)
    path = WELL_KNOWN + parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def bearer_challenge(
    resource: str,
    error: str | None = None,
    description: str | None = None,
    scope: str | None = None,
    *,
    scheme: str = "Bearer",
) -> str:
    """The `WWW-Authenticate` value of an answer refusing access to `resource` (RFC 6750
    §3; no error code without a token, §3.1), pointing at its metadata (RFC 9728 §5.1);
    the `DPoP` scheme's also names the proof algorithms accepted (RFC 9449 §7.1)."""
    params = [("resource_metadata", metadata_url(resource))]
    if scheme == "DPoP":
        params.append(("algs", " ".join(dpop.ALGORITHMS)))
    if error is not None:
        params.append(("error", error))
        if description:
            params.append(("error_description", description))
        if scope:
            params.append(("scope", scope))
    return f"{scheme} " + ", ".join(f'{name}="{_quotable(value)}"' for name, value in params)


def challenge_headers(resource: str, error: TokenError) -> dict[str, str]:
    """The headers of a refusal: its challenge, and the DPoP nonce to use next if any."""
    challenge = bearer_challenge(
        resource, error.error, error.description, error.scope, scheme=error.scheme
    )
    headers = {"WWW-Authenticate": challenge}
    if error.nonce is not None:
        headers[dpop.NONCE_HEADER] = error.nonce
    return headers


def error_response(resource: str, error: TokenError) -> Response:
    """An RFC 6750 error answer: the challenge, and the error as JSON when there is one."""
    headers = {**NO_STORE, **challenge_headers(resource, error)}
    if error.error is None:
        return Response(status_code=error.status, headers=headers)
    body = {"error": error.error, "error_description": error.description}
    return JSONResponse(body, error.status, headers=headers)


def protected_resource_metadata(
    resource: str,
    issuer: str,
    scopes: Sequence[str],
    name: str | None = None,
    *,
    dpop_accepted: bool = True,
) -> dict[str, Any]:
    """RFC 9728 §2: what a client needs to find the authorization server for `resource`,
    and the DPoP proof algorithms it accepts (`check_sender`) unless DPoP is off."""
    document: dict[str, Any] = {
        "resource": resource,
        "authorization_servers": [issuer],
        "scopes_supported": list(scopes),
        "bearer_methods_supported": ["header"],
    }
    if dpop_accepted:
        document["dpop_signing_alg_values_supported"] = list(dpop.ALGORITHMS)
    if name:
        document["resource_name"] = name
    return document


#: Public, cacheable, readable by any origin: the document holds nothing secret.
PUBLIC_DOCUMENT = {"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"}


@dataclass(frozen=True)
class PresentedToken:
    """An access token as the request presented it: under `Bearer` or `DPoP`."""

    token: str
    scheme: str


def bearer_token(headers: Mapping[str, str]) -> PresentedToken:
    """The token of `Authorization: Bearer <token>` or `Authorization: DPoP <token>` (RFC
    6750 §2.1, RFC 9449 §7.1; a token in the query or body is not looked at). No header,
    or another scheme, is a request without a token (§3.1: "attempted using an unsupported
    authentication method"); a header without exactly one token is `invalid_request`."""
    header = headers.get("authorization")
    scheme, _, token = (header or "").partition(" ")
    named = {"bearer": "Bearer", "dpop": "DPoP"}.get(scheme.lower())
    if named is None:
        raise TokenError(None, "An access token is required.")
    token = token.strip()
    if not token or " " in token:
        raise TokenError(
            "invalid_request",
            f"The Authorization header must be `{named} <token>`.",
            status=400,
            scheme=named,
        )
    return PresentedToken(token, named)


def check_sender(
    claims: Mapping[str, Any],
    presented: PresentedToken,
    headers: Any,
    *,
    method: str,
    uri: str,
    proofs: ProofVerifier | None,
) -> None:
    """RFC 9449 §7: a bound token (`cnf.jkt`) only under the `DPoP` scheme with a proof of
    its key for this request and this token (`ath`); an unbound one only as `Bearer`.
    A bound token presented as Bearer is exactly what a thief would do, so it is refused
    (docs/security.md O116). `proofs` is None where DPoP is off: bound tokens are refused."""
    jkt = dpop.bound_key(claims)
    if jkt is None:
        if presented.scheme == "DPoP":
            raise TokenError(
                description="The access token is not bound to a key; send it as Bearer.",
                scheme="DPoP",
            )
        return
    if presented.scheme != "DPoP" or proofs is None:
        raise TokenError(
            description="The access token is bound to a key: send it with DPoP and a proof.",
            scheme="DPoP",
        )
    try:
        proof = proofs.verify(
            dpop.proof_header(headers), method=method, uri=uri, access_token=presented.token
        )
    except ProofError as error:
        raise TokenError(error.error, error.description, scheme="DPoP", nonce=error.nonce) from None
    if proof.jkt != jkt:
        raise TokenError(
            dpop.INVALID_PROOF,
            "The DPoP proof is signed with another key than the token is bound to.",
            scheme="DPoP",
            nonce=proofs.fresh_nonce(),
        )


# -- the helper for other people's APIs ------------------------------------------------------

Endpoint = Callable[[Request], Awaitable[Response]]


class ResourceServer:
    """Protects a Starlette (or FastAPI) app with access tokens issued by `issuer`, with no
    database: signatures through the issuer's JWKS, and optionally revocation through its
    introspection endpoint (RFC 7662) with the API's own client credentials (register the
    API with `authserver clients create --grant-type client_credentials --resource-server`
    and name it in `authserver resources create --client-id`).

        api = ResourceServer(issuer="https://id.example.com",
                             resource="https://photos.example.com")

        @api.protect("photos:read")
        async def photos(request):
            return JSONResponse({"owner": request.state.access_token["sub"]})

        app = Starlette(routes=[Route("/photos", photos), *api.routes()])

    `jwks_uri` and the introspection endpoint are read from the issuer's discovery document
    unless given. `http` lets the app share its own `httpx.AsyncClient`; `clock` exists for
    tests. DPoP-bound tokens (RFC 9449) are accepted with a proof of their key; `proofs`
    remembers used proofs in this process unless given one over shared storage
    (`ProofVerifier(RedisKV.from_url(...))`) for an API served by several workers.
    """

    def __init__(
        self,
        *,
        issuer: str,
        resource: str,
        jwks_uri: str | None = None,
        resource_name: str | None = None,
        scopes_supported: Sequence[str] = (),
        introspection: tuple[str, str] | None = None,
        introspection_endpoint: str | None = None,
        http: httpx.AsyncClient | None = None,
        leeway: int = LEEWAY,
        refresh_floor: float = REFRESH_FLOOR,
        proofs: ProofVerifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.resource = resource
        self.resource_name = resource_name
        self.scopes_supported = list(scopes_supported)
        self.leeway = leeway
        self.refresh_floor = refresh_floor
        self._jwks_uri = jwks_uri
        self._introspection = introspection
        self._introspection_endpoint = introspection_endpoint
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False)
        self._clock = clock
        self._proofs = proofs or ProofVerifier(LocalKV(), clock=clock)
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")
        self._lock = anyio.Lock()

    async def aclose(self) -> None:
        """Close the HTTP client it made (one handed in stays the app's to close)."""
        if self._owns_http:
            await self._http.aclose()

    # -- validation

    async def verify(self, token: str, scopes: Sequence[str] = ()) -> dict[str, Any]:
        """The claims of a valid access token for this resource holding every scope in
        `scopes`; otherwise `TokenError`."""
        header = read_header(token, types=ACCESS_TOKEN_TYPES)
        key = await self._key(header["kid"])
        claims = verify_signature(token, header, key)
        check_claims(
            claims,
            issuer=self.issuer,
            audience=self.resource,
            now=self._clock(),
            leeway=self.leeway,
        )
        if not set(scopes) <= scopes_of(claims):
            raise insufficient_scope(scopes)
        if self._introspection is not None and not await self._active(token):
            raise TokenError(description="The access token is no longer active.")
        return claims

    async def authenticate(self, request: Request, scopes: Sequence[str] = ()) -> dict[str, Any]:
        """The request's token's claims (see `verify`), once its sender is the one it is
        bound to (`check_sender`, against `request.url`); `TokenError` otherwise, which
        `error_response` turns into the RFC 6750 answer (in FastAPI: an exception handler)."""
        presented = bearer_token(request.headers)
        claims = await self.verify(presented.token, scopes)
        check_sender(
            claims,
            presented,
            request.headers,
            method=request.method,
            uri=str(request.url),
            proofs=self._proofs,
        )
        return claims

    def protect(self, *scopes: str) -> Callable[[Endpoint], Endpoint]:
        """Decorate a Starlette endpoint: it runs only for a valid token holding `scopes`,
        whose claims it finds in `request.state.access_token`."""

        def decorate(endpoint: Endpoint) -> Endpoint:
            async def protected(request: Request) -> Response:
                try:
                    request.state.access_token = await self.authenticate(request, scopes)
                except TokenError as error:
                    return error_response(self.resource, error)
                return await endpoint(request)

            protected.__name__ = endpoint.__name__
            protected.__doc__ = endpoint.__doc__
            return protected

        return decorate

    # -- RFC 9728

    def metadata(self) -> dict[str, Any]:
        return protected_resource_metadata(
            self.resource, self.issuer, self.scopes_supported, self.resource_name
        )

    def routes(self) -> list[Route]:
        """The resource's metadata document at its RFC 9728 well-known path."""

        async def document(request: Request) -> Response:
            return JSONResponse(self.metadata(), headers=PUBLIC_DOCUMENT)

        return [Route(urlsplit(metadata_url(self.resource)).path, document, methods=["GET"])]

    # -- fetching

    async def _key(self, kid: str) -> Key | None:
        if self._keys is None:
            await self._refresh()
        key = _find(self._keys, kid)
        if key is None and self._clock() - self._fetched_at >= self.refresh_floor:
            await self._refresh()
            key = _find(self._keys, kid)
        return key

    async def _refresh(self) -> None:
        """Fetch the JWKS again; concurrent callers wait for one fetch. A failed fetch keeps
        the keys we had (and still waits out the floor before the next try)."""
        started = self._clock()
        async with self._lock:
            if self._fetched_at >= started:
                return
            self._fetched_at = self._clock()
            try:
                document = await self._get_json(await self._jwks_location())
                self._keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
            except (httpx.HTTPError, ValueError, TypeError, KeyError, JoseError) as error:
                if self._keys is None:
                    raise TokenError(
                        "invalid_token", "The issuer's keys cannot be read.", status=401
                    ) from error

    async def _jwks_location(self) -> str:
        if self._jwks_uri is None:
            await self._discover()
        assert self._jwks_uri is not None
        return self._jwks_uri

    async def _discover(self) -> None:
        document = await self._get_json(f"{self.issuer}/.well-known/openid-configuration")
        if document.get("issuer") != self.issuer or not isinstance(document.get("jwks_uri"), str):
            raise ValueError("the discovery document is not this issuer's")
        self._jwks_uri = document["jwks_uri"]
        endpoint = document.get("introspection_endpoint")
        if self._introspection_endpoint is None and isinstance(endpoint, str):
            self._introspection_endpoint = endpoint

    async def _get_json(self, url: str) -> dict[str, Any]:
        async with self._http.stream("GET", url, headers={"Accept": "application/json"}) as answer:
            if answer.status_code != 200:
                raise ValueError(f"{url} answered {answer.status_code}")
            body = bytearray()
            async for chunk in answer.aiter_bytes():
                body += chunk
                if len(body) > DOCUMENT_MAX_BYTES:
                    raise ValueError(f"{url} is too large")
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError(f"{url} is not a JSON object")
        return document

    async def _active(self, token: str) -> bool:
        """RFC 7662 with our client credentials; any failure counts as inactive."""
        assert self._introspection is not None
        try:
            if self._introspection_endpoint is None:
                await self._discover()
            if self._introspection_endpoint is None:
                return False
            answer = await self._http.post(
                self._introspection_endpoint,
                data={"token": token, "token_type_hint": "access_token"},
                auth=self._introspection,
                headers={"Accept": "application/json"},
            )
            if answer.status_code != 200 or len(answer.content) > DOCUMENT_MAX_BYTES:
                return False
            found = answer.json()
        except (httpx.HTTPError, ValueError):
            return False
        return isinstance(found, dict) and found.get("active") is True


def _find(keys: KeySet | None, kid: str) -> Key | None:
    if keys is None:
        return None
    try:
        return keys.get_by_kid(kid)
    except (JoseError, ValueError, KeyError):
        return None


def _quotable(value: str) -> str:
    """RFC 9110 quoted-string content: no quote or backslash, printable ASCII only."""
    return "".join(c for c in value if c.isascii() and c.isprintable() and c not in '"\\')


def b64url_decode(segment: str) -> bytes:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


# This issuer's own API (`rest.py`): its scopes, its callers, and how their tokens are checked.

#: The scopes of this issuer's own API; a token carrying any of them is for `<issuer>/api/v1`.
API_SCOPES = {
    "users:read": "See your account",
    "users:write": "Change or delete your account",
    "sessions:read": "See where you are signed in",
    "sessions:write": "Sign you out of your other devices",
    "organizations:read": "See your organizations and their members",
    "organizations:write": "Manage your organizations and their members",
    "admin": "Administer every account, client and organization on this server",
}


class InvalidToken(TokenError):
    """What a `TokenVerifier` raises: RFC 6750 `invalid_token`, never saying why."""

    def __init__(self, detail: str = "The access token is invalid.") -> None:
        super().__init__("invalid_token", detail)


class TokenVerifier(Protocol):
    """Checks an access token and returns who it speaks for, or raises `InvalidToken`.

    Called inside a unit of work, so it may consult storage (revocation, session, user).
    """

    def __call__(self, token: str, *, audience: str) -> Principal: ...


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user through a client, or a client on its own (client_credentials)."""

    client_id: str
    user_id: str | None
    scopes: frozenset[str]
    claims: dict[str, Any]
    #: The browser session the token's grant is bound to, if any.
    session_id: str | None = None

    @property
    def is_admin(self) -> bool:
        """`admin` is only ever granted to admins or operator-trusted clients (see oauth)."""
        return "admin" in self.scopes

    def require_user(self) -> str:
        if self.user_id is None:
            raise Forbidden("This operation acts on a signed-in user; use a user's token.")
        return self.user_id
