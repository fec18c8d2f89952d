"""The two discovery documents (OIDC Discovery 1.0, RFC 8414) from one builder, and the JWKS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from authserver.keystore import ALGORITHMS, KeyStore
from authserver.oauth.clients import AUTH_METHODS, GRANT_TYPES, SECRET_AUTH_METHODS
from authserver.rest import API_SCOPES
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
    return {
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
        "grant_types_supported": list(GRANT_TYPES),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(signing_algs),
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "introspection_endpoint_auth_methods_supported": list(SECRET_AUTH_METHODS),
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "authorization_response_iss_parameter_supported": True,
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
    }


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


async def openid_configuration(request: Request) -> JSONResponse:
    state = request.app.state
    algs = await run_in_threadpool(signing_algs, state.keystore)
    document = metadata(state.settings, algs)
    return JSONResponse(document, headers=public_cache(state.settings, state.keystore))


async def jwks(request: Request) -> JSONResponse:
    """Every key that may have signed a live token (RFC 7517); cached no longer than a
    rotated key waits before it signs. Read in the threadpool: the database key store may
    query the database."""
    state = request.app.state
    keys = await run_in_threadpool(state.keystore.public_jwks)
    headers = public_cache(state.settings, state.keystore)
    return JSONResponse(keys, headers=headers, media_type="application/jwk-set+json")
