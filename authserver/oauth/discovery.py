"""The two discovery documents (OIDC Discovery 1.0, RFC 8414) from one builder, the JWKS,
and the RFC 9728 metadata of this server's own API; all public, cacheable, and readable
from any origin (`cors.public_preflight` answers their preflights)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from authserver.keystore import ALGORITHMS, KeyStore
from authserver.oauth import device, introspection_jwt, par
from authserver.oauth.assertions import SIGNING_ALGS
from authserver.oauth.clients import (
    AUTH_METHODS,
    CONFIDENTIAL_AUTH_METHODS,
    DEVICE_CODE,
    GRANT_TYPES,
)
from authserver.resource_server import PUBLIC_DOCUMENT, protected_resource_metadata
from authserver.rest import API_PREFIX, API_SCOPES
from authserver.settings import Settings

SCOPES = ("openid", "profile", "email", "offline_access", "organization", *API_SCOPES)
CLAIMS = (
    "sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "sid", "at_hash",
    "name", "email", "email_verified", "org_id", "org_role",
)  # fmt: skip


def metadata(settings: Settings, signing_algs: Sequence[str]) -> dict[str, Any]:
    """What this server supports; both documents carry exactly this (RFC 8414 §2, OIDC
    Discovery §3). Every endpoint the server answers is listed."""
    issuer = settings.issuer
    documents = settings.client_metadata_documents
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
        "grant_types_supported": [
            g for g in GRANT_TYPES if g != DEVICE_CODE or settings.device_flow
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
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "authorization_response_iss_parameter_supported": True,
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        **({"client_id_metadata_document_supported": True} if documents else {}),
        **device.discovery_fields(settings),
        **par.discovery_fields(settings),
        **introspection_jwt.discovery_fields(settings, signing_algs),
    }


def signing_algs(keystore: KeyStore) -> list[str]:
    """The algorithms an active key exists for: advertising one without a key would let a
    client register for ID tokens nobody can sign."""
    active = {key.alg for key in keystore.keys() if key.status == "active"}
    return [alg for alg in ALGORITHMS if alg in active]


async def openid_configuration(request: Request) -> JSONResponse:
    state = request.app.state
    document = metadata(state.settings, signing_algs(state.keystore))
    return JSONResponse(document, headers=PUBLIC_DOCUMENT)


async def jwks(request: Request) -> JSONResponse:
    """Every key that may have signed a live token (RFC 7517); short cache so rotation shows."""
    keys = request.app.state.keystore.public_jwks()
    headers = {"Cache-Control": "public, max-age=60", "Access-Control-Allow-Origin": "*"}
    return JSONResponse(keys, headers=headers, media_type="application/jwk-set+json")


#: RFC 9728 §3.1: the well-known segment, then the API's path.
API_METADATA_PATH = "/.well-known/oauth-protected-resource" + API_PREFIX
API_NAME = "authserver identity API"


async def api_metadata(request: Request) -> JSONResponse:
    """RFC 9728 §3 for `<issuer>/api/v1`, which every 401 of the API points at."""
    settings = request.app.state.settings
    document = protected_resource_metadata(
        settings.api_audience, settings.issuer, list(API_SCOPES), API_NAME
    )
    return JSONResponse(document, headers=PUBLIC_DOCUMENT)
