"""Revocation (RFC 7009) and introspection (RFC 7662): docs/security.md E (44-48)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from joserfc.jwk import KeySet
from starlette.applications import Starlette

from authserver.errors import Invalid
from authserver.services import Services
from authserver.sessions import models as sessions
from authserver.sessions.models import LoginSession
from authserver.users import models as users
from authserver.users.models import User
from tests import factories
from tests.oauth.conftest import CALLBACK, RP, Flow
from tests.oauth.test_token import _events, assert_oauth_error

ACTIVE_MEMBERS = {"active", "scope", "client_id", "sub", "exp", "iat", "iss", "token_type", "aud"}


@pytest.fixture
def other(make: factories.Factory) -> RP:
    client, secret = make.client(redirect_uris=[CALLBACK])
    return RP(client, secret)


def revoke(flow: Flow, rp: RP, token: str, **extra: str) -> httpx.Response:
    return flow.client.post("/revoke", data={"token": token, **extra}, auth=rp.basic)


def test_revoking_a_refresh_token_kills_its_family(
    flow: Flow, rp: RP, issued: dict[str, Any], services: Services
) -> None:
    """docs/security.md E44 (RFC 7009 §2.1 SHOULD: the grant's access tokens too)."""
    response = revoke(flow, rp, issued["refresh_token"])
    assert response.status_code == 200
    assert response.json() == {}
    assert response.headers["cache-control"] == "no-store"
    assert_oauth_error(flow.refresh(rp, issued["refresh_token"]), "invalid_grant")
    assert flow.introspect(rp, issued["access_token"]) == {"active": False}
    assert flow.userinfo(issued["access_token"]).status_code == 401
    events = services.db.call(_events, "token.revoked")
    assert [event["token_type"] for event in events] == ["refresh_token"]
    assert issued["refresh_token"] not in str(events)


def test_revoking_an_access_token_kills_only_it(flow: Flow, rp: RP, issued: dict[str, Any]) -> None:
    """docs/security.md E44."""
    assert revoke(flow, rp, issued["access_token"]).status_code == 200
    assert flow.userinfo(issued["access_token"]).status_code == 401
    assert flow.introspect(rp, issued["access_token"]) == {"active": False}
    assert flow.refresh(rp, issued["refresh_token"]).status_code == 200


@pytest.mark.parametrize("value", ["garbage", "", "a.b.c", "x" * 9000])
def test_unknown_token_is_200_and_changes_nothing(
    flow: Flow, rp: RP, issued: dict[str, Any], value: str
) -> None:
    """docs/security.md E45 (RFC 7009 §2.2)."""
    response = revoke(flow, rp, value)
    if value == "":
        assert_oauth_error(response, "invalid_request")
    else:
        assert response.status_code == 200
    assert flow.introspect(rp, issued["access_token"])["active"] is True


@pytest.mark.parametrize("hint", ["access_token", "refresh_token", "id_token", "bogus"])
def test_any_hint_still_finds_the_token(
    flow: Flow, rp: RP, issued: dict[str, Any], hint: str
) -> None:
    """docs/security.md E45: the hint only says where to look first."""
    assert revoke(flow, rp, issued["refresh_token"], token_type_hint=hint).status_code == 200
    assert flow.introspect(rp, issued["refresh_token"]) == {"active": False}


def test_another_clients_token_is_refused_and_stays_active(
    flow: Flow, rp: RP, other: RP, issued: dict[str, Any]
) -> None:
    """docs/security.md E46: node-oidc-provider's answer, 400 invalid_request."""
    for token in (issued["refresh_token"], issued["access_token"]):
        assert_oauth_error(revoke(flow, other, token), "invalid_request")
        assert flow.introspect(rp, token)["active"] is True


def test_revocation_needs_client_authentication(flow: Flow, rp: RP, issued: dict[str, Any]) -> None:
    """docs/security.md E46 (ASVS 10.4.10)."""
    response = flow.client.post("/revoke", data={"token": issued["refresh_token"]})
    assert_oauth_error(response, "invalid_client", 401)
    wrong = flow.client.post(
        "/revoke", data={"token": issued["refresh_token"]}, auth=(rp.id, "wrong")
    )
    assert_oauth_error(wrong, "invalid_client", 401)
    assert flow.refresh(rp, issued["refresh_token"]).status_code == 200
    assert flow.client.get("/revoke").status_code == 405


def test_public_client_revokes_with_its_client_id(
    flow: Flow, public_rp: RP, user: User, signed_in: LoginSession
) -> None:
    """RFC 7009 §2.1: public clients identify themselves with client_id."""
    body = flow.tokens(public_rp, user)
    response = flow.client.post(
        "/revoke", data={"token": body["refresh_token"], "client_id": public_rp.id}
    )
    assert response.status_code == 200
    assert_oauth_error(flow.refresh(public_rp, body["refresh_token"]), "invalid_grant")


def test_introspection_needs_an_authenticated_caller(
    flow: Flow, rp: RP, public_rp: RP, issued: dict[str, Any]
) -> None:
    """docs/security.md E47 (RFC 7662 §2.1, against token scanning)."""
    bare = flow.client.post("/introspect", data={"token": issued["access_token"]})
    assert_oauth_error(bare, "invalid_client", 401)
    public = flow.client.post(
        "/introspect", data={"token": issued["access_token"], "client_id": public_rp.id}
    )
    assert_oauth_error(public, "invalid_client", 401)


def test_active_tokens_are_described(
    flow: Flow, rp: RP, issued: dict[str, Any], user: User, services: Services
) -> None:
    """docs/security.md E48: active, scope, client_id, sub, exp, iat, iss, token_type, aud."""
    response = flow.client.post(
        "/introspect", data={"token": issued["access_token"]}, auth=rp.basic
    )
    assert response.headers["cache-control"] == "no-store"
    access = response.json()
    assert set(access) >= ACTIVE_MEMBERS
    assert access["active"] is True
    assert access["sub"] == user.id
    assert access["client_id"] == rp.id
    assert access["token_type"] == "Bearer"
    assert access["aud"] == services.settings.api_audience
    refresh = flow.introspect(rp, issued["refresh_token"], token_type_hint="refresh_token")
    assert set(refresh) >= ACTIVE_MEMBERS - {"token_type"}
    assert refresh["scope"] == "openid profile email"
    # RFC 7662 §2.2: token_type is an RFC 6749 access token type; a refresh token has none.
    assert "token_type" not in refresh


def test_inactive_tokens_say_only_that(
    flow: Flow,
    rp: RP,
    other: RP,
    issued: dict[str, Any],
    user: User,
    signed_in: LoginSession,
    services: Services,
    frozen: Callable[[float], None],
) -> None:
    """docs/security.md E48: garbage, another client's, rotated, session-ended, user-disabled and
    expired tokens are `{"active": false}` and nothing more."""
    inactive = {"active": False}
    assert flow.introspect(rp, "garbage") == inactive
    assert flow.introspect(other, issued["access_token"]) == inactive
    assert flow.introspect(other, issued["refresh_token"]) == inactive

    rotated = flow.refresh(rp, issued["refresh_token"]).json()
    assert flow.introspect(rp, issued["refresh_token"]) == inactive

    def set_active(active: bool) -> None:
        found = users.get(user.id)
        assert found is not None
        found.is_active = active

    services.db.call(set_active, False)
    assert flow.introspect(rp, rotated["access_token"]) == inactive
    services.db.call(set_active, True)
    assert flow.introspect(rp, rotated["access_token"])["active"] is True

    frozen(services.settings.access_token_ttl + 1)
    assert flow.introspect(rp, rotated["access_token"]) == inactive
    assert flow.introspect(rp, rotated["refresh_token"])["active"] is True
    services.db.call(sessions.end, services.app_access, signed_in.id)
    assert flow.introspect(rp, rotated["refresh_token"]) == inactive


def test_introspecting_an_id_token_is_inactive(flow: Flow, rp: RP, issued: dict[str, Any]) -> None:
    """docs/security.md F52: an ID token is not an access token."""
    assert flow.introspect(rp, issued["id_token"]) == {"active": False}


PHOTOS = "https://photos.example.com"


@pytest.fixture
def resource_server(make: factories.Factory) -> RP:
    return RP(*make.resource_server(PHOTOS, ["photos:read"]))


def test_a_resource_server_introspects_access_tokens_of_any_client_for_its_resource(
    flow: Flow,
    rp: RP,
    resource_server: RP,
    issued: dict[str, Any],
    user: User,
    make: factories.Factory,
) -> None:
    """docs/security.md E48 "(not permitted)": an API the operator registered as a resource
    server, and linked to its resource, is permitted for access tokens meant for it, and
    sees revocation at once; a token for this server's own API is not its business."""
    assert flow.introspect(resource_server, issued["access_token"]) == {"active": False}
    printer = RP(*make.client(redirect_uris=[CALLBACK], scope="openid photos:read"))
    flow.allow(user, printer, "openid photos:read")
    code = flow.code(printer, scope="openid photos:read", resource=PHOTOS)
    for_photos = flow.exchange(printer, code).json()
    described = flow.introspect(resource_server, for_photos["access_token"])
    assert set(described) >= ACTIVE_MEMBERS
    assert described["active"] is True
    assert described["sub"] == user.id
    assert described["client_id"] == printer.id
    assert described["aud"] == PHOTOS

    assert revoke(flow, printer, for_photos["access_token"]).status_code == 200
    assert flow.introspect(resource_server, for_photos["access_token"]) == {"active": False}


def test_a_resource_server_learns_nothing_of_refresh_tokens_and_revokes_nothing(
    flow: Flow, rp: RP, resource_server: RP, issued: dict[str, Any]
) -> None:
    """docs/security.md E46, E48: refresh tokens never go to resource servers, and introspection
    rights are not revocation rights."""
    assert flow.introspect(resource_server, issued["refresh_token"]) == {"active": False}
    assert_oauth_error(revoke(flow, resource_server, issued["access_token"]), "invalid_request")
    assert flow.introspect(rp, issued["access_token"])["active"] is True


def test_a_public_client_cannot_be_a_resource_server(make: factories.Factory) -> None:
    """RFC 7662 §2.1: anyone can claim a public client's id."""
    with pytest.raises(Invalid, match="resource server"):
        make.client(name="SPA", auth_method="none", resource_server=True)


def test_a_token_introspected_before_goes_inactive_when_revoked(
    flow: Flow, rp: RP, issued: dict[str, Any]
) -> None:
    """docs/security.md E44: a signature checked once is remembered, the token's state never."""
    assert flow.introspect(rp, issued["access_token"])["active"] is True
    assert revoke(flow, rp, issued["access_token"]).status_code == 200
    assert flow.introspect(rp, issued["access_token"]) == {"active": False}


def test_a_token_goes_inactive_when_its_key_leaves_the_jwks(
    flow: Flow, rp: RP, issued: dict[str, Any], app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remembered signature counts only under the key set that checked it."""
    assert flow.introspect(rp, issued["access_token"])["active"] is True
    monkeypatch.setattr(type(app.state.keystore), "verification_keys", lambda self: KeySet([]))
    assert flow.introspect(rp, issued["access_token"]) == {"active": False}
    monkeypatch.undo()
    assert flow.introspect(rp, issued["access_token"])["active"] is True
