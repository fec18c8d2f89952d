"""Refresh tokens: rotation, reuse detection, the retry window, binding to client, scope
and session. docs/security.md C (35-41); Authlib ships none of this, so all of it is ours."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from starlette.testclient import TestClient

from authserver.app import create_app
from authserver.oauth import clients
from authserver.services import Services
from authserver.sessions import models as sessions
from authserver.sessions.models import LoginSession
from authserver.settings import Settings
from authserver.users import models as users
from authserver.users.models import User
from tests import factories
from tests.conftest import ISSUER, count_rows
from tests.oauth.conftest import CALLBACK, RP, SCOPE, Flow
from tests.oauth.test_token import _events, assert_oauth_error


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def test_refresh_rotates_and_keeps_the_identity(flow: Flow, rp: RP, issued: dict[str, Any]) -> None:
    """docs/security.md C35 (OIDC Core §12.2): new tokens, same sub/iss/aud, original auth_time."""
    response = flow.refresh(rp, issued["refresh_token"])
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["refresh_token"] != issued["refresh_token"]
    assert body["access_token"] != issued["access_token"]
    before, after = claims_of(issued["id_token"]), claims_of(body["id_token"])
    for claim in ("sub", "iss", "aud", "auth_time", "sid"):
        assert before[claim] == after[claim]
    assert "nonce" not in after
    assert flow.userinfo(body["access_token"]).status_code == 200
    assert flow.introspect(rp, body["refresh_token"])["scope"] == "openid profile email"


def test_rotated_token_reused_revokes_the_family(
    flow: Flow, rp: RP, issued: dict[str, Any], services: Services, frozen: Callable[[float], None]
) -> None:
    """docs/security.md C36 (RFC 9700 §4.14.2): outside the retry window a rotated token is
    reuse; its latest successor and every access token of the family die with it."""
    first = issued["refresh_token"]
    successor = flow.refresh(rp, first).json()
    frozen(services.settings.refresh_grace_seconds + 1)
    assert_oauth_error(flow.refresh(rp, first), "invalid_grant")
    assert_oauth_error(flow.refresh(rp, successor["refresh_token"]), "invalid_grant")
    assert flow.introspect(rp, successor["access_token"]) == {"active": False}
    assert flow.introspect(rp, issued["access_token"]) == {"active": False}
    assert flow.userinfo(successor["access_token"]).status_code == 401
    events = services.db.call(_events, "refresh.reuse_detected")
    assert len(events) == 1
    assert first not in str(events)


def test_retry_inside_the_window_returns_the_same_successor(
    flow: Flow, rp: RP, issued: dict[str, Any], services: Services, frozen: Callable[[float], None]
) -> None:
    """A client that lost the answer to its refresh may ask again for a few seconds."""
    first = flow.refresh(rp, issued["refresh_token"]).json()
    frozen(services.settings.refresh_grace_seconds)
    retry = flow.refresh(rp, issued["refresh_token"])
    assert retry.status_code == 200, retry.text
    assert retry.json()["refresh_token"] == first["refresh_token"]
    assert retry.json()["access_token"] != first["access_token"]
    assert flow.refresh(rp, first["refresh_token"]).status_code == 200
    assert count_rows(services.db, "refresh_tokens") == 3


def test_retry_after_the_successor_was_used_is_reuse(
    flow: Flow, rp: RP, issued: dict[str, Any]
) -> None:
    """Inside the window too: once the successor moved on, the old token is reuse."""
    first = flow.refresh(rp, issued["refresh_token"]).json()
    second = flow.refresh(rp, first["refresh_token"]).json()
    assert_oauth_error(flow.refresh(rp, issued["refresh_token"]), "invalid_grant")
    assert_oauth_error(flow.refresh(rp, second["refresh_token"]), "invalid_grant")


@pytest.fixture
def no_grace_client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings.replace(refresh_grace_seconds=0))
    with TestClient(app, base_url=ISSUER, follow_redirects=False) as test_client:
        yield test_client
    app.state.db.dispose()


def test_window_of_zero_makes_any_second_use_reuse(
    flow: Flow, rp: RP, issued: dict[str, Any], no_grace_client: TestClient
) -> None:
    strict = Flow(no_grace_client, flow.sign_in_directly, flow.allow)
    successor = strict.refresh(rp, issued["refresh_token"]).json()
    assert_oauth_error(strict.refresh(rp, issued["refresh_token"]), "invalid_grant")
    assert_oauth_error(strict.refresh(rp, successor["refresh_token"]), "invalid_grant")


def test_refresh_token_is_bound_to_its_client(
    make: factories.Factory, flow: Flow, rp: RP, issued: dict[str, Any], services: Services
) -> None:
    """docs/security.md C37 (oidcc-refresh-token): nothing changes, A's token still works."""
    other_client, other_secret = make.client(redirect_uris=[CALLBACK])
    other = RP(other_client, other_secret)
    before = count_rows(services.db, "refresh_tokens")
    assert_oauth_error(flow.refresh(other, issued["refresh_token"]), "invalid_grant")
    assert count_rows(services.db, "refresh_tokens") == before
    assert flow.refresh(rp, issued["refresh_token"]).status_code == 200


def test_confidential_client_must_authenticate_to_refresh(
    flow: Flow, rp: RP, issued: dict[str, Any]
) -> None:
    """docs/security.md C38."""
    response = flow.client.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": issued["refresh_token"],
            "client_id": rp.id,
        },
    )
    assert_oauth_error(response, "invalid_client", 401)


def test_scope_may_narrow_but_not_broaden(flow: Flow, rp: RP, issued: dict[str, Any]) -> None:
    """docs/security.md C39: the family keeps the original scope."""
    assert_oauth_error(
        flow.refresh(rp, issued["refresh_token"], scope="openid offline_access"), "invalid_scope"
    )
    narrow = flow.refresh(rp, issued["refresh_token"], scope="openid")
    assert narrow.status_code == 200
    assert narrow.json()["scope"] == "openid"
    assert claims_of(narrow.json()["access_token"])["scope"] == "openid"
    full = flow.refresh(rp, narrow.json()["refresh_token"])
    assert full.json()["scope"] == "openid profile email"


def test_tokens_bound_to_the_browser_session_end_with_it(
    flow: Flow, rp: RP, issued: dict[str, Any], signed_in: LoginSession, services: Services
) -> None:
    """SPEC §5: without offline_access, ending the session kills the refresh token (by
    reference) and the access tokens of its family."""
    services.db.call(sessions.end, services.app_access, signed_in.id)
    assert_oauth_error(flow.refresh(rp, issued["refresh_token"]), "invalid_grant")
    assert flow.userinfo(issued["access_token"]).status_code == 401


def test_offline_access_outlives_the_browser_session(
    flow: Flow, rp: RP, user: User, signed_in: LoginSession, services: Services
) -> None:
    body = flow.tokens(rp, user, scope=SCOPE)
    services.db.call(sessions.end, services.app_access, signed_in.id)
    assert flow.refresh(rp, body["refresh_token"]).status_code == 200


@pytest.mark.parametrize(
    "elapsed",
    [
        pytest.param(lambda s: s.refresh_token_idle_ttl + 1, id="idle"),
        pytest.param(lambda s: s.refresh_token_ttl + 1, id="absolute"),
    ],
)
def test_expired_refresh_token_is_invalid_grant(
    flow: Flow,
    rp: RP,
    user: User,
    signed_in: LoginSession,
    services: Services,
    frozen: Callable[[float], None],
    elapsed: Callable[[Settings], int],
) -> None:
    """docs/security.md C40 (ASVS 10.4.8): idle and absolute expiry."""
    body = flow.tokens(rp, user, scope=SCOPE)
    frozen(elapsed(services.settings))
    assert_oauth_error(flow.refresh(rp, body["refresh_token"]), "invalid_grant")


def test_refresh_within_idle_time_keeps_the_chain_alive(
    flow: Flow,
    rp: RP,
    user: User,
    signed_in: LoginSession,
    services: Services,
    frozen: Callable[[float], None],
) -> None:
    """Idle expiry slides with each rotation, up to the family's absolute lifetime."""
    token = flow.tokens(rp, user, scope=SCOPE)["refresh_token"]
    for _ in range(2):
        frozen(services.settings.refresh_token_idle_ttl - 10)
        response = flow.refresh(rp, token)
        assert response.status_code == 200, response.text
        token = response.json()["refresh_token"]


def test_disabled_user_and_disabled_client_stop_refreshing(
    flow: Flow, rp: RP, issued: dict[str, Any], user: User, services: Services
) -> None:
    """docs/security.md C40."""

    def set_active(active: bool) -> None:
        found = users.get(user.id)
        assert found is not None
        found.is_active = active

    services.db.call(set_active, False)
    assert_oauth_error(flow.refresh(rp, issued["refresh_token"]), "invalid_grant")
    services.db.call(set_active, True)

    def disable_client() -> None:
        found = clients.get(rp.id)
        assert found is not None
        found.is_active = False

    services.db.call(disable_client)
    assert_oauth_error(flow.refresh(rp, issued["refresh_token"]), "invalid_client", 401)


@pytest.mark.parametrize("value", ["garbage", "x" * 5000, "\u00e9t\u00e9"])
def test_garbage_refresh_token_is_invalid_grant(flow: Flow, rp: RP, value: str) -> None:
    """docs/security.md C40, L95."""
    assert_oauth_error(flow.refresh(rp, value), "invalid_grant")


def test_missing_refresh_token_is_invalid_request(flow: Flow, rp: RP) -> None:
    response = flow.client.post("/token", data={"grant_type": "refresh_token"}, auth=rp.basic)
    assert_oauth_error(response, "invalid_request")


def test_clients_without_rotation_keep_their_token(
    flow: Flow, rp: RP, user: User, signed_in: LoginSession, services: Services
) -> None:
    """docs/security.md §1: rotation is a per-client policy (FAPI 2.0 forbids it)."""

    def no_rotation() -> None:
        found = clients.get(rp.id)
        assert found is not None
        found.refresh_rotation = False

    services.db.call(no_rotation)
    token = flow.tokens(rp, user)["refresh_token"]
    for _ in range(2):
        response = flow.refresh(rp, token)
        assert response.status_code == 200
        assert "refresh_token" not in response.json()


def test_public_client_refreshes_with_its_client_id(
    flow: Flow, public_rp: RP, user: User, signed_in: LoginSession
) -> None:
    body = flow.tokens(public_rp, user)
    assert flow.refresh(public_rp, body["refresh_token"]).status_code == 200


def test_admin_scope_ends_when_the_admin_role_does(
    make: factories.Factory,
    flow: Flow,
    services: Services,
    sign_in_directly: Callable[..., LoginSession],
) -> None:
    admin = make.user(is_admin=True)
    sign_in_directly(admin)
    client, secret = make.client(redirect_uris=[CALLBACK], scope="openid admin")
    rp = RP(client, secret)
    flow.allow(admin, rp, "openid admin")
    body = flow.tokens(rp, admin, scope="openid admin")

    def demote() -> None:
        found = users.get(admin.id)
        assert found is not None
        found.is_admin = False

    services.db.call(demote)
    assert_oauth_error(flow.refresh(rp, body["refresh_token"]), "invalid_scope")
