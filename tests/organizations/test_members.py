"""Members: add by email, list, change role, remove, leave; the role rules and the last-owner
rule (SPEC §7, docs/security.md J77-78)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest

from authserver.db import current_session
from authserver.organizations import models as orgs
from authserver.services import Services
from authserver.users.models import User
from tests import factories
from tests.conftest import Api, audit_events, is_problem
from tests.factories import Person
from tests.organizations.conftest import Tenant, join, role_of, rows


def members_path(tenant: Tenant, user_id: str | None = None) -> str:
    return tenant.org_path + "/members" + (f"/{user_id}" if user_id else "")


def test_add_by_email(api: Api, alice: Tenant, bob: Tenant, services: Services) -> None:
    response = api.call(
        "POST", members_path(alice), alice.token, {"email": " BOB@example.com ", "role": "admin"}
    )
    assert response.status_code == 201
    added = response.json()
    assert added == {
        "user_id": bob.user.id,
        "email": "bob@example.com",
        "name": "Bob",
        "role": "admin",
        "created_at": added["created_at"],
    }
    assert response.headers["location"] == members_path(alice, bob.user.id)
    assert role_of(services, alice.organization, bob.user) == "admin"
    [event] = audit_events(services, "organization.member_added")
    assert event.details["user_id"] == bob.user.id
    assert event.details["role"] == "admin"
    assert "bob@example.com" not in str(event.details)


def test_add_defaults_to_member_and_refuses_duplicates(
    api: Api, alice: Tenant, bob: Tenant
) -> None:
    first = api.call("POST", members_path(alice), alice.token, {"email": "bob@example.com"})
    assert first.json()["role"] == "member"
    again = api.call("POST", members_path(alice), alice.token, {"email": "bob@example.com"})
    assert is_problem(again, 409)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"email": "nobody@example.com"}, 404),
        ({"email": "bob@example.com\x00"}, 404),
        ({"email": "x" * 400}, 404),
        ({"email": "bob@example.com", "role": "superuser"}, 400),
        ({"email": "bob@example.com", "role": None}, 400),
        ({"email": 5}, 400),
        ({}, 400),
    ],
)
def test_add_refuses(
    api: Api, alice: Tenant, bob: Tenant, services: Services, body: dict, status: int
) -> None:
    before = rows(services)
    assert is_problem(api.call("POST", members_path(alice), alice.token, body), status)
    assert rows(services) == before


def test_an_inactive_account_looks_like_no_account(
    api: Api, alice: Tenant, make: factories.Factory, services: Services
) -> None:
    inactive = make.user(email="gone@example.com")

    def deactivate() -> None:
        user = current_session().get(User, inactive.id)
        assert user is not None
        user.is_active = False

    services.db.call(deactivate)
    unknown = api.call("POST", members_path(alice), alice.token, {"email": "nobody@example.com"})
    gone = api.call("POST", members_path(alice), alice.token, {"email": "gone@example.com"})
    assert gone.status_code == unknown.status_code == 404
    assert gone.json() == unknown.json()


def test_only_an_owner_adds_an_owner(
    api: Api, bob: Tenant, alice: Tenant, carol: Person, services: Services
) -> None:
    join(services, bob.organization, alice.user, "admin")
    dave = factories.Factory(services).user(email="dave@example.com")
    before = rows(services)
    refused = api.call(
        "POST", members_path(bob), alice.token, {"email": dave.email, "role": "owner"}
    )
    assert is_problem(refused, 403)
    assert rows(services) == before
    as_admin = api.call("POST", members_path(bob), alice.token, {"email": dave.email})
    assert as_admin.status_code == 201
    erin = factories.Factory(services).user(email="erin@example.com")
    before = rows(services)
    by_member = api.call(
        "POST", members_path(bob), carol.token, {"email": erin.email, "role": "member"}
    )
    assert is_problem(by_member, 403)
    assert rows(services) == before


def test_adding_is_rate_limited(api: Api, alice: Tenant, monkeypatch) -> None:
    """Adding by email says whether an account exists; its pace is bounded."""
    from authserver.organizations import api as org_api

    monkeypatch.setattr(org_api, "MEMBER_ADDS_PER_HOUR", 2)
    for _ in range(2):
        api.call("POST", members_path(alice), alice.token, {"email": "nobody@example.com"})
    response = api.call("POST", members_path(alice), alice.token, {"email": "nobody@example.com"})
    assert is_problem(response, 429)
    assert int(response.headers["retry-after"]) > 0


def test_list_members_pages(
    api: Api, bob: Tenant, carol: Person, make: factories.Factory, services: Services
) -> None:
    for n in range(3):
        join(services, bob.organization, make.user(email=f"m{n}@example.com"), "member")
    first = api.call("GET", members_path(bob), carol.token, params={"page_size": "3"}).json()
    assert [m["email"] for m in first["items"]] == [
        "bob@example.com",
        "carol@example.com",
        "m0@example.com",
    ]
    assert first["items"][0]["role"] == "owner"
    params = {"page_size": "3", "cursor": first["next_cursor"]}
    second = api.call("GET", members_path(bob), carol.token, params=params).json()
    assert [m["email"] for m in second["items"]] == ["m1@example.com", "m2@example.com"]
    assert second["next_cursor"] is None


def test_change_role(api: Api, bob: Tenant, carol: Person, services: Services) -> None:
    path = members_path(bob, carol.user.id)
    response = api.call("PATCH", path, bob.token, {"role": "admin"})
    assert response.status_code == 200
    assert response.json()["role"] == "admin"
    assert role_of(services, bob.organization, carol.user) == "admin"
    [event] = audit_events(services, "organization.member_role_changed")
    assert (event.actor_id, event.target_id) == (bob.user.id, bob.organization.id)
    assert event.details["user_id"] == carol.user.id
    assert (event.details["role"], event.details["previous_role"]) == ("admin", "member")


def test_a_member_cannot_grant_themselves_owner(
    api: Api, bob: Tenant, carol: Person, services: Services
) -> None:
    """J77: a member can't grant self owner, by PATCH or by re-adding themselves."""
    before = rows(services)
    for role in ("owner", "admin"):
        response = api.call("PATCH", members_path(bob, carol.user.id), carol.token, {"role": role})
        assert is_problem(response, 403)
    readd = api.call(
        "POST", members_path(bob), carol.token, {"email": "carol@example.com", "role": "owner"}
    )
    assert is_problem(readd, 403)
    assert rows(services) == before


def test_an_admin_cannot_make_or_touch_owners(
    api: Api, bob: Tenant, alice: Tenant, carol: Person, services: Services
) -> None:
    join(services, bob.organization, alice.user, "admin")
    before = rows(services)
    cases = [
        ("PATCH", members_path(bob, alice.user.id), {"role": "owner"}),
        ("PATCH", members_path(bob, carol.user.id), {"role": "owner"}),
        ("PATCH", members_path(bob, bob.user.id), {"role": "member"}),
        ("DELETE", members_path(bob, bob.user.id), None),
    ]
    for method, path, body in cases:
        assert is_problem(api.call(method, path, alice.token, body), 403), (method, path, body)
    assert rows(services) == before
    ok = api.call("PATCH", members_path(bob, carol.user.id), alice.token, {"role": "admin"})
    assert ok.status_code == 200


def test_remove_and_leave(
    api: Api, bob: Tenant, alice: Tenant, carol: Person, services: Services
) -> None:
    join(services, bob.organization, alice.user, "admin")
    assert api.call("DELETE", members_path(bob, carol.user.id), alice.token).status_code == 204
    assert role_of(services, bob.organization, carol.user) is None
    assert api.call("DELETE", members_path(bob, alice.user.id), alice.token).status_code == 204
    assert role_of(services, bob.organization, alice.user) is None
    events = [
        (e.event, e.details["user_id"]) for e in audit_events(services, prefix="organization.")
    ]
    assert ("organization.member_removed", carol.user.id) in events
    assert ("organization.member_left", alice.user.id) in events


def test_a_plain_member_may_leave_but_not_remove_others(
    api: Api, bob: Tenant, carol: Person, make: factories.Factory, services: Services
) -> None:
    dave = make.user(email="dave@example.com")
    join(services, bob.organization, dave, "member")
    assert is_problem(api.call("DELETE", members_path(bob, dave.id), carol.token), 403)
    assert role_of(services, bob.organization, dave) == "member"
    assert api.call("DELETE", members_path(bob, carol.user.id), carol.token).status_code == 204


def test_removal_takes_effect_on_the_next_request(api: Api, bob: Tenant, carol: Person) -> None:
    """J78: membership is checked on every request, not carried in the token."""
    assert api.call("GET", bob.org_path, carol.token).status_code == 200
    api.call("DELETE", members_path(bob, carol.user.id), bob.token)
    assert is_problem(api.call("GET", bob.org_path, carol.token), 404)
    assert is_problem(api.call("GET", members_path(bob), carol.token), 404)


def test_unknown_member_is_404(api: Api, bob: Tenant, alice: Tenant) -> None:
    """Alice exists, but is no member of Bobco."""
    for method, body in (("PATCH", {"role": "admin"}), ("DELETE", None)):
        assert is_problem(api.call(method, members_path(bob, alice.user.id), bob.token, body), 404)


# -- the last owner -------------------------------------------------------------------------


def test_the_last_owner_cannot_leave_be_removed_or_demoted(
    api: Api, bob: Tenant, admin: Person, services: Services
) -> None:
    """SPEC §7 / J77: 409 whoever asks, the owner or an administrator."""
    before = rows(services)
    path = members_path(bob, bob.user.id)
    for token in (bob.token, admin.token):
        assert is_problem(api.call("DELETE", path, token), 409)
        for role in ("admin", "member"):
            assert is_problem(api.call("PATCH", path, token, {"role": role}), 409)
    assert rows(services) == before


def test_an_owner_may_leave_when_another_remains(
    api: Api, bob: Tenant, alice: Tenant, services: Services
) -> None:
    join(services, bob.organization, alice.user, "owner")
    assert api.call(
        "PATCH", members_path(bob, alice.user.id), bob.token, {"role": "admin"}
    ).is_success
    assert api.call(
        "PATCH", members_path(bob, alice.user.id), bob.token, {"role": "owner"}
    ).is_success
    assert api.call("DELETE", members_path(bob, bob.user.id), bob.token).status_code == 204
    assert is_problem(api.call("DELETE", members_path(bob, alice.user.id), alice.token), 409)


def race(*requests: Callable[[], httpx.Response]) -> list[int]:
    """Run the requests at the same moment on threads; their statuses, in order."""
    barrier = threading.Barrier(len(requests))
    statuses: list[int] = [0] * len(requests)

    def run(index: int, request: Callable[[], httpx.Response]) -> None:
        barrier.wait()
        statuses[index] = request().status_code

    threads = [threading.Thread(target=run, args=item) for item in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def owners(services: Services, tenant: Tenant) -> list[str]:
    return [
        user
        for org, user, role in rows(services)["memberships"]
        if org == tenant.organization.id and role == "owner"
    ]


@pytest.mark.parametrize("round_", range(5))
def test_concurrent_demotion_of_two_owners_leaves_one(
    api: Api, bob: Tenant, alice: Tenant, admin: Person, services: Services, round_: int
) -> None:
    """Two owners demoted at once by an administrator: the last-owner check runs under a lock
    on the owner rows in the same transaction as the change, so one demotion wins, the
    other gets 409, and an owner remains."""
    join(services, bob.organization, alice.user, "owner")
    statuses = race(
        *(
            lambda user=user: api.call(
                "PATCH", members_path(bob, user.id), admin.token, {"role": "member"}
            )
            for user in (alice.user, bob.user)
        )
    )
    assert sorted(statuses) == [200, 409]
    assert len(owners(services, bob)) == 1


@pytest.mark.parametrize("round_", range(5))
def test_two_owners_leaving_at_once_leave_one(
    api: Api, bob: Tenant, alice: Tenant, services: Services, round_: int
) -> None:
    join(services, bob.organization, alice.user, "owner")
    statuses = race(
        lambda: api.call("DELETE", members_path(bob, alice.user.id), alice.token),
        lambda: api.call("DELETE", members_path(bob, bob.user.id), bob.token),
    )
    assert sorted(statuses) == [204, 409]
    assert len(owners(services, bob)) == 1


def test_two_owners_demoting_each_other_leave_one(
    api: Api, bob: Tenant, alice: Tenant, services: Services
) -> None:
    """The loser is either refused as no longer an owner (403) or as the last owner (409)."""
    join(services, bob.organization, alice.user, "owner")
    statuses = race(
        lambda: api.call("PATCH", members_path(bob, bob.user.id), alice.token, {"role": "member"}),
        lambda: api.call("PATCH", members_path(bob, alice.user.id), bob.token, {"role": "member"}),
    )
    assert 200 in statuses
    assert set(statuses) - {200} <= {403, 409}
    assert len(owners(services, bob)) == 1


def test_member_tokens_need_the_write_scope(
    api: Api, bob: Tenant, carol: Person, tokens: factories.TokenFactory, services: Services
) -> None:
    read_only = tokens.access_token(bob.user, "organizations:read").token
    response = api.call("PATCH", members_path(bob, carol.user.id), read_only, {"role": "admin"})
    assert is_problem(response, 403)
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert role_of(services, bob.organization, carol.user) == "member"


def test_solely_owned_names_what_an_account_deletion_would_orphan(
    alice: Tenant, bob: Tenant, carol: Person, make: factories.Factory, services: Services
) -> None:
    """For the account deletion paths: Bob alone owns Bobco; once Alice co-owns it, only
    his other organization is his alone. Carol, a member, owns nothing."""
    solo = make.organization(bob.user, name="Solo")
    join(services, bob.organization, alice.user, "owner")
    assert services.db.call(orgs.solely_owned, bob.user.id) == [solo.id]
    assert services.db.call(orgs.solely_owned, alice.user.id) == [alice.organization.id]
    assert services.db.call(orgs.solely_owned, carol.user.id) == []
