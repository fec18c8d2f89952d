"""Token exchange (RFC 8693): a service trades a person's access token for a narrower one
that names it as the actor (docs/security.md Q123 to Q127)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oidc.discovery import OpenIDProviderMetadata
from starlette.testclient import TestClient

from authserver.errors import Invalid
from authserver.oauth import clients
from authserver.oauth.token_exchange import (
    ACCESS_TOKEN_TYPE,
    GRANT_TYPE,
    JWT_TYPE,
    MAX_ACTORS,
    actors,
)
from authserver.services import Services
from authserver.sessions.models import LoginSession
from authserver.users.models import User
from tests import factories
from tests.conftest import API, Api, audit_events, is_problem
from tests.factories import Person
from tests.oauth.conftest import RP, Flow
from tests.oauth.test_token import assert_oauth_error, verify_with_jwks

ALBUMS = "https://albums.example.com"
PRINTING = "https://printing.example.com"
STORAGE = "https://storage.example.com"
MAPS = "https://maps.example.com"
APP_SCOPE = "openid offline_access photos:read photos:write"


def set_policy(services: Services, client_id: str, audiences: list[str]) -> None:
    def update() -> None:
        client = clients.get(client_id)
        assert client is not None
        clients.update(client, token_exchange_audiences=audiences)

    services.db.call(update)


@pytest.fixture
def albums(make: factories.Factory, services: Services) -> RP:
    """The API the person's app calls; it calls the printing API on their behalf."""
    service = RP(*make.resource_server(ALBUMS, ["photos:read", "photos:write"], "Albums"))
    set_policy(services, service.id, [PRINTING])
    return service


@pytest.fixture
def printing(make: factories.Factory) -> RP:
    return RP(*make.resource_server(PRINTING, ["photos:read", "print"], "Printing"))


@pytest.fixture
def app_rp(make: factories.Factory) -> RP:
    client, secret = make.client(
        name="Photo App",
        redirect_uris=["https://app.example.com/cb"],
        scope=APP_SCOPE,
        grant_types=["authorization_code", "refresh_token"],
    )
    return RP(client, secret)


@pytest.fixture
def issued(
    flow: Flow,
    app_rp: RP,
    user: User,
    signed_in: LoginSession,
    allow: Callable[..., None],
    albums: RP,
    printing: RP,
) -> dict[str, Any]:
    """The app's token response for the albums API, as a person's consent gave it."""
    allow(user, app_rp, APP_SCOPE)
    response = flow.exchange(app_rp, flow.code(app_rp, scope=APP_SCOPE, resource=ALBUMS))
    assert response.status_code == 200, response.text
    return response.json()


def exchange(client: TestClient, service: RP, subject_token: str, **params: str) -> httpx.Response:
    data = {
        "grant_type": GRANT_TYPE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "audience": PRINTING,
        **params,
    }
    return client.post("/token", data={k: v for k, v in data.items() if v}, auth=service.basic)


def exchanged(client: TestClient, service: RP, subject_token: str, **params: str) -> str:
    response = exchange(client, service, subject_token, **params)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def is_active(flow: Flow, caller: RP, token: str) -> bool:
    return bool(flow.introspect(caller, token)["active"])


def test_a_service_exchanges_a_persons_token_for_a_narrower_one_naming_it_as_actor(
    client: TestClient,
    services: Services,
    issued: dict[str, Any],
    albums: RP,
    app_rp: RP,
    user: User,
) -> None:
    subject = verify_with_jwks(client, issued["access_token"], audience=ALBUMS)
    response = exchange(client, albums, issued["access_token"], scope="photos:read")

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "photos:read"
    assert "refresh_token" not in body
    claims = verify_with_jwks(client, body["access_token"], audience=PRINTING)
    assert jwt.get_unverified_header(body["access_token"])["typ"] == "at+jwt"
    assert claims["sub"] == user.id
    assert claims["client_id"] == albums.id
    assert claims["act"] == {"sub": albums.id}
    assert claims["scope"] == "photos:read"
    assert claims["exp"] <= subject["exp"]
    assert claims["auth_time"] == subject["auth_time"]
    [event] = audit_events(services, "token.exchanged")
    assert (event.actor_id, event.target_id) == (albums.id, user.id)


def test_a_dpop_proof_with_the_exchange_binds_the_new_token_to_the_services_key(
    client: TestClient, services: Services, issued: dict[str, Any], albums: RP
) -> None:
    key = factories.DPoPKey()
    proof = key.proof("POST", f"{services.settings.issuer}/token")
    data = {
        "grant_type": GRANT_TYPE,
        "subject_token": issued["access_token"],
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "audience": PRINTING,
    }
    response = client.post("/token", data=data, auth=albums.basic, headers={"DPoP": proof})

    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "DPoP"
    claims = verify_with_jwks(client, response.json()["access_token"], audience=PRINTING)
    assert claims["cnf"] == {"jkt": key.jkt}
    assert claims["act"] == {"sub": albums.id}


def test_without_a_scope_the_new_token_carries_what_the_resource_accepts_of_the_subjects(
    client: TestClient, issued: dict[str, Any], albums: RP
) -> None:
    token = exchanged(client, albums, issued["access_token"])

    claims = verify_with_jwks(client, token, audience=PRINTING)
    assert claims["scope"] == "photos:read"


def test_the_exchanged_token_lives_no_longer_than_the_subject_token(
    client: TestClient,
    tokens: factories.TokenFactory,
    user: User,
    app_rp: RP,
    albums: RP,
    printing: RP,
) -> None:
    subject = tokens.access_token(
        user, "photos:read", client=app_rp.client, audience=ALBUMS, ttl=30
    )

    response = exchange(client, albums, subject.token)

    assert response.status_code == 200, response.text
    assert response.json()["expires_in"] <= 30
    claims = verify_with_jwks(client, response.json()["access_token"], audience=PRINTING)
    assert claims["exp"] <= jwt.decode(subject.token, options={"verify_signature": False})["exp"]


def test_an_audience_outside_the_clients_policy_is_invalid_target(
    client: TestClient, make: factories.Factory, issued: dict[str, Any], albums: RP
) -> None:
    make.resource_server(MAPS, ["photos:read"], "Maps")

    for params in (
        {"audience": MAPS},
        {"audience": "", "resource": MAPS},
        {"resource": MAPS},
        {"audience": "https://[unbalanced/"},
    ):
        response = exchange(client, albums, issued["access_token"], **params)
        assert_oauth_error(response, "invalid_target")


def test_an_unregistered_resource_in_the_policy_is_still_invalid_target(
    client: TestClient, services: Services, issued: dict[str, Any], albums: RP
) -> None:
    set_policy(services, albums.id, [PRINTING, STORAGE])

    response = exchange(client, albums, issued["access_token"], audience=STORAGE)

    assert_oauth_error(response, "invalid_target")


def test_a_client_without_a_policy_is_unauthorized(
    client: TestClient, issued: dict[str, Any], app_rp: RP
) -> None:
    response = exchange(client, app_rp, issued["access_token"])

    assert_oauth_error(response, "unauthorized_client")


def test_a_wider_scope_than_the_subject_tokens_is_refused(
    client: TestClient, services: Services, issued: dict[str, Any], albums: RP
) -> None:
    response = exchange(client, albums, issued["access_token"], scope="photos:read print")

    assert_oauth_error(response, "invalid_scope")
    assert audit_events(services, "token.exchanged") == []


def test_a_scope_the_resource_does_not_accept_is_invalid_target(
    client: TestClient, issued: dict[str, Any], albums: RP
) -> None:
    response = exchange(client, albums, issued["access_token"], scope="photos:write")

    assert_oauth_error(response, "invalid_target")


def test_a_revoked_subject_token_cannot_be_exchanged(
    flow: Flow, client: TestClient, issued: dict[str, Any], albums: RP, app_rp: RP
) -> None:
    revoked = client.post("/revoke", data={"token": issued["access_token"]}, auth=app_rp.basic)
    assert revoked.status_code == 200

    assert_oauth_error(exchange(client, albums, issued["access_token"]), "invalid_grant")
    assert_oauth_error(exchange(client, albums, "not-a-token"), "invalid_grant")


def test_revoking_the_subject_token_ends_the_exchanged_one(
    flow: Flow, client: TestClient, issued: dict[str, Any], albums: RP, app_rp: RP
) -> None:
    token = exchanged(client, albums, issued["access_token"])
    assert is_active(flow, albums, token)

    client.post("/revoke", data={"token": issued["access_token"]}, auth=app_rp.basic)

    assert not is_active(flow, albums, token)


def test_revoking_the_grant_ends_the_exchanged_tokens(
    flow: Flow, client: TestClient, issued: dict[str, Any], albums: RP, app_rp: RP
) -> None:
    token = exchanged(client, albums, issued["access_token"])

    client.post("/revoke", data={"token": issued["refresh_token"]}, auth=app_rp.basic)

    assert not is_active(flow, albums, token)
    assert not is_active(flow, app_rp, issued["access_token"])


def test_an_exchanged_token_is_exchanged_again_with_nested_act_and_the_same_cascade(
    flow: Flow,
    client: TestClient,
    services: Services,
    make: factories.Factory,
    issued: dict[str, Any],
    albums: RP,
    printing: RP,
    app_rp: RP,
) -> None:
    make.resource_server(STORAGE, ["photos:read"], "Storage")
    set_policy(services, printing.id, [STORAGE])
    first = exchanged(client, albums, issued["access_token"])

    second = exchanged(client, printing, first, audience=STORAGE)

    claims = verify_with_jwks(client, second, audience=STORAGE)
    assert claims["act"] == {"sub": printing.id, "act": {"sub": albums.id}}
    assert flow.introspect(printing, second)["act"] == claims["act"]
    client.post("/revoke", data={"token": issued["access_token"]}, auth=app_rp.basic)
    assert not is_active(flow, printing, second)


def test_a_delegation_chain_stops_at_five_actors(
    client: TestClient,
    make: factories.Factory,
    services: Services,
    issued: dict[str, Any],
    albums: RP,
    printing: RP,
) -> None:
    chain, token = [albums, printing], exchanged(client, albums, issued["access_token"])
    for hop in range(1, MAX_ACTORS + 1):
        uri = f"https://hop{hop}.example.com"
        chain.append(RP(*make.resource_server(uri, ["photos:read"], f"Hop {hop}")))
        set_policy(services, chain[-2].id, [uri])
        if hop < MAX_ACTORS:
            token = exchanged(client, chain[-2], token, audience=uri)
            continue
        refused = exchange(client, chain[-2], token, audience=uri)
        assert_oauth_error(refused, "invalid_grant")
    assert actors(jwt.decode(token, options={"verify_signature": False})["act"]) == MAX_ACTORS


def test_introspection_shows_act_to_the_actor_and_to_the_target_resource(
    flow: Flow, client: TestClient, issued: dict[str, Any], albums: RP, printing: RP, user: User
) -> None:
    token = exchanged(client, albums, issued["access_token"])

    for caller in (albums, printing):
        answer = flow.introspect(caller, token)
        assert answer["active"] is True
        assert answer["act"] == {"sub": albums.id}
        assert answer["sub"] == user.id
    assert "act" not in flow.introspect(albums, issued["access_token"])


def test_a_token_neither_issued_to_nor_meant_for_the_client_is_invalid_grant(
    client: TestClient, make: factories.Factory, services: Services, issued: dict[str, Any]
) -> None:
    other = RP(
        *make.client(
            name="Other service", redirect_uris=[], grant_types=["client_credentials"], scope=""
        )
    )
    set_policy(services, other.id, [PRINTING])

    assert_oauth_error(exchange(client, other, issued["access_token"]), "invalid_grant")


def test_a_clients_own_token_is_no_subject(
    client: TestClient, tokens: factories.TokenFactory, albums: RP, printing: RP
) -> None:
    own = tokens.access_token(None, "photos:read", client=albums.client, audience=ALBUMS)
    assert_oauth_error(exchange(client, albums, own.token), "invalid_grant")


def test_request_shape_errors_are_invalid_request(
    client: TestClient, issued: dict[str, Any], albums: RP
) -> None:
    subject = issued["access_token"]
    for params in (
        {"subject_token_type": "urn:ietf:params:oauth:token-type:id_token"},
        {"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
        {"actor_token": subject, "actor_token_type": ACCESS_TOKEN_TYPE},
        {"audience": ""},
    ):
        assert_oauth_error(exchange(client, albums, subject, **params), "invalid_request")
    missing = exchange(client, albums, "", subject_token_type=ACCESS_TOKEN_TYPE)
    assert_oauth_error(missing, "invalid_request")


def test_the_jwt_token_type_is_accepted_for_our_access_tokens_only(
    client: TestClient, issued: dict[str, Any], albums: RP
) -> None:
    token = exchanged(client, albums, issued["access_token"], subject_token_type=JWT_TYPE)
    assert verify_with_jwks(client, token, audience=PRINTING)["act"] == {"sub": albums.id}

    id_token = exchange(client, albums, issued["id_token"], subject_token_type=JWT_TYPE)
    assert_oauth_error(id_token, "invalid_grant")


def test_a_public_client_cannot_exchange(
    client: TestClient, make: factories.Factory, public_rp: RP, issued: dict[str, Any]
) -> None:
    with pytest.raises(Invalid, match="authenticates"):
        make.client(name="Public", auth_method="none", token_exchange_audiences=[PRINTING])

    response = client.post(
        "/token",
        data={
            "grant_type": GRANT_TYPE,
            "client_id": public_rp.id,
            "subject_token": issued["access_token"],
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "audience": PRINTING,
        },
    )

    assert_oauth_error(response, "invalid_client", 401)


def test_off_the_grant_is_neither_served_nor_advertised(
    app_with: Callable[..., TestClient], issued: dict[str, Any], albums: RP
) -> None:
    off = app_with(token_exchange=False)

    assert_oauth_error(exchange(off, albums, issued["access_token"]), "unsupported_grant_type")
    document = off.get("/.well-known/openid-configuration").json()
    assert GRANT_TYPE not in document["grant_types_supported"]


@pytest.mark.parametrize("on", [True, False])
def test_discovery_advertises_the_grant_when_on_and_stays_valid(
    app_with: Callable[..., TestClient], on: bool
) -> None:
    client = app_with(token_exchange=on)
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        document = client.get(path).json()
        AuthorizationServerMetadata(document).validate()
        OpenIDProviderMetadata(document).validate()
        assert (GRANT_TYPE in document["grant_types_supported"]) is on


def test_administrators_set_the_policy_through_the_clients_api(
    client: TestClient, make: factories.Factory, admin: Person, albums: RP
) -> None:
    """Only registered resources: STORAGE is not one."""
    api = Api(client)
    path = f"{API}/clients/{albums.id}"

    make.resource_server(MAPS, ["photos:read"], "Maps")
    changed = api.call("PATCH", path, admin.token, {"token_exchange_audiences": [MAPS]})
    assert changed.status_code == 200, changed.text
    assert changed.json()["token_exchange_audiences"] == [MAPS]
    for refused in (["not a uri"], ["https://[unbalanced/"], [STORAGE]):
        bad = api.call("PATCH", path, admin.token, {"token_exchange_audiences": refused})
        assert is_problem(bad, 400)
    cleared = api.call("PATCH", path, admin.token, {"token_exchange_audiences": []})
    assert cleared.json()["token_exchange_audiences"] == []
    new = {"client_name": "Maps service", "grant_types": ["client_credentials"]}
    for audiences, status in (([STORAGE], 400), ([MAPS], 201)):
        created = api.call(
            "POST", f"{API}/clients", admin.token, {**new, "token_exchange_audiences": audiences}
        )
        assert created.status_code == status, created.text
    assert created.json()["token_exchange_audiences"] == [MAPS]
