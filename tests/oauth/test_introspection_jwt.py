"""Signed introspection answers (RFC 9701), checked with jwcrypto, a JOSE library the
server does not use; and the discovery documents with every issue 14 feature on and off,
through Authlib's metadata validators."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oidc.discovery import OpenIDProviderMetadata
from jwcrypto import jwk
from jwcrypto import jwt as jwcrypto_jwt
from starlette.testclient import TestClient

from authserver.oauth import clients
from authserver.services import Services
from authserver.users.models import User
from tests import factories
from tests.oauth.conftest import CALLBACK, RP, Flow

PHOTOS = "https://photos.example.com"
JWT_TYPE = "application/token-introspection+jwt"


@pytest.fixture
def photos_api(make: factories.Factory, services: Services) -> RP:
    """A resource server registered for signed answers."""
    client, secret = make.resource_server(PHOTOS, ["photos:read"])

    def register() -> None:
        found = clients.get(client.id)
        assert found is not None
        clients.update(found, introspection_signed_response_alg="RS256")

    services.db.call(register)
    return RP(client, secret)


@pytest.fixture
def photos_token(flow: Flow, make: factories.Factory, user: User, signed_in: Any) -> str:
    printer = RP(*make.client(redirect_uris=[CALLBACK], scope="openid photos:read"))
    flow.allow(user, printer, "openid photos:read")
    code = flow.code(printer, scope="openid photos:read", resource=PHOTOS)
    response = flow.exchange(printer, code)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def introspect(client: TestClient, rp: RP, token: str, accept: str | None) -> httpx.Response:
    headers = {"Accept": accept} if accept is not None else {}
    return client.post("/introspect", data={"token": token}, auth=rp.basic, headers=headers)


def verified(client: TestClient, raw: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a JWT verified against our published JWKS by jwcrypto."""
    keys = jwk.JWKSet.from_json(client.get("/jwks.json").text)
    token = jwcrypto_jwt.JWT(jwt=raw, key=keys, algs=["RS256"])
    return json.loads(token.header), json.loads(token.claims)


def test_a_registered_resource_server_gets_a_signed_answer(
    client: TestClient, photos_api: RP, photos_token: str, settings: Any, user: User
) -> None:
    response = introspect(client, photos_api, photos_token, JWT_TYPE)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == JWT_TYPE
    assert response.headers["cache-control"] == "no-store"
    header, claims = verified(client, response.text)
    assert header["typ"] == "token-introspection+jwt"
    assert header["alg"] == "RS256"
    assert claims["iss"] == settings.issuer
    assert claims["aud"] == photos_api.id
    assert isinstance(claims["iat"], int)
    described = claims["token_introspection"]
    assert described["active"] is True
    assert described["sub"] == user.id
    assert described["aud"] == PHOTOS


def test_an_inactive_token_is_signed_as_inactive(client: TestClient, photos_api: RP) -> None:
    response = introspect(client, photos_api, "not-a-token", JWT_TYPE)
    assert response.status_code == 200
    _, claims = verified(client, response.text)
    assert claims["token_introspection"] == {"active": False}


def test_without_the_jwt_type_in_accept_the_answer_is_plain_json(
    client: TestClient, photos_api: RP, photos_token: str
) -> None:
    for accept in (None, "application/json", "*/*"):
        response = introspect(client, photos_api, photos_token, accept)
        assert response.status_code == 200
        assert response.json()["active"] is True


def test_an_unregistered_caller_asking_only_for_jwt_gets_406(
    client: TestClient, rp: RP, flow: Flow, user: User, signed_in: Any
) -> None:
    issued = flow.tokens(rp, user)
    refused = introspect(client, rp, issued["access_token"], JWT_TYPE)
    assert refused.status_code == 406
    assert refused.json()["error"] == "invalid_request"
    both = introspect(client, rp, issued["access_token"], f"{JWT_TYPE}, application/json;q=0.5")
    assert both.status_code == 200
    assert both.json()["active"] is True


def test_turned_off_every_answer_is_plain_json(
    app_with: Callable[..., TestClient], photos_api: RP, photos_token: str
) -> None:
    off = app_with(jwt_introspection=False)
    response = introspect(off, photos_api, photos_token, JWT_TYPE)
    assert response.status_code == 200
    assert response.json()["active"] is True
    metadata = off.get("/.well-known/openid-configuration").json()
    assert "introspection_signing_alg_values_supported" not in metadata


def test_signed_introspection_needs_a_known_algorithm_and_an_authenticating_client(
    make: factories.Factory,
) -> None:
    from authserver.errors import Invalid

    with pytest.raises(Invalid):
        make.client(name="Bad alg", introspection_signed_response_alg="HS256")
    with pytest.raises(Invalid):
        make.client(name="Public", auth_method="none", introspection_signed_response_alg="RS256")


FEATURES = {
    "device_flow": "device_authorization_endpoint",
    "pushed_authorization_requests": "pushed_authorization_request_endpoint",
    "jwt_introspection": "introspection_signing_alg_values_supported",
}


@pytest.mark.parametrize("on", [True, False])
def test_discovery_passes_authlibs_validators(
    app_with: Callable[..., TestClient], on: bool
) -> None:
    """Each issue 14 feature is advertised exactly when it is on, and both documents stay
    valid RFC 8414 / OIDC Discovery metadata either way."""
    client = app_with(**dict.fromkeys(FEATURES, on))
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        document = client.get(path).json()
        AuthorizationServerMetadata(document).validate()
        OpenIDProviderMetadata(document).validate()
        for member in FEATURES.values():
            assert (member in document) is on
    if on:
        assert document["introspection_signing_alg_values_supported"] == ["RS256", "ES256"]
