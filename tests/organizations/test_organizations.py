"""Organizations: create, list mine, read, rename, delete (SPEC §7)."""

from __future__ import annotations

import pytest

from authserver.db import current_session
from authserver.services import Services
from authserver.users.models import User
from tests import factories
from tests.conftest import API, Api, audit_events, is_problem
from tests.factories import Person
from tests.organizations.conftest import SCOPES, Tenant, join, role_of, rows


def test_create_makes_the_creator_owner(api: Api, alice: Tenant, services: Services) -> None:
    response = api.call("POST", f"{API}/organizations", alice.token, {"name": "  Beta Corp "})
    assert response.status_code == 201
    created = response.json()
    assert created["name"] == "Beta Corp"
    assert created["role"] == "owner"
    assert set(created) == {"id", "name", "role", "created_at", "updated_at"}
    assert response.headers["location"] == f"{API}/organizations/{created['id']}"
    assert api.call("GET", response.headers["location"], alice.token).json() == created
    [event] = [
        e for e in audit_events(services, prefix="organization.") if e.target_id == created["id"]
    ]
    assert (event.event, event.actor_type, event.actor_id) == (
        "organization.created",
        "user",
        alice.user.id,
    )


@pytest.mark.parametrize(
    "body", [{"name": ""}, {"name": "   "}, {"name": "x" * 201}, {"name": "a\x00b"}, {}, []]
)
def test_create_refuses_bad_names(api: Api, alice: Tenant, services: Services, body) -> None:
    before = rows(services)
    response = api.call("POST", f"{API}/organizations", alice.token, body)
    assert is_problem(response, 400)
    assert rows(services) == before


def test_create_needs_a_json_body(api: Api, alice: Tenant) -> None:
    response = api.call("POST", f"{API}/organizations", alice.token, data={"name": "x"})
    assert is_problem(response, 415)


def test_list_shows_mine_with_my_role(
    api: Api, alice: Tenant, bob: Tenant, carol: Person, services: Services
) -> None:
    join(services, bob.organization, alice.user, "admin")
    response = api.call("GET", f"{API}/organizations", alice.token)
    assert response.status_code == 200
    body = response.json()
    assert body["next_cursor"] is None
    assert [(o["name"], o["role"]) for o in body["items"]] == [
        ("Acme", "owner"),
        ("Bobco", "admin"),
    ]
    carols = api.call("GET", f"{API}/organizations", carol.token).json()["items"]
    assert [(o["id"], o["role"]) for o in carols] == [(bob.organization.id, "member")]


def test_list_pages_with_cursors(
    api: Api, alice: Tenant, make: factories.Factory, services: Services
) -> None:
    for n in range(4):
        make.organization(alice.user, name=f"Org {n}")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"page_size": "2", **({"cursor": cursor} if cursor else {})}
        body = api.call("GET", f"{API}/organizations", alice.token, params=params).json()
        seen += [o["name"] for o in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == ["Acme", "Org 0", "Org 1", "Org 2", "Org 3"]


@pytest.mark.parametrize("query", ["page_size=0", "page_size=201", "page_size=x", "cursor=junk"])
def test_list_refuses_bad_paging(api: Api, alice: Tenant, query: str) -> None:
    assert is_problem(api.call("GET", f"{API}/organizations?{query}", alice.token), 400)


def test_read_as_member(api: Api, bob: Tenant, carol: Person) -> None:
    response = api.call("GET", bob.org_path, carol.token)
    assert response.status_code == 200
    assert response.json()["role"] == "member"
    assert response.json()["name"] == "Bobco"


def test_rename_by_owner_and_admin(
    api: Api, bob: Tenant, carol: Person, alice: Tenant, services: Services
) -> None:
    response = api.call("PATCH", bob.org_path, bob.token, {"name": "Bobco Ltd"})
    assert response.status_code == 200
    assert response.json()["name"] == "Bobco Ltd"
    join(services, bob.organization, alice.user, "admin")
    response = api.call("PATCH", bob.org_path, alice.token, {"name": "Bobco Inc"})
    assert response.status_code == 200
    assert response.json()["role"] == "admin"
    events = [e.event for e in audit_events(services, prefix="organization.")]
    assert events.count("organization.updated") == 2


def test_a_member_cannot_rename(api: Api, bob: Tenant, carol: Person, services: Services) -> None:
    before = rows(services)
    response = api.call("PATCH", bob.org_path, carol.token, {"name": "Carolco"})
    assert is_problem(response, 403)
    assert rows(services) == before


def test_delete_is_for_owners(
    api: Api, bob: Tenant, carol: Person, alice: Tenant, services: Services
) -> None:
    join(services, bob.organization, alice.user, "admin")
    before = rows(services)
    assert is_problem(api.call("DELETE", bob.org_path, carol.token), 403)
    assert is_problem(api.call("DELETE", bob.org_path, alice.token), 403)
    assert rows(services) == before
    response = api.call("DELETE", bob.org_path, bob.token)
    assert response.status_code == 204
    assert response.content == b""
    assert is_problem(api.call("GET", bob.org_path, bob.token), 404)
    assert role_of(services, bob.organization, carol.user) is None
    assert "organization.deleted" in [
        e.event for e in audit_events(services, prefix="organization.")
    ]


def test_an_administrator_acts_on_any_organization(
    api: Api, bob: Tenant, admin: Person, services: Services
) -> None:
    """SPEC §7: a token with the `admin` scope may act on all; the admin is not a member."""
    response = api.call("GET", bob.org_path, admin.token)
    assert response.status_code == 200
    assert response.json()["role"] is None
    assert api.call("PATCH", bob.org_path, admin.token, {"name": "Renamed"}).status_code == 200
    assert api.call("DELETE", bob.org_path, admin.token).status_code == 204
    deleted = audit_events(services, "organization.deleted")
    assert deleted[0].actor_id == admin.user.id


def test_a_demoted_administrator_loses_the_power_at_once(
    api: Api, bob: Tenant, admin: Person, make: factories.Factory, services: Services
) -> None:
    """J78: the `admin` scope counts only while its person is still an administrator: the
    next request's token no longer carries it."""
    assert api.call("GET", bob.org_path, admin.token).status_code == 200
    make.user(email="other-root@example.com", is_admin=True)

    def demote() -> None:
        user = current_session().get(User, admin.user.id)
        assert user is not None
        user.is_admin = False

    services.db.call(demote)
    before = rows(services)
    assert is_problem(api.call("GET", bob.org_path, admin.token), 403)
    assert is_problem(api.call("PATCH", bob.org_path, admin.token, {"name": "Mine"}), 403)
    assert rows(services) == before


def test_an_administrator_without_a_user_cannot_list_or_create_mine(
    api: Api, tokens: factories.TokenFactory, services: Services
) -> None:
    """J74: `GET /organizations` and `POST` are about the signed-in user; a client alone
    (client_credentials) has none, so it is refused even with `admin`."""
    token = tokens.access_token(None, "admin " + SCOPES).token
    before = rows(services)
    assert is_problem(api.call("GET", f"{API}/organizations", token), 403)
    assert is_problem(api.call("POST", f"{API}/organizations", token, {"name": "x"}), 403)
    assert rows(services) == before
