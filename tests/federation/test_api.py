"""`/api/v1/providers` (admin) and the identities endpoints, checked against their OpenAPI
schemas; the CLI's `providers` commands."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import respx

from authserver import api as api_module
from authserver.federation import models
from tests.conftest import API, Api, Schemas, audit_events, is_problem
from tests.federation.upstream import CLIENT_ID, CLIENT_SECRET, UPSTREAM, FakeOidc, add_provider

SCHEMAS = Schemas(api_module.OPERATIONS)


@pytest.fixture
def fake() -> Iterator[FakeOidc]:
    upstream = FakeOidc()
    with respx.mock(assert_all_called=False) as router:
        upstream.install(router)
        yield upstream


def test_an_admin_adds_lists_disables_and_deletes_a_provider(
    api: Api, admin: Any, fake: FakeOidc, services: Any
) -> None:
    body = {"kind": "oidc", "name": "Acme SSO", "issuer": UPSTREAM, "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET, "domains": ["Acme.example"], "jit": True}  # fmt: skip
    created = SCHEMAS.call(api, "POST", f"{API}/providers", admin.token, body)
    assert created["token_endpoint"] == f"{UPSTREAM}/token"
    assert created["domains"] == ["acme.example"]
    assert CLIENT_SECRET not in str(created)
    listed = SCHEMAS.call(api, "GET", f"{API}/providers", admin.token)
    assert [p["id"] for p in listed["items"]] == [created["id"]]
    path = f"{API}/providers/{{provider_id}}"
    changed = SCHEMAS.call(
        api, "PATCH", path, admin.token, {"enabled": False}, provider_id=created["id"]
    )
    assert changed["enabled"] is False
    SCHEMAS.call(api, "DELETE", path, admin.token, provider_id=created["id"])
    assert is_problem(api.call("GET", f"{API}/providers/{created['id']}", admin.token), 404)
    events = [e.event for e in audit_events(services, prefix="provider.")]
    assert events == ["provider.created", "provider.updated", "provider.deleted"]


def test_a_provider_whose_discovery_names_another_issuer_is_refused(
    api: Api, admin: Any, fake: FakeOidc
) -> None:
    fake_discovery = fake.discovery

    def lying() -> dict[str, Any]:
        return {**fake_discovery(), "issuer": "https://evil.example"}

    fake.discovery = lying  # type: ignore[method-assign]
    body = {"kind": "oidc", "name": "Acme", "issuer": UPSTREAM, "client_id": "c",
            "client_secret": "s"}  # fmt: skip
    response = api.call("POST", f"{API}/providers", admin.token, body)
    assert is_problem(response, 400)
    assert "another issuer" in response.json()["detail"]


def test_a_plain_http_issuer_is_refused_unless_a_trusted_loopback_host(
    api: Api, admin: Any
) -> None:
    body = {"kind": "oidc", "name": "Acme", "issuer": "http://idp.example", "client_id": "c",
            "client_secret": "s"}  # fmt: skip
    response = api.call("POST", f"{API}/providers", admin.token, body)
    assert is_problem(response, 400)
    assert "Only https" in response.json()["detail"]


def test_people_without_admin_cannot_manage_providers(
    api: Api, person: Any, fake: FakeOidc
) -> None:
    someone = person("someone@example.com")
    assert is_problem(api.call("GET", f"{API}/providers", someone.token), 403)


def test_a_person_reads_their_identities_and_an_admin_removes_one_except_the_last_way_in(
    api: Api, admin: Any, person: Any, fake: FakeOidc, services: Any
) -> None:
    someone = person("ann@acme.example")
    provider = add_provider(services)
    first = services.db.call(models.link, someone.user.id, provider.id, "s-1", "ann@acme.example")
    mine = SCHEMAS.call(api, "GET", f"{API}/users/me/identities", someone.token)
    assert [(i["provider_name"], i["subject"]) for i in mine["items"]] == [("Acme SSO", "s-1")]
    theirs = SCHEMAS.call(
        api, "GET", f"{API}/users/{{user_id}}/identities", admin.token, user_id=someone.user.id
    )
    assert theirs == mine
    path = f"{API}/users/{{user_id}}/identities/{{identity_id}}"
    SCHEMAS.call(api, "DELETE", path, admin.token, user_id=someone.user.id, identity_id=first.id)
    assert api.call("GET", f"{API}/users/me/identities", someone.token).json()["items"] == []

    services.db.call(lambda: setattr(_user(someone.user.id), "password_hash", None))
    last = services.db.call(models.link, someone.user.id, provider.id, "s-2", "")
    response = api.call(
        "DELETE", f"{API}/users/{someone.user.id}/identities/{last.id}", admin.token
    )
    assert is_problem(response, 409)


def _user(user_id: str) -> Any:
    from authserver.users import models as users

    return users.get(user_id)
