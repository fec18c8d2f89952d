"""Every organization endpoint refuses unusable tokens (docs/security.md J74): none → 401 with a
bare challenge, an ID token or a token for another audience → 401 `invalid_token`, a
missing scope → 403 `insufficient_scope`, a client acting alone → 403. Always problem+json,
and nothing changes."""

from __future__ import annotations

from typing import Any

import pytest

from authserver.services import Services
from tests import factories
from tests.conftest import API, API_CHALLENGE, Api, is_problem
from tests.factories import Person
from tests.organizations.conftest import SCOPES, Tenant, rows

#: (method, path, body, scope it needs); {org} is Bobco, {member} is Carol.
ENDPOINTS = [
    ("GET", "/organizations", None, "organizations:read"),
    ("POST", "/organizations", {"name": "New"}, "organizations:write"),
    ("GET", "/organizations/{org}", None, "organizations:read"),
    ("PATCH", "/organizations/{org}", {"name": "Renamed"}, "organizations:write"),
    ("DELETE", "/organizations/{org}", None, "organizations:write"),
    ("GET", "/organizations/{org}/members", None, "organizations:read"),
    ("POST", "/organizations/{org}/members", {"email": "alice@example.com"}, "organizations:write"),
    ("PATCH", "/organizations/{org}/members/{member}", {"role": "admin"}, "organizations:write"),
    ("DELETE", "/organizations/{org}/members/{member}", None, "organizations:write"),
]
IDS = [f"{method} {path}" for method, path, _, _ in ENDPOINTS]


def path_of(template: str, bob: Tenant, carol: Person) -> str:
    return API + template.format(org=bob.organization.id, member=carol.user.id)


@pytest.fixture
def everyone(alice: Tenant, bob: Tenant, carol: Person) -> tuple[Tenant, Person]:
    return bob, carol


@pytest.mark.parametrize(("method", "template", "body", "scope"), ENDPOINTS, ids=IDS)
def test_the_owner_succeeds(
    api: Api, everyone: tuple[Tenant, Person], method: str, template: str, body: Any, scope: str
) -> None:
    bob, carol = everyone
    response = api.call(method, path_of(template, bob, carol), bob.token, body)
    assert response.is_success, response.text


@pytest.mark.parametrize(("method", "template", "body", "scope"), ENDPOINTS, ids=IDS)
def test_no_token_is_401(
    api: Api,
    everyone: tuple[Tenant, Person],
    services: Services,
    method: str,
    template: str,
    body: Any,
    scope: str,
) -> None:
    bob, carol = everyone
    before = rows(services)
    response = api.call(method, path_of(template, bob, carol), None, body)
    assert is_problem(response, 401)
    assert response.headers["www-authenticate"] == API_CHALLENGE
    assert rows(services) == before


@pytest.mark.parametrize("variant", ["id_token", "other_audience", "expired"])
@pytest.mark.parametrize(("method", "template", "body", "scope"), ENDPOINTS, ids=IDS)
def test_unusable_tokens_are_401(
    api: Api,
    everyone: tuple[Tenant, Person],
    tokens: factories.TokenFactory,
    services: Services,
    variant: str,
    method: str,
    template: str,
    body: Any,
    scope: str,
) -> None:
    """J74 / ASVS 10.3.1, 9.2.3: an ID token (`typ` JWT) or an access token meant for another
    resource is not a key to this API, even when signed by us for the same user."""
    bob, carol = everyone
    kwargs = {
        "id_token": {"typ": "JWT"},
        "other_audience": {"audience": "https://other.example.com/api"},
        "expired": {"ttl": -30},
    }[variant]
    token = tokens.access_token(bob.user, SCOPES, **kwargs).token
    before = rows(services)
    response = api.call(method, path_of(template, bob, carol), token, body)
    assert is_problem(response, 401)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert rows(services) == before


@pytest.mark.parametrize(("method", "template", "body", "scope"), ENDPOINTS, ids=IDS)
def test_a_missing_scope_is_403(
    api: Api,
    everyone: tuple[Tenant, Person],
    tokens: factories.TokenFactory,
    services: Services,
    method: str,
    template: str,
    body: Any,
    scope: str,
) -> None:
    bob, carol = everyone
    other = "openid profile" if scope == "organizations:read" else "openid organizations:read"
    token = tokens.access_token(bob.user, other).token
    before = rows(services)
    response = api.call(method, path_of(template, bob, carol), token, body)
    assert is_problem(response, 403)
    assert f'scope="{scope}' in response.headers["www-authenticate"]
    assert rows(services) == before


@pytest.mark.parametrize(("method", "template", "body", "scope"), ENDPOINTS, ids=IDS)
def test_a_client_without_a_user_is_403(
    api: Api,
    everyone: tuple[Tenant, Person],
    tokens: factories.TokenFactory,
    services: Services,
    method: str,
    template: str,
    body: Any,
    scope: str,
) -> None:
    """J74: a client_credentials token has no user to be a member, and `admin` in it
    speaks for no administrator."""
    bob, carol = everyone
    token = tokens.access_token(None, "admin " + SCOPES).token
    before = rows(services)
    assert is_problem(api.call(method, path_of(template, bob, carol), token, body), 403)
    assert rows(services) == before


def test_a_token_in_the_query_string_is_not_read(api: Api, bob: Tenant) -> None:
    """RFC 6750 §2.3 is not offered: tokens in URLs end up in logs."""
    response = api.call("GET", bob.org_path, params={"access_token": bob.token})
    assert is_problem(response, 401)
