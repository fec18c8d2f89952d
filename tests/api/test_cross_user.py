"""docs/security.md J75-J80 for the identity API: a second person, and every operation tried
across people, through every verb and path variant. Nothing leaks, nothing changes.

Mirrors the conformance suite's `run-security-tests.py` pattern: Bob has everything Alice
has (a session, a browser session, an application grant, a consent); Alice then reads,
writes, filters and pages with Bob's ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from authserver.services import Services
from tests.api.conftest import Grant, rows
from tests.conftest import API, ISSUER, Api, is_problem
from tests.factories import Person


@dataclass
class Victim:
    person: Person
    grant: Grant

    @property
    def user_id(self) -> str:
        return self.person.user.id

    @property
    def session_id(self) -> str:
        assert self.person.issued.session_id is not None
        return self.person.issued.session_id

    @property
    def consent_id(self) -> str:
        return self.grant.consent_id


@pytest.fixture
def victim(bob: Person, grant: Callable[..., Grant]) -> Victim:
    return Victim(bob, grant(bob.user))


@pytest.fixture
def lenient(app: Starlette) -> Iterator[TestClient]:
    """A client that reports a server error as a response instead of raising it."""
    with TestClient(
        app, base_url=ISSUER, raise_server_exceptions=False, follow_redirects=False
    ) as client:
        yield client


def ids_in(response: httpx.Response) -> set[str]:
    return {item["id"] for item in response.json()["items"]}


def test_lists_show_only_my_rows(
    api: Api, alice: Person, victim: Victim, grant: Callable[..., Grant]
) -> None:
    """J75/J79: mine, and none of Bob's, in every listing a person can read."""
    mine = grant(alice.user)
    sessions = api.call("GET", "/sessions", alice.token)
    assert victim.session_id not in ids_in(sessions)
    assert victim.grant.issued.session_id not in ids_in(sessions)
    assert ids_in(api.call("GET", "/consents", alice.token)) == {mine.consent_id}
    assert api.call("GET", "/users/me", alice.token).json()["id"] == alice.user.id


def test_bobs_ids_answer_404_like_unknown_ones(
    api: Api, alice: Person, victim: Victim, services: Services
) -> None:
    """J75/J76: ending Bob's session or revoking Bob's consent with Alice's token is a 404
    with the same body as for an id that does not exist, and changes nothing."""
    before = rows(services)
    for kind, real in (("sessions", victim.session_id), ("consents", victim.consent_id)):
        foreign = api.call("DELETE", f"/{kind}/{real}", alice.token)
        unknown = api.call("DELETE", f"/{kind}/00000000-0000-0000-0000-000000000000", alice.token)
        assert is_problem(foreign, 404)
        assert foreign.json() == unknown.json()
    assert rows(services) == before


@pytest.mark.parametrize(
    ("method", "template", "body"),
    [
        ("GET", "/users/{user}", None),
        ("PATCH", "/users/{user}", {"name": "Pwned"}),
        ("PATCH", "/users/{user}", {"is_admin": True}),
        ("DELETE", "/users/{user}", None),
        ("POST", "/users/{user}/deactivate", None),
        ("GET", "/users/{user}/sessions", None),
        ("DELETE", "/users/{user}/sessions/{session}", None),
        ("GET", "/users?email=bob@example.com", None),
        ("GET", "/users", None),
        ("POST", "/users", {"email": "sock@example.com", "is_admin": True}),
        ("GET", "/audit?target_id={user}", None),
        ("PATCH", "/users/{self}", {"is_admin": True}),
    ],
)
def test_admin_operations_are_403_for_people(
    api: Api,
    alice: Person,
    victim: Victim,
    services: Services,
    method: str,
    template: str,
    body: dict[str, object] | None,
) -> None:
    """J74/J76: not an administrator → 403 whatever the target, nothing changed; Alice
    cannot make herself an admin either."""
    path = template.format(user=victim.user_id, session=victim.session_id, self=alice.user.id)
    before = rows(services)
    assert is_problem(api.call(method, path, alice.token, body), 403)
    assert rows(services) == before


def test_a_cursor_from_bobs_listing_is_refused(
    api: Api, alice: Person, victim: Victim, grant: Callable[..., Grant]
) -> None:
    """J75: Bob's cursors are his listing's; in Alice's they are a 400, never Bob's rows."""
    for _ in range(2):
        grant(victim.person.user)
    for kind in ("sessions", "consents"):
        page = api.call("GET", f"/{kind}?page_size=1", victim.person.token).json()
        assert page["next_cursor"] is not None
        response = api.call("GET", f"/{kind}?cursor={page['next_cursor']}", alice.token)
        assert is_problem(response, 400)


@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"])
def test_method_override_headers_are_ignored(
    api: Api, alice: Person, victim: Victim, services: Services, header: str
) -> None:
    """J80: the method is the request line's, whatever a header claims."""
    before = rows(services)
    listed = api.call("GET", "/sessions", alice.token, headers={header: "DELETE"})
    assert listed.status_code == 200
    assert victim.session_id not in ids_in(listed)
    for path in (f"/sessions/{victim.session_id}", f"/consents/{victim.consent_id}"):
        response = api.call("POST", path, alice.token, headers={header: "DELETE"})
        assert is_problem(response, 405)
        response = api.call("GET", path, alice.token, headers={header: "DELETE"})
        assert is_problem(response, 405)
    me = api.call("GET", "/users/me", alice.token, headers={header: "DELETE"})
    assert me.status_code == 200
    response = api.call("GET", f"/users/{victim.user_id}", alice.token, headers={header: "PATCH"})
    assert is_problem(response, 403)
    assert rows(services) == before


@pytest.mark.parametrize(
    "template",
    ["/users/{user}", "/users/{user}/sessions", "/audit", "/users", "/sessions", "/consents",
     "/users/me"],
)  # fmt: skip
def test_head_answers_like_get_and_no_further(
    api: Api, alice: Person, victim: Victim, services: Services, template: str
) -> None:
    """J80: HEAD (which Starlette adds to every GET route) gets GET's status, so it passes
    exactly the checks GET passes: none without a token, none for someone else's data; and
    it carries no body."""
    before = rows(services)
    path = API + template.format(user=victim.user_id)
    for headers in ({}, {"Authorization": f"Bearer {alice.token}"}):
        head = api.client.head(path, headers=headers)
        get = api.client.get(path, headers=headers)
        assert head.status_code == get.status_code
        assert head.content == b""
        if template not in ("/sessions", "/consents", "/users/me") or not headers:
            assert not head.is_success
    assert rows(services) == before


@pytest.mark.parametrize(
    "path",
    [
        "/API/V1/sessions/{session}",
        "/api/v1/Sessions/{session}",
        "/api/v1/SESSIONS/{session}",
        "/api/v1//sessions/{session}",
        "/api/v1/sessions/{session}/.",
        "/api/v1/sessions/./{session}",
        "/api/v1/sessions/%2e%2e/sessions/{session}",
        "/api/v1/sessions/{session}%00",
        "/api/v1/sessions/{session}%2F",
        "/api/v2/sessions/{session}",
        "/api/sessions/{session}",
    ],
)
def test_path_variants_reach_nothing(
    lenient: TestClient, alice: Person, victim: Victim, services: Services, path: str
) -> None:
    """J80 (cf. Keycloak CVE-2026-15573): case, doubled or encoded separators and dot
    segments never reach Bob's session; nothing ends."""
    before = rows(services)
    url = ISSUER + path.format(session=victim.session_id)
    response = lenient.delete(url, headers={"Authorization": f"Bearer {alice.token}"})
    assert not response.is_success
    assert response.status_code < 500
    assert rows(services) == before


def test_a_trailing_slash_redirects_to_the_one_route(
    lenient: TestClient, alice: Person, victim: Victim, services: Services
) -> None:
    """J80: `/sessions/<id>/` is redirected to `/sessions/<id>` (same origin), where the
    same rule answers 404; the redirect itself does nothing."""
    before = rows(services)
    headers = {"Authorization": f"Bearer {alice.token}"}
    url = f"{API}/sessions/{victim.session_id}/"
    response = lenient.delete(url, headers=headers)
    assert response.status_code in {307, 308}
    assert response.headers["location"] == f"{ISSUER}{API}/sessions/{victim.session_id}"
    followed = lenient.delete(response.headers["location"], headers=headers)
    assert is_problem(followed, 404)
    anonymous = lenient.get(f"{API}/users/me/", follow_redirects=True)
    assert is_problem(anonymous, 401)
    assert rows(services) == before
