"""The two discovery documents (OIDC Discovery 1.0, RFC 8414) from one builder, the JWKS,
and the RFC 9728 metadata of this server's own API; all public, cacheable, and readable
from any origin (`cors.public_preflight` answers their preflights)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authserver.dpop import ALGORITHMS as DPOP_ALGORITHMS
from authserver.keystore import ALGORITHMS, KeyStore
from authserver.mfa.policy import ACR_VALUES
from authserver.oauth import backchannel, device, introspection_jwt, par, token_exchange
from authserver.oauth.assertions import SIGNING_ALGS
from authserver.oauth.clients import (
    AUTH_METHODS,
    CONFIDENTIAL_AUTH_METHODS,
    DEVICE_CODE,
    GRANT_TYPES,
)
from authserver.resource_server import API_SCOPES, PUBLIC_DOCUMENT, protected_resource_metadata
from authserver.rest import API_PREFIX
from authserver.settings import Settings

SCOPES = ("openid", "profile", "email", "offline_access", "organization", *API_SCOPES)
CLAIMS = (
    "sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "sid", "at_hash",
    "name", "email", "email_verified", "org_id", "org_role",
)  # fmt: skip
#: The longest a relying party is told to cache the JWKS or discovery.
MAX_CACHE_SECONDS = 300


def metadata(settings: Settings, signing_algs: Sequence[str]) -> dict[str, Any]:
    """What this server supports; both documents carry exactly this (RFC 8414 §2, OIDC
    Discovery §3). Every endpoint the server answers is listed."""
    issuer = settings.issuer
    documents = settings.client_metadata_documents
    document = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "revocation_endpoint": f"{issuer}/revoke",
        "introspection_endpoint": f"{issuer}/introspect",
        "end_session_endpoint": f"{issuer}/logout",
        "jwks_uri": f"{issuer}/jwks.json",
        "scopes_supported": list(SCOPES),
        "claims_supported": list(CLAIMS),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "form_post"],
        "grant_types_supported": [
            *(g for g in GRANT_TYPES if g != DEVICE_CODE or settings.device_flow),
            *token_exchange.grant_types(settings),
        ],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(signing_algs),
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGS),
        "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "revocation_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGS),
        "introspection_endpoint_auth_methods_supported": list(CONFIDENTIAL_AUTH_METHODS),
        "introspection_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGS),
        "code_challenge_methods_supported": ["S256"],
        "acr_values_supported": list(ACR_VALUES),
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "authorization_response_iss_parameter_supported": True,
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        **({"client_id_metadata_document_supported": True} if documents else {}),
        **device.discovery_fields(settings),
        **par.discovery_fields(settings),
        **introspection_jwt.discovery_fields(settings, signing_algs),
        **backchannel.discovery_fields(settings),
        **({"dpop_signing_alg_values_supported": list(DPOP_ALGORITHMS)} if settings.dpop else {}),
    }
    if settings.registration != "closed":
        document["registration_endpoint"] = f"{issuer}/register"
    return document


def signing_algs(keystore: KeyStore) -> list[str]:
    """The algorithms an active key exists for: advertising one without a key would let a
    client register for ID tokens nobody can sign."""
    active = {key.alg for key in keystore.keys() if key.status == "active"}
    return [alg for alg in ALGORITHMS if alg in active]


def public_cache(settings: Settings, keystore: KeyStore) -> dict[str, str]:
    """Headers for the JWKS and discovery. A rotated key signs `key_activation_delay` seconds
    after it is made, and another instance may show it up to `refresh_lag` seconds late: a
    copy cached for longer than the difference could miss the key of a fresh token."""
    lag = int(-(-keystore.refresh_lag // 1))
    max_age = max(0, min(MAX_CACHE_SECONDS, settings.key_activation_delay - lag))
    return {"Cache-Control": f"public, max-age={max_age}", "Access-Control-Allow-Origin": "*"}


Headers = tuple[tuple[bytes, bytes], ...]


class PublicDocuments:
    """The JWKS and discovery, encoded once per key set and settings, as their routes answer
    them. `serving` writes them without running the app while the key store knows from memory
    which keys it publishes (`KeyStore.answers_from_memory`); when the database key store is
    due to look again, the route answers and reads it in the threadpool."""

    def __init__(self, settings: Settings, keystore: KeyStore) -> None:
        self.settings = settings
        self.keystore = keystore
        self._paths: dict[bytes, tuple[Callable[..., Any], Callable[[], tuple[bytes, Headers]]]]
        self._paths = {
            b"/.well-known/openid-configuration": (openid_configuration, self.metadata),
            b"/.well-known/oauth-authorization-server": (openid_configuration, self.metadata),
            b"/jwks.json": (jwks, self.jwks),
        }
        #: The last document built, with what it was built from; swapped whole, so a
        #: reader in another thread sees an old pair or a new one, never a mix.
        self._metadata: tuple[tuple[str, ...] | None, tuple[bytes, Headers]] = (None, (b"", ()))
        self._jwks: tuple[tuple[str, ...] | None, tuple[bytes, Headers]] = (None, (b"", ()))

    def metadata(self) -> tuple[bytes, Headers]:
        """Keyed by the algorithms keys exist for, the one thing that changes it at runtime."""
        algs = tuple(signing_algs(self.keystore))
        if self._metadata[0] != algs:
            body = bytes(JSONResponse(metadata(self.settings, algs)).body)
            self._metadata = (algs, (body, self._headers("application/json", body)))
        return self._metadata[1]

    def jwks(self) -> tuple[bytes, Headers]:
        """Every key that may have signed a live token (RFC 7517), encoded again when a key
        comes or goes (`KeyStore.published_kids`)."""
        kids = self.keystore.published_kids()
        if self._jwks[0] != kids:
            body = bytes(JSONResponse(self.keystore.public_jwks()).body)
            self._jwks = (kids, (body, self._headers("application/jwk-set+json", body)))
        return self._jwks[1]

    def _headers(self, media_type: str, body: bytes) -> Headers:
        """The raw headers, as `Response` would have encoded them; cached no longer than a
        rotated key waits before it signs (`public_cache`)."""
        headers = public_cache(self.settings, self.keystore)
        return tuple(Response(body, headers=headers, media_type=media_type).raw_headers)

    def prepared(self, path: bytes) -> tuple[Callable[..., Any], bytes, Headers] | None:
        """The route `path` names, with its answer, or None when the app must answer."""
        found = self._paths.get(path)
        if found is None or not self.keystore.answers_from_memory():
            return None
        route, build = found
        return route, *build()

    async def answer(self, build: Callable[[], tuple[bytes, Headers]]) -> Response:
        """The folder store answers from memory after one `stat`; the database store may
        query the database (every `refresh_lag` seconds), which belongs in the threadpool."""
        if self.keystore.answers_from_memory():
            body, headers = build()
        else:
            body, headers = await run_in_threadpool(build)
        return _Prebuilt(body, headers)


async def openid_configuration(request: Request) -> Response:
    documents: PublicDocuments = request.app.state.public_documents
    return await documents.answer(documents.metadata)


async def jwks(request: Request) -> Response:
    documents: PublicDocuments = request.app.state.public_documents
    return await documents.answer(documents.jwks)


class _Prebuilt(Response):
    """A 200 whose body and headers were encoded beforehand. Each response gets its own
    list of headers: middleware adds to it."""

    def __init__(self, body: bytes, headers: Headers) -> None:
        self.status_code = 200
        self.body = body
        self.background = None
        self.raw_headers = list(headers)


#: RFC 9728 §3.1: the well-known segment, then the API's path.
API_METADATA_PATH = "/.well-known/oauth-protected-resource" + API_PREFIX
API_NAME = "authserver identity API"


async def api_metadata(request: Request) -> JSONResponse:
    """RFC 9728 §3 for `<issuer>/api/v1`, which every 401 of the API points at."""
    settings = request.app.state.settings
    document = protected_resource_metadata(
        settings.api_audience,
        settings.issuer,
        list(API_SCOPES),
        API_NAME,
        dpop_accepted=settings.dpop,
    )
    return JSONResponse(document, headers=PUBLIC_DOCUMENT)
