"""`/api/v1/audit`: what administrators read about security events and changes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from authserver import audit
from authserver.db import current_session, utcnow
from authserver.services import Services
from tests import factories
from tests.conftest import Api, is_problem
from tests.factories import Person

EVENT_KEYS = {
    "id", "at", "event", "outcome", "actor_type", "actor_id", "ip", "target_type",
    "target_id", "details",
}  # fmt: skip


@pytest.fixture
def recorded(services: Services) -> Callable[..., None]:
    """Add events at chosen times, oldest first."""

    def add(*specs: tuple[str, str, str]) -> None:
        def write() -> None:
            start = utcnow() - timedelta(hours=1)
            for offset, (event, actor, target) in enumerate(specs):
                entry = audit.record(event, actor_type="user", actor_id=actor, target_id=target)
                entry.at = start + timedelta(seconds=offset)
            current_session().flush()

        services.db.call(write)

    return add


def test_newest_first_in_pages(api: Api, admin: Person, recorded: Callable[..., None]) -> None:
    recorded(*[(f"test.e{i}", "a", "t") for i in range(5)])
    seen: list[str] = []
    cursor = None
    while True:
        query = "?page_size=2" + (f"&cursor={cursor}" if cursor else "")
        page = api.call("GET", "/audit" + query, admin.token).json()
        assert all(set(item) == EVENT_KEYS for item in page["items"])
        seen += [item["event"] for item in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == [f"test.e{i}" for i in reversed(range(5))]


def test_filters(api: Api, admin: Person, recorded: Callable[..., None]) -> None:
    recorded(
        ("login.failed", "u1", "u1"), ("user.updated", "u2", "u1"), ("login.failed", "u3", "u3")
    )

    def events(query: str) -> list[tuple[str, str]]:
        items = api.call("GET", "/audit" + query, admin.token).json()["items"]
        return [(item["event"], item["actor_id"]) for item in items]

    assert events("?event=login.failed") == [("login.failed", "u3"), ("login.failed", "u1")]
    assert events("?actor_id=u2") == [("user.updated", "u2")]
    assert events("?target_id=u1") == [("user.updated", "u2"), ("login.failed", "u1")]
    assert events("?event=login.failed&target_id=u1") == [("login.failed", "u1")]
    assert events("?event=nothing") == []


@pytest.mark.parametrize("query", ["?event=" + "e" * 65, "?actor_id=a%00", "?cursor=nope"])
def test_bad_queries_are_400(api: Api, admin: Person, query: str) -> None:
    assert is_problem(api.call("GET", "/audit" + query, admin.token), 400)


def test_a_cursor_from_another_listing_is_refused(
    api: Api, admin: Person, make: factories.Factory
) -> None:
    for i in range(3):
        make.user(email=f"u{i}@example.com")
    cursor = api.call("GET", "/users?page_size=1", admin.token).json()["next_cursor"]
    assert is_problem(api.call("GET", f"/audit?cursor={cursor}", admin.token), 400)


def test_changes_made_through_the_api_are_audited_without_secrets(
    api: Api, admin: Person, alice: Person
) -> None:
    """ASVS 16.3: who, from where, on what, and when; never the password."""
    api.call("POST", "/users", admin.token, {"email": "n@example.com", "password": "sekrit-123"})
    body = {"current_password": "wrong-password", "new_password": "another-sekrit"}
    api.call("POST", "/users/me/password", alice.token, body)
    response = api.call("GET", "/audit", admin.token)
    assert "sekrit" not in response.text
    assert "wrong-password" not in response.text
    by_event = {item["event"]: item for item in response.json()["items"]}
    created = by_event["user.created"]
    assert (created["actor_type"], created["actor_id"]) == ("user", admin.user.id)
    assert created["ip"] == "testclient"
    assert by_event["password.changed"]["outcome"] == "failure"


def test_people_without_admin_get_403(api: Api, alice: Person) -> None:
    assert is_problem(api.call("GET", "/audit", alice.token), 403)
