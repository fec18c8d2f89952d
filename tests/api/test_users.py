"""`/api/v1/users`: my account, my password, and accounts for administrators."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from authserver.app import create_app
from authserver.audit import AuditEvent
from authserver.db import current_session
from authserver.organizations.models import Membership
from authserver.services import Services
from authserver.sessions.models import LoginSession
from authserver.settings import Settings
from authserver.users import models as users
from tests import factories
from tests.api.conftest import Grant, refresh, rows, token_is_live
from tests.conftest import API, ISSUER, Api, is_problem
from tests.factories import Person, bearer


def user_row(services: Services, user_id: str) -> users.User | None:
    return services.db.call(users.get, user_id)


def password_works(services: Services, email: str, password: str) -> bool:
    candidate = services.db.call(users.sign_in_candidate, email)
    return users.check_password(services.passwords, candidate, password) is not None


def events(services: Services, event: str) -> list[AuditEvent]:
    def read() -> list[AuditEvent]:
        query = select(AuditEvent).where(AuditEvent.event == event).order_by(AuditEvent.at)
        return list(current_session().scalars(query))

    return services.db.call(read)


def live_sessions(services: Services, user_id: str) -> set[str]:
    def read() -> set[str]:
        query = select(LoginSession.id).where(
            LoginSession.user_id == user_id, LoginSession.ended_at.is_(None)
        )
        return set(current_session().scalars(query))

    return services.db.call(read)


USER_KEYS = {"id", "email", "name", "email_verified", "is_admin", "is_active", "created_at"}


# -- my account ------------------------------------------------------------------------------


def test_read_my_account(api: Api, alice: Person) -> None:
    response = api.call("GET", "/users/me", alice.token)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == USER_KEYS
    assert body["id"] == alice.user.id
    assert body["email"] == "alice@example.com"
    assert "password_hash" not in response.text


def test_rename_myself(api: Api, alice: Person, services: Services) -> None:
    response = api.call("PATCH", "/users/me", alice.token, {"name": "  Alice Liddell "})
    assert response.status_code == 200
    assert response.json()["name"] == "Alice Liddell"
    assert user_row(services, alice.user.id).name == "Alice Liddell"
    (event,) = events(services, "user.updated")
    assert (event.actor_id, event.target_id, event.details["fields"]) == (
        alice.user.id,
        alice.user.id,
        ["name"],
    )


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, "bad\x00name", "tab\tname"])
def test_a_bad_name_is_400(api: Api, alice: Person, services: Services, name: str) -> None:
    before = rows(services)
    assert is_problem(api.call("PATCH", "/users/me", alice.token, {"name": name}), 400)
    assert rows(services) == before


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "role": "owner", "org_id": "B", "email_verified": True, "password_hash": "x"},
        {"name": "x", "is_admin": True},
        {"name": "x", "email": "evil@example.com"},
        {"name": "x", "is_active": False},
        {"name": "x", "id": "someone-else"},
        {"email_verified": True},
    ],
)
def test_mass_assignment_is_refused(
    api: Api, alice: Person, services: Services, body: dict[str, Any]
) -> None:
    """docs/security.md J77: read-only or unknown members are refused whole, nothing changes;
    the email address is not editable here (changing it would need re-verification)."""
    before = rows(services)
    assert is_problem(api.call("PATCH", "/users/me", alice.token, body), 400)
    assert rows(services) == before


def test_a_body_that_is_not_json_is_415_or_400(api: Api, alice: Person) -> None:
    headers = {"content-type": "text/plain"}
    response = api.client.patch(
        API + "/users/me", content="name=x", headers={**alice.headers, **headers}
    )
    assert is_problem(response, 415)
    response = api.client.patch(
        API + "/users/me",
        content="{nope",
        headers={**alice.headers, "content-type": "application/json"},
    )
    assert is_problem(response, 400)


def test_delete_my_account(
    api: Api, alice: Person, bob: Person, services: Services, grant: Callable[..., Grant]
) -> None:
    """The account goes with its sessions, token families, consents and memberships; the
    token that asked is dead at once; the audit trail keeps who and when, not who it was."""
    given = grant(alice.user)
    response = api.call("DELETE", "/users/me", alice.token)
    assert response.status_code == 204
    assert user_row(services, alice.user.id) is None
    assert not live_sessions(services, alice.user.id)
    assert refresh(api.client, given).status_code == 400
    assert is_problem(api.call("GET", "/users/me", alice.token), 401)
    (event,) = events(services, "user.deleted")
    assert event.actor_id == event.target_id == alice.user.id
    assert "alice@example.com" not in json.dumps(event.details)
    assert api.call("GET", "/users/me", bob.token).status_code == 200


def test_the_last_administrator_cannot_delete_themselves(
    api: Api, person: Callable[..., Person], services: Services
) -> None:
    root = person("root@example.com", scope="users:write", is_admin=True)
    before = rows(services)
    assert is_problem(api.call("DELETE", "/users/me", root.token), 409)
    assert rows(services) == before
    person("second@example.com", is_admin=True)
    assert api.call("DELETE", "/users/me", root.token).status_code == 204


# -- my password -----------------------------------------------------------------------------


def change(api: Api, who: Person, current: str, new: str = "a brand new passphrase") -> Any:
    body = {"current_password": current, "new_password": new}
    return api.call("POST", "/users/me/password", who.token, body)


def test_change_my_password(
    api: Api,
    alice: Person,
    services: Services,
    tokens: factories.TokenFactory,
    grant: Callable[..., Grant],
) -> None:
    """Only the calling session survives, with the tokens bound to it; other sessions end,
    their grants and every offline grant are revoked (refresh fails, access tokens die)."""
    elsewhere = tokens.access_token(alice.user, "users:read")
    other_app = grant(alice.user)
    offline_app = grant(alice.user, offline=True)
    response = change(api, alice, factories.PASSWORD)
    assert response.status_code == 204
    assert password_works(services, "alice@example.com", "a brand new passphrase")
    assert not password_works(services, "alice@example.com", factories.PASSWORD)
    assert live_sessions(services, alice.user.id) == {alice.issued.session_id}
    assert token_is_live(services, alice.issued)
    assert api.call("GET", "/users/me", alice.token).status_code == 200
    for gone in (elsewhere, other_app.issued, offline_app.issued):
        assert not token_is_live(services, gone)
    assert refresh(api.client, other_app).status_code == 400
    assert refresh(api.client, offline_app).status_code == 400
    (event,) = events(services, "password.changed")
    assert event.details["sessions_ended"] == 3
    assert "passphrase" not in json.dumps(event.details)


def test_a_wrong_current_password_changes_nothing(
    api: Api, alice: Person, services: Services
) -> None:
    """docs/security.md I71: counted like a failed sign-in, and audited without the password."""
    before = rows(services)
    response = change(api, alice, "not my password")
    assert is_problem(response, 400)
    assert rows(services) == before
    (event,) = events(services, "password.changed")
    assert event.outcome == "failure"
    assert "not my password" not in json.dumps(event.details)


@pytest.mark.parametrize("new", ["short", "x" * 1025])
def test_a_weak_or_huge_new_password_is_400(
    api: Api, alice: Person, services: Services, new: str
) -> None:
    before = rows(services)
    assert is_problem(change(api, alice, factories.PASSWORD, new), 400)
    assert rows(services) == before


@pytest.fixture
def strict_client(settings: Settings) -> Iterator[TestClient]:
    """The app with a per-account limit of two attempts."""
    application = create_app(settings.replace(login_rate_per_account=2))
    with TestClient(application, base_url=ISSUER) as client:
        yield client
    application.state.db.dispose()


def test_guessing_the_current_password_is_rate_limited(
    strict_client: TestClient, alice: Person
) -> None:
    """I71: the same per-account counter as the sign-in page; past it even the right
    password gets 429 with Retry-After, so the limit is no oracle."""
    api = Api(strict_client, base=API)
    for _ in range(2):
        assert change(api, alice, "guess").status_code == 400
    response = change(api, alice, factories.PASSWORD)
    assert is_problem(response, 429)
    assert int(response.headers["retry-after"]) > 0


# -- administration --------------------------------------------------------------------------


def test_create_a_user(api: Api, admin: Person, services: Services) -> None:
    body = {
        "email": "New.Person@Example.com",
        "name": "New Person",
        "password": "a long enough password",
        "email_verified": True,
    }
    response = api.call("POST", "/users", admin.token, body)
    assert response.status_code == 201
    created = response.json()
    assert response.headers["location"] == f"{API}/users/{created['id']}"
    assert created["email"] == "new.person@example.com"
    assert (created["email_verified"], created["is_admin"], created["is_active"]) == (
        True,
        False,
        True,
    )
    assert password_works(services, "new.person@example.com", body["password"])
    (event,) = events(services, "user.created")
    assert (event.actor_id, event.target_id) == (admin.user.id, created["id"])
    assert "a long enough password" not in json.dumps(event.details)
    assert event.ip


def test_create_without_a_password(api: Api, admin: Person, services: Services) -> None:
    """The person sets one through the reset link; nothing signs in meanwhile."""
    response = api.call("POST", "/users", admin.token, {"email": "later@example.com"})
    assert response.status_code == 201
    assert user_row(services, response.json()["id"]).password_hash is None


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"email": "ALICE@example.com"}, 409),
        ({"email": "not-an-address"}, 400),
        ({"email": "x@example.com", "password": "short"}, 400),
        ({"email": "x@example.com", "password_hash": "$argon2id$..."}, 400),
        ({"email": "x@example.com", "id": "chosen"}, 400),
        ({"email": "x@example.com", "is_admin": "yes"}, 400),
        ({}, 400),
    ],
)
def test_create_refuses_bad_input(
    api: Api, admin: Person, alice: Person, services: Services, body: Any, status: int
) -> None:
    before = rows(services)
    assert is_problem(api.call("POST", "/users", admin.token, body), status)
    assert rows(services) == before


def test_list_users_in_pages(api: Api, admin: Person, make: factories.Factory) -> None:
    """Oldest first, by (created_at, id); the cursor leads on without gaps or repeats."""
    made = [make.user(email=f"u{i}@example.com") for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        query = "?page_size=2" + (f"&cursor={cursor}" if cursor else "")
        response = api.call("GET", "/users" + query, admin.token)
        assert response.status_code == 200
        page = response.json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [admin.user.id, *(user.id for user in made)]


def test_list_users_by_filter(
    api: Api, admin: Person, alice: Person, bob: Person, services: Services
) -> None:
    services.db.call(lambda: setattr(users.get(bob.user.id), "is_active", False))
    by_email = api.call("GET", "/users?email=ALICE@example.com", admin.token).json()
    assert [item["id"] for item in by_email["items"]] == [alice.user.id]
    inactive = api.call("GET", "/users?active=false", admin.token).json()
    assert [item["id"] for item in inactive["items"]] == [bob.user.id]
    active = api.call("GET", "/users?active=true", admin.token).json()
    assert {item["id"] for item in active["items"]} == {admin.user.id, alice.user.id}


@pytest.mark.parametrize(
    "query",
    ["?active=maybe", "?page_size=0", "?page_size=201", "?page_size=x", "?cursor=forged",
     "?email=" + "a" * 400, "?email=a%00b"],
)  # fmt: skip
def test_list_users_refuses_bad_queries(api: Api, admin: Person, query: str) -> None:
    assert is_problem(api.call("GET", "/users" + query, admin.token), 400)


def test_read_a_user(api: Api, admin: Person, alice: Person) -> None:
    response = api.call("GET", f"/users/{alice.user.id}", admin.token)
    assert response.status_code == 200
    assert response.json()["email"] == "alice@example.com"
    assert is_problem(api.call("GET", "/users/no-such-user", admin.token), 404)


def test_update_a_user(api: Api, admin: Person, alice: Person, services: Services) -> None:
    body = {"name": "A. Liddell", "email_verified": True, "is_admin": True, "is_active": None}
    response = api.call("PATCH", f"/users/{alice.user.id}", admin.token, body)
    assert response.status_code == 200
    row = user_row(services, alice.user.id)
    assert (row.name, row.email_verified, row.is_admin, row.is_active) == (
        "A. Liddell",
        True,
        True,
        True,
    )
    (event,) = events(services, "user.updated")
    assert event.details["fields"] == ["email_verified", "is_admin", "name"]
    assert event.actor_id == admin.user.id


def test_update_with_nothing_changes_nothing(api: Api, admin: Person, alice: Person) -> None:
    response = api.call("PATCH", f"/users/{alice.user.id}", admin.token, {})
    assert response.status_code == 200
    assert response.json()["name"] == "Alice"


@pytest.mark.parametrize(
    "body", [{"email": "x@example.com"}, {"password_hash": "x"}, {"name": 5}, {"is_admin": 1}]
)
def test_update_refuses_unknown_members(
    api: Api, admin: Person, alice: Person, services: Services, body: Any
) -> None:
    before = rows(services)
    assert is_problem(api.call("PATCH", f"/users/{alice.user.id}", admin.token, body), 400)
    assert rows(services) == before


@pytest.mark.parametrize("how", ["deactivate", "patch"])
def test_deactivating_ends_everything_at_once(
    api: Api,
    admin: Person,
    alice: Person,
    services: Services,
    grant: Callable[..., Grant],
    how: str,
) -> None:
    """J78: the next request of every token fails; reactivating brings nothing back, since
    the sessions were ended and the families revoked, not just hidden by the flag."""
    given = grant(alice.user, offline=True)
    if how == "deactivate":
        response = api.call("POST", f"/users/{alice.user.id}/deactivate", admin.token)
    else:
        response = api.call("PATCH", f"/users/{alice.user.id}", admin.token, {"is_active": False})
    assert response.status_code == 200
    assert response.json()["is_active"] is False
    assert is_problem(api.call("GET", "/users/me", alice.token), 401)
    assert refresh(api.client, given).status_code == 400
    reactivate = api.call("PATCH", f"/users/{alice.user.id}", admin.token, {"is_active": True})
    assert reactivate.json()["is_active"] is True
    assert not live_sessions(services, alice.user.id)
    assert not token_is_live(services, given.issued)
    assert refresh(api.client, given).status_code == 400
    assert len(events(services, "user.deactivated")) == 1


def test_the_last_administrator_stays(api: Api, admin: Person, services: Services) -> None:
    """Demoting, deactivating or deleting the only active admin is a 409; nothing changes."""
    path = f"/users/{admin.user.id}"
    before = rows(services)
    assert is_problem(api.call("PATCH", path, admin.token, {"is_admin": False}), 409)
    assert is_problem(api.call("PATCH", path, admin.token, {"is_active": False}), 409)
    assert is_problem(api.call("POST", path + "/deactivate", admin.token), 409)
    assert is_problem(api.call("DELETE", path, admin.token), 409)
    assert rows(services) == before


def test_a_demoted_administrator_loses_admin_at_once(
    api: Api, admin: Person, person: Callable[..., Person], alice: Person
) -> None:
    """J78: the `admin` scope was checked at issue; the person is checked on every request."""
    other = person("other-admin@example.com", scope="admin", is_admin=True)
    assert api.call("GET", f"/users/{alice.user.id}", other.token).status_code == 200
    demote = api.call("PATCH", f"/users/{other.user.id}", admin.token, {"is_admin": False})
    assert demote.status_code == 200
    assert is_problem(api.call("GET", f"/users/{alice.user.id}", other.token), 403)
    assert is_problem(api.call("GET", "/audit", other.token), 403)


def test_delete_a_user(
    api: Api, admin: Person, alice: Person, services: Services, grant: Callable[..., Grant]
) -> None:
    given = grant(alice.user)
    assert api.call("DELETE", f"/users/{alice.user.id}", admin.token).status_code == 204
    assert user_row(services, alice.user.id) is None
    assert refresh(api.client, given).status_code == 400
    assert is_problem(api.call("DELETE", f"/users/{alice.user.id}", admin.token), 404)
    (event,) = events(services, "user.deleted")
    assert (event.actor_id, event.target_id) == (admin.user.id, alice.user.id)


def test_admin_routes_take_a_persons_token(api: Api, admin: Person) -> None:
    """`bearer()` with the admin's token works on `/users/me` too: admin covers every scope."""
    response = api.client.get(API + "/users/me", headers=bearer(admin.token))
    assert response.json()["is_admin"] is True


def test_an_organizations_only_owner_cannot_be_deleted(
    api: Api,
    admin: Person,
    alice: Person,
    bob: Person,
    make: factories.Factory,
    services: Services,
) -> None:
    """SPEC §7, the last-owner rule: deleting the account would leave Acme without an
    owner, by the person's hand or an admin's; once Bob co-owns it, it goes."""
    acme = make.organization(alice.user, name="Acme")
    before = rows(services)
    assert is_problem(api.call("DELETE", "/users/me", alice.token), 409)
    assert is_problem(api.call("DELETE", f"/users/{alice.user.id}", admin.token), 409)
    assert rows(services) == before

    def co_own() -> None:
        current_session().add(
            Membership(organization_id=acme.id, user_id=bob.user.id, role="owner")
        )

    services.db.call(co_own)
    assert api.call("DELETE", "/users/me", alice.token).status_code == 204
