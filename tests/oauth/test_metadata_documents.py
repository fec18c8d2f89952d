"""Client ID metadata documents: a client known by the https URL of its JSON document
(draft-ietf-oauth-client-id-metadata-document; docs/security.md F53 for the fetching)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
import respx
from starlette.testclient import TestClient

from authserver import fetch
from authserver.oauth import clients, metadata_documents
from authserver.oauth.clients import Client
from authserver.services import Services
from authserver.sessions import models as sessions
from authserver.sessions.models import LoginSession
from authserver.users.models import User
from tests.conftest import count_rows
from tests.oauth.conftest import (
    RP,
    VERIFIER,
    Flow,
    authorization_params,
    location_params,
)
from tests.oauth.test_consent import answer, to_consent
from tests.oauth.test_token import assert_oauth_error
from tests.tls_server import Answer, tls_server

CLIENT_ID = "https://tools.example.net/oauth/client.json"
REDIRECT = "http://127.0.0.1/callback"


def document(client_id: str = CLIENT_ID, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "client_id": client_id,
        "client_name": "Example MCP Client",
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "none",
        **changes,
    }
    return {name: value for name, value in body.items() if value is not None}


def rp_for(client_id: str = CLIENT_ID, redirect_uri: str = REDIRECT) -> RP:
    return RP(Client(id=client_id, name="?"), None, redirect_uri)


@pytest.fixture
def served() -> Iterator[respx.Route]:
    with respx.mock:
        yield respx.get(CLIENT_ID).mock(return_value=httpx.Response(200, json=document()))


def test_a_public_client_completes_code_and_pkce_by_its_document(
    flow: Flow, served: respx.Route, user: User, signed_in: LoginSession, services: Services
) -> None:
    rp = rp_for()
    page = to_consent(flow.client, rp, scope="openid profile offline_access")
    response = answer(flow.client, page, "allow")
    assert response.status_code == 303, response.text
    code = location_params(response)["code"]
    tokens = flow.exchange(rp, code)
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    id_token = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert id_token["aud"] == CLIENT_ID
    access = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert access["client_id"] == CLIENT_ID
    refreshed = flow.refresh(rp, body["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    stored = services.db.call(clients.get, CLIENT_ID)
    assert stored is not None
    assert stored.metadata_document
    assert stored.unverified
    assert stored.name == "Example MCP Client"
    assert served.call_count == 1


def test_consent_shows_the_host_and_is_asked_every_time(
    flow: Flow, served: respx.Route, user: User, signed_in: LoginSession
) -> None:
    rp = rp_for()
    page = to_consent(flow.client, rp)
    assert "tools.example.net" in page.text
    assert "not verified" in page.text
    answer(flow.client, page, "allow")
    again = to_consent(flow.client, rp)
    assert "tools.example.net" in again.text


def test_prompt_none_gets_consent_required(
    flow: Flow, served: respx.Route, user: User, signed_in: LoginSession
) -> None:
    rp = rp_for()
    answer(flow.client, to_consent(flow.client, rp), "allow")
    response = flow.client.get("/authorize", params=authorization_params(rp, prompt="none"))
    assert location_params(response)["error"] == "consent_required"


def refused_page(client: TestClient, rp: RP) -> httpx.Response:
    response = client.get("/authorize", params=authorization_params(rp))
    assert response.status_code == 400, response.text
    assert "location" not in response.headers
    return response


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param(
            {"client_id": "https://tools.example.net/other.json"}, id="client_id mismatch"
        ),
        pytest.param({"client_secret": "s3cret"}, id="client_secret"),
        pytest.param({"token_endpoint_auth_method": "client_secret_basic"}, id="secret method"),
        pytest.param({"redirect_uris": ["javascript:alert(1)"]}, id="bad redirect"),
        pytest.param({"redirect_uris": "https://x.example/cb"}, id="redirect not a list"),
        pytest.param({"scope": "openid admin"}, id="api scope"),
        pytest.param({"grant_types": ["client_credentials"]}, id="client_credentials"),
        pytest.param(
            {"token_endpoint_auth_method": "private_key_jwt"}, id="private_key_jwt without keys"
        ),
    ],
)
def test_unacceptable_documents_leave_the_client_unknown(
    client: TestClient,
    services: Services,
    signed_in: LoginSession,
    changes: dict[str, Any],
) -> None:
    body = {**document(), **changes}
    with respx.mock:
        respx.get(CLIENT_ID).mock(return_value=httpx.Response(200, json=body))
        refused_page(client, rp_for())
    assert count_rows(services.db, "clients") == 0


def test_a_document_that_is_not_json_leaves_the_client_unknown(
    client: TestClient, signed_in: LoginSession
) -> None:
    with respx.mock:
        respx.get(CLIENT_ID).mock(return_value=httpx.Response(200, content=b"<html>"))
        refused_page(client, rp_for())


def test_documents_off_makes_such_client_ids_unknown(
    app_with: Callable[..., TestClient], served: respx.Route
) -> None:
    client = app_with(client_metadata_documents=False)
    refused_page(client, rp_for())
    assert served.call_count == 0
    discovery = client.get("/.well-known/openid-configuration").json()
    assert "client_id_metadata_document_supported" not in discovery
    token = client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": "x", "client_id": CLIENT_ID,
              "code_verifier": VERIFIER, "redirect_uri": REDIRECT},
    )  # fmt: skip
    assert_oauth_error(token, "invalid_client", 401)


def test_discovery_says_documents_are_supported(client: TestClient) -> None:
    discovery = client.get("/.well-known/oauth-authorization-server").json()
    assert discovery["client_id_metadata_document_supported"] is True


@pytest.mark.parametrize(
    "client_id",
    [
        "https://127.0.0.1/client.json",
        "https://169.254.169.254/latest/meta-data/client.json",
        "https://[::1]/client.json",
        "https://2130706433/client.json",
        "https://[::ffff:10.0.0.1]/client.json",
    ],
)
def test_documents_on_private_addresses_are_never_fetched(
    client: TestClient, signed_in: LoginSession, client_id: str
) -> None:
    """docs/security.md F53: SSRF through the client_id itself."""
    with respx.mock:
        route = respx.get(url__regex=".*").mock(return_value=httpx.Response(200, json={}))
        refused_page(client, rp_for(client_id))
    assert route.call_count == 0


def test_a_name_resolving_to_a_private_address_is_never_fetched(
    client: TestClient, signed_in: LoginSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["192.168.1.20"]

    monkeypatch.setattr(fetch, "system_resolver", resolve)
    refused_page(client, rp_for())
    assert asked == ["tools.example.net"]


def test_only_trusted_hosts_serve_documents_when_named(
    app_with: Callable[..., TestClient], served: respx.Route
) -> None:
    client = app_with(client_metadata_hosts=("mcp.example.org",))
    refused_page(client, rp_for())
    assert served.call_count == 0


def test_the_row_follows_the_document_when_it_is_fetched_again(
    flow: Flow, user: User, signed_in: LoginSession, services: Services
) -> None:
    new_redirect = "http://127.0.0.1/new-callback"
    with respx.mock:
        route = respx.get(CLIENT_ID).mock(
            return_value=httpx.Response(200, json=document(), headers={"Cache-Control": "no-store"})
        )
        to_consent(flow.client, rp_for())
        route.mock(
            return_value=httpx.Response(
                200,
                json=document(redirect_uris=[new_redirect], client_name="Renamed"),
                headers={"Cache-Control": "no-store"},
            )
        )
        page = to_consent(flow.client, rp_for(redirect_uri=new_redirect))
        assert "Renamed" in page.text
        refused = flow.client.get("/authorize", params=authorization_params(rp_for()))
        assert refused.status_code == 400
    stored = services.db.call(clients.get, CLIENT_ID)
    assert stored is not None
    assert stored.redirect_uris == [new_redirect]


def test_a_deactivated_document_client_stays_off(
    client: TestClient, served: respx.Route, signed_in: LoginSession, services: Services
) -> None:
    to_consent(client, rp_for())

    def deactivate() -> None:
        found = clients.get(CLIENT_ID)
        assert found is not None
        found.is_active = False

    services.db.call(deactivate)
    refused_page(client, rp_for())


@pytest.mark.parametrize(
    ("client_id", "expected"),
    [
        (CLIENT_ID, True),
        ("https://tools.example.net/", False),
        ("https://tools.example.net", False),
        ("http://tools.example.net/c.json", False),
        ("https://tools.example.net/a/../c.json", False),
        ("https://tools.example.net/c.json#x", False),
        ("https://u@tools.example.net/c.json", False),
        ("https://tools.example.net:99999/c.json", False),
        ("https://tools.example.net/" + "a" * 300, False),
        ("abc123", False),
    ],
)
def test_which_client_ids_name_documents(client_id: str, expected: bool) -> None:
    assert metadata_documents.is_document_url(client_id) is expected
    assert clients.plausible_client_id(CLIENT_ID)


def test_a_trusted_local_https_host_serves_a_developers_document(
    app_with: Callable[..., TestClient],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    user: User,
) -> None:
    """The developer path: a document on 127.0.0.1 over https, trusted by name in
    AUTHSERVER_CLIENT_METADATA_HOSTS, its CA trusted through SSL_CERT_FILE."""
    with tls_server(tmp_path) as server:
        client_id = f"{server.origin}/client.json"
        server.answers["/client.json"] = Answer(body=json.dumps(document(client_id)).encode())
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
        client = app_with(client_metadata_hosts=(f"127.0.0.1:{server.port}",))
        services: Services = client.app.state.services  # type: ignore[attr-defined]
        _, raw_sid = services.db.call(
            sessions.start, services.digester, services.settings, user_id=user.id
        )
        client.cookies.set(sessions.cookie_name(services.settings), raw_sid)
        page = to_consent(client, rp_for(client_id))
        assert urlsplit(client_id).netloc in page.text
        assert server.hits == [f"127.0.0.1:{server.port} /client.json"]


def test_a_document_client_authenticates_with_private_key_jwt(
    flow: Flow, user: User, signed_in: LoginSession
) -> None:
    """A confidential client without registration: its keys are in its own document."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.oauth.test_private_key_jwt import Key, sign

    key = Key(ec.generate_private_key(ec.SECP256R1()), "ES256", "doc-key")
    body = document(token_endpoint_auth_method="private_key_jwt", jwks=key.jwks())
    with respx.mock:
        respx.get(CLIENT_ID).mock(return_value=httpx.Response(200, json=body))
        rp = rp_for()
        response = answer(flow.client, to_consent(flow.client, rp), "allow")
        code = location_params(response)["code"]
        exchange = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": VERIFIER,
        }
        as_public = flow.client.post("/token", data={**exchange, "client_id": CLIENT_ID})
        assert_oauth_error(as_public, "invalid_client", 401)
        assertion = {
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": sign(key, CLIENT_ID),
        }
        tokens = flow.client.post("/token", data={**exchange, **assertion})
        assert tokens.status_code == 200, tokens.text
