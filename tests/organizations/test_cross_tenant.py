"""The cross-tenant suite (docs/security.md J75-77, J80): Alice, owner of Acme, tries every
organization endpoint against Bob's Bobco and its members, by id, by enumeration, by filter,
with Bob's cursors, with other verbs and with path variants. She learns nothing (the answer
for Bobco is the answer for an id that does not exist) and changes nothing (the rows are
compared before and after)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from authserver.services import Services
from tests import factories
from tests.conftest import API, ISSUER, Api, is_problem
from tests.factories import Person
from tests.organizations.conftest import Tenant, join, rows

#: Every endpoint that names an organization; {org} and {member} are filled in per test.
ORG_ENDPOINTS = [
    ("GET", "/organizations/{org}", None),
    ("PATCH", "/organizations/{org}", {"name": "Pwned"}),
    ("DELETE", "/organizations/{org}", None),
    ("GET", "/organizations/{org}/members", None),
    ("POST", "/organizations/{org}/members", {"email": "alice@example.com", "role": "owner"}),
    ("POST", "/organizations/{org}/members", {"email": "alice@example.com"}),
    ("PATCH", "/organizations/{org}/members/{member}", {"role": "member"}),
    ("PATCH", "/organizations/{org}/members/{member}", {"role": "owner"}),
    ("DELETE", "/organizations/{org}/members/{member}", None),
]
IDS = [f"{m} {p} {b}" if b else f"{m} {p}" for m, p, b in ORG_ENDPOINTS]


@pytest.fixture
def tenants(alice: Tenant, bob: Tenant, carol: Person) -> tuple[Tenant, Tenant, Person]:
    return alice, bob, carol


def leaks(response: httpx.Response, bob: Tenant, carol: Person) -> bool:
    """Whether the body says anything about Bobco or its members."""
    text = response.text
    secrets = ("Bobco", "bob@example.com", "carol@example.com", carol.user.id, bob.user.id)
    return any(secret in text for secret in secrets)


def fill(template: str, org: str, member: str) -> str:
    return API + template.format(org=org, member=member)


@pytest.mark.parametrize(("method", "template", "body"), ORG_ENDPOINTS, ids=IDS)
@pytest.mark.parametrize("member", ["carol", "bob"])
def test_every_endpoint_on_another_organization_is_404_and_changes_nothing(
    api: Api,
    tenants: tuple[Tenant, Tenant, Person],
    services: Services,
    method: str,
    template: str,
    body: Any,
    member: str,
) -> None:
    """J75/J76: the answer for Bobco is byte for byte the answer for a made-up id."""
    alice, bob, carol = tenants
    member_id = {"carol": carol.user.id, "bob": bob.user.id}[member]
    before = rows(services)
    foreign = api.call(method, fill(template, bob.organization.id, member_id), alice.token, body)
    missing = api.call(method, fill(template, str(uuid.uuid4()), member_id), alice.token, body)
    assert is_problem(foreign, 404)
    assert foreign.json() == missing.json()
    assert not leaks(foreign, bob, carol)
    assert rows(services) == before


@pytest.mark.parametrize(("method", "template", "body"), ORG_ENDPOINTS, ids=IDS)
def test_a_plain_member_of_another_organization_is_an_outsider_here(
    api: Api,
    tenants: tuple[Tenant, Tenant, Person],
    services: Services,
    method: str,
    template: str,
    body: Any,
) -> None:
    """Carol belongs to Bobco; Acme is as invisible to her as Bobco is to Alice."""
    alice, _, carol = tenants
    before = rows(services)
    path = fill(template, alice.organization.id, alice.user.id)
    assert is_problem(api.call(method, path, carol.token, body), 404)
    assert rows(services) == before


@pytest.mark.parametrize(
    "organization_id",
    ["BOB_UPPER", str(uuid.uuid4()), "1", "0", "null", "*", "%25", "x" * 300, "' OR 1=1 --"],
)
def test_enumerated_ids_all_answer_alike(
    api: Api, tenants: tuple[Tenant, Tenant, Person], organization_id: str
) -> None:
    """J75: enumerating ids (and case variants of a real one) yields one indistinct 404."""
    alice, bob, carol = tenants
    if organization_id == "BOB_UPPER":
        organization_id = bob.organization.id.upper()
    reference = api.call("GET", f"{API}/organizations/{bob.organization.id}", alice.token)
    response = api.call("GET", f"{API}/organizations/{organization_id}", alice.token)
    assert is_problem(response, 404)
    assert response.json() == reference.json()
    members = api.call("GET", f"{API}/organizations/{organization_id}/members", alice.token)
    assert is_problem(members, 404)
    assert not leaks(members, bob, carol)


@pytest.mark.parametrize(
    "query",
    [
        "org_id={b}",
        "organization_id={b}",
        "id={b}",
        "user_id={bob}",
        "email=bob@example.com",
        "owner=bob@example.com",
        "all=true",
        "q=Bobco",
    ],
)
def test_filters_do_not_widen_my_listing(
    api: Api, tenants: tuple[Tenant, Tenant, Person], query: str
) -> None:
    """J75: a filter naming another tenant cannot pull its rows into my listing."""
    alice, bob, carol = tenants
    query = query.format(b=bob.organization.id, bob=bob.user.id)
    response = api.call("GET", f"{API}/organizations?{query}", alice.token)
    assert response.status_code == 200
    assert [o["id"] for o in response.json()["items"]] == [alice.organization.id]
    members = api.call("GET", f"{alice.org_path}/members?{query}", alice.token)
    assert [m["user_id"] for m in members.json()["items"]] == [alice.user.id]
    assert not leaks(response, bob, carol)
    assert not leaks(members, bob, carol)


def test_cursors_from_another_tenants_listing_are_refused(
    api: Api, tenants: tuple[Tenant, Tenant, Person], make: factories.Factory
) -> None:
    """J75: a cursor is bound to the listing it came from; Bob's cursors give Alice nothing."""
    alice, bob, carol = tenants
    make.organization(bob.user, name="Bobco Two")
    make.organization(alice.user, name="Acme Two")
    bobs_orgs = api.call("GET", f"{API}/organizations?page_size=1", bob.token).json()
    bobs_members = api.call("GET", f"{bob.org_path}/members?page_size=1", bob.token).json()
    assert bobs_orgs["next_cursor"]
    assert bobs_members["next_cursor"]
    attempts = [
        f"{API}/organizations?cursor={bobs_orgs['next_cursor']}",
        f"{API}/organizations?cursor={bobs_members['next_cursor']}",
        f"{alice.org_path}/members?cursor={bobs_members['next_cursor']}",
        f"{alice.org_path}/members?cursor={bobs_orgs['next_cursor']}",
    ]
    for path in attempts:
        response = api.call("GET", path, alice.token)
        assert is_problem(response, 400), path
        assert not leaks(response, bob, carol)
    response = api.call("GET", f"{bob.org_path}/members?cursor=x", alice.token)
    assert is_problem(response, 400) or is_problem(response, 404)
    with_cursor = f"{bob.org_path}/members?cursor={bobs_members['next_cursor']}"
    assert is_problem(api.call("GET", with_cursor, alice.token), 404)


@pytest.mark.parametrize("override", ["GET", "PATCH", "DELETE", "PUT"])
@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"])
def test_method_override_headers_are_ignored(
    api: Api,
    tenants: tuple[Tenant, Tenant, Person],
    services: Services,
    header: str,
    override: str,
) -> None:
    """J80: the method is the request line's, whatever a header claims."""
    alice, bob, carol = tenants
    before = rows(services)
    headers = {header: override}
    body = {"name": "Pwned"}
    assert is_problem(api.call("GET", bob.org_path, alice.token, headers=headers), 404)
    for path in (bob.org_path, f"{bob.org_path}/members/{carol.user.id}"):
        assert api.call("POST", path, alice.token, body, headers=headers).status_code == 405
    member = f"{bob.org_path}/members/{carol.user.id}"
    assert api.call("GET", member, alice.token, headers=headers).status_code == 405
    own = api.call("POST", alice.org_path, alice.token, body, headers=headers)
    assert own.status_code == 405
    readonly = api.call("GET", alice.org_path, carol.token, headers=headers)
    assert is_problem(readonly, 404)
    assert rows(services) == before


def test_head_does_not_bypass_authorization(
    app: Starlette, tenants: tuple[Tenant, Tenant, Person], services: Services
) -> None:
    """J80: HEAD answers nothing that GET would not (no 2xx for someone else's data)."""
    alice, bob, _ = tenants
    before = rows(services)
    lenient = Api(TestClient(app, base_url=ISSUER, raise_server_exceptions=False))
    for token in (alice.token, None):
        for path in (bob.org_path, f"{bob.org_path}/members"):
            response = lenient.call("HEAD", path, token)
            assert not response.is_success
            assert response.content == b""
    assert rows(services) == before


def test_head_answers_like_get(app: Starlette, tenants: tuple[Tenant, Tenant, Person]) -> None:
    alice, bob, _ = tenants
    api = Api(TestClient(app, base_url=ISSUER, raise_server_exceptions=False))
    assert api.call("HEAD", bob.org_path, alice.token).status_code == 404
    assert api.call("HEAD", alice.org_path, alice.token).status_code == 200


@pytest.mark.parametrize(
    "variant",
    [
        "{api}/organizations/{b}/",
        "{api}/organizations/{b}//",
        "{api}/Organizations/{b}",
        "{api}/ORGANIZATIONS/{b}",
        "/API/V1/organizations/{b}",
        "/Api/v1/organizations/{b}",
        "{api}//organizations/{b}",
        "{api}/organizations//{b}",
        "{api}/organizations/{b}%2F",
        "{api}/organizations/{b}%00",
        "{api}/organizations/{b};x=y",
        "{api}/organizations/{a}/../{b}",
        "{api}/organizations/{a}/%2e%2e/{b}",
        "{api}/organizations/{b}/members/",
        "{api}/organizations/{b}/Members",
        "{api}/organizations/{b}/members/{carol}/",
    ],
)
@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_path_variants_do_not_bypass_authorization(
    api: Api,
    tenants: tuple[Tenant, Tenant, Person],
    services: Services,
    variant: str,
    method: str,
) -> None:
    """J80 (cf. Keycloak path-normalisation CVEs): trailing slashes, case, doubled slashes,
    encoded separators and dot segments reach no handler that skips the check. A redirect
    to the canonical path is allowed; following it with Alice's token still ends in 404."""
    alice, bob, carol = tenants
    path = variant.format(
        api=API, a=alice.organization.id, b=bob.organization.id, carol=carol.user.id
    )
    body = {"name": "Pwned"} if method == "PATCH" else None
    before = rows(services)
    response = api.call(method, path, alice.token, body)
    assert not response.is_success, path
    assert not leaks(response, bob, carol)
    if response.is_redirect:
        location = response.headers["location"]
        followed = api.call(method, location, alice.token, body)
        assert not followed.is_success
        assert not leaks(followed, bob, carol)
    assert rows(services) == before


def test_admin_of_one_org_is_no_one_in_another(
    api: Api, tenants: tuple[Tenant, Tenant, Person], services: Services
) -> None:
    """J75: Alice's role in Acme counts for nothing in Bobco, even after Bob adds her to it
    as a plain member."""
    alice, bob, carol = tenants
    join(services, bob.organization, alice.user, "member")
    before = rows(services)
    attempts = [
        ("PATCH", bob.org_path, {"name": "Pwned"}),
        ("DELETE", bob.org_path, None),
        ("PATCH", f"{bob.org_path}/members/{alice.user.id}", {"role": "owner"}),
        ("PATCH", f"{bob.org_path}/members/{carol.user.id}", {"role": "admin"}),
        ("DELETE", f"{bob.org_path}/members/{carol.user.id}", None),
        ("POST", f"{bob.org_path}/members", {"email": "alice@example.com", "role": "owner"}),
    ]
    for method, path, body in attempts:
        assert is_problem(api.call(method, path, alice.token, body), 403), (method, path)
    assert rows(services) == before


@pytest.mark.parametrize(
    ("method", "where", "body"),
    [
        ("PATCH", "org", {"name": "Acme", "id": "{b}"}),
        ("PATCH", "org", {"name": "Acme", "role": "owner"}),
        ("PATCH", "org", {"name": "Acme", "created_at": "2000-01-01T00:00:00Z"}),
        ("POST", "orgs", {"name": "X", "owner_id": "{bob}"}),
        ("POST", "orgs", {"name": "X", "id": "{b}"}),
        ("POST", "members", {"email": "carol@example.com", "organization_id": "{b}"}),
        ("POST", "members", {"email": "carol@example.com", "user_id": "{bob}"}),
        ("PATCH", "member", {"role": "member", "organization_id": "{b}"}),
        ("PATCH", "member", {"role": "member", "user_id": "{bob}"}),
        ("PATCH", "member", {"role": "member", "email_verified": True, "is_admin": True}),
    ],
)
def test_mass_assignment_is_refused(
    api: Api,
    tenants: tuple[Tenant, Tenant, Person],
    services: Services,
    method: str,
    where: str,
    body: dict[str, Any],
) -> None:
    """J77 / ASVS 8.2.3: members the endpoint does not take are a 400, never applied."""
    alice, bob, carol = tenants
    join(services, alice.organization, carol.user, "admin")
    path = {
        "org": alice.org_path,
        "orgs": f"{API}/organizations",
        "members": f"{alice.org_path}/members",
        "member": f"{alice.org_path}/members/{carol.user.id}",
    }[where]
    body = {
        k: v.format(b=bob.organization.id, bob=bob.user.id) if isinstance(v, str) else v
        for k, v in body.items()
    }
    before = rows(services)
    assert is_problem(api.call(method, path, alice.token, body), 400)
    assert rows(services) == before
