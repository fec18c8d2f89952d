"""The two discovery documents (OIDC Discovery 1.0, RFC 8414) from one builder, the JWKS,
and the RFC 9728 metadata of this server's own API; all public, cacheable, and readable
from any origin (`cors.public_preflight` answers their preflights)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

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

T = TypeVar("T")

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


async def _read(keystore: KeyStore, read: Callable[[], T]) -> T:
    """The folder store answers from memory after one `stat`; the database store may query
    the database (every `refresh_lag` seconds), which belongs in the threadpool."""
    return await run_in_threadpool(read) if keystore.refresh_lag else read()


async def openid_configuration(request: Request) -> Response:
    state = request.app.state
    algs = await _read(state.keystore, lambda: tuple(signing_algs(state.keystore)))
    body = _encoded_metadata(state.settings, algs)
    return _Prebuilt(body, _headers(state.settings, state.keystore, "application/json", len(body)))


@functools.lru_cache(maxsize=16)
def _encoded_metadata(settings: Settings, signing_algs: tuple[str, ...]) -> bytes:
    """The document changes only with the settings and the algorithms keys exist for."""
    return bytes(JSONResponse(metadata(settings, signing_algs)).body)


async def jwks(request: Request) -> Response:
    """Every key that may have signed a live token (RFC 7517); cached no longer than a
    rotated key waits before it signs."""
    state = request.app.state
    keystore = state.keystore
    body = await _read(keystore, lambda: _encoded_jwks(keystore, keystore.published_kids()))
    headers = _headers(state.settings, keystore, "application/jwk-set+json", len(body))
    return _Prebuilt(body, headers)


@functools.lru_cache(maxsize=16)
def _encoded_jwks(keystore: KeyStore, kids: tuple[str, ...]) -> bytes:
    """The JWKS is encoded once per key set (`kids`), again when a key comes or goes."""
    return bytes(JSONResponse(keystore.public_jwks()).body)


@functools.lru_cache(maxsize=64)
def _headers(
    settings: Settings, keystore: KeyStore, media_type: str, length: int
) -> tuple[tuple[bytes, bytes], ...]:
    """The raw headers of a public document, as `Response` would have encoded them."""
    return tuple(
        Response(
            b"x" * length, headers=public_cache(settings, keystore), media_type=media_type
        ).raw_headers
    )


class _Prebuilt(Response):
    """A 200 whose body and headers were encoded beforehand. Each response gets its own
    list of headers: middleware adds to it."""

    def __init__(self, body: bytes, headers: tuple[tuple[bytes, bytes], ...]) -> None:
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
