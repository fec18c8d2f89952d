"""`/api/v1/consents`: the applications I allowed, and taking that back (ASVS 10.4.9, 10.7.3)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from authserver.audit import AuditEvent
from authserver.db import current_session
from authserver.oauth import consent
from authserver.services import Services
from tests.api.conftest import Grant, introspect, refresh, rows, token_is_live
from tests.conftest import Api, is_problem
from tests.factories import Person

CONSENT_KEYS = {"id", "client_id", "client_name", "scopes", "created_at", "updated_at"}


def test_list_my_consents(
    api: Api, alice: Person, bob: Person, grant: Callable[..., Grant]
) -> None:
    first = grant(alice.user, "openid profile")
    second = grant(alice.user, "openid email")
    grant(bob.user)
    response = api.call("GET", "/consents", alice.token)
    assert response.status_code == 200
    items = response.json()["items"]
    assert [item["id"] for item in items] == [first.consent_id, second.consent_id]
    assert all(set(item) == CONSENT_KEYS for item in items)
    assert items[0]["client_id"] == first.client.id
    assert items[0]["client_name"] == "Example App"
    assert items[0]["scopes"] == ["openid", "profile"]


def test_list_consents_in_pages(api: Api, alice: Person, grant: Callable[..., Grant]) -> None:
    made = [grant(alice.user).consent_id for _ in range(3)]
    first = api.call("GET", "/consents?page_size=2", alice.token).json()
    second = api.call(
        "GET", f"/consents?page_size=2&cursor={first['next_cursor']}", alice.token
    ).json()
    assert [i["id"] for i in first["items"] + second["items"]] == made
    assert second["next_cursor"] is None


def test_revoking_a_consent_ends_what_it_granted(
    api: Api, alice: Person, grant: Callable[..., Grant], services: Services
) -> None:
    """Forgotten, so the next authorization asks again; every token family of that person
    and client revoked, offline ones too: refresh fails, access tokens introspect inactive.
    Other applications keep theirs."""
    revoked = grant(alice.user, offline=True)
    kept = grant(alice.user)
    assert refresh(api.client, revoked).status_code == 200
    response = api.call("DELETE", f"/consents/{revoked.consent_id}", alice.token)
    assert response.status_code == 204
    assert services.db.call(consent.find, alice.user.id, revoked.client.id) is None
    assert refresh(api.client, revoked).status_code == 400
    assert not introspect(api.client, revoked, revoked.issued.token)
    assert not token_is_live(services, revoked.issued)
    assert token_is_live(services, kept.issued)
    assert refresh(api.client, kept).status_code == 200
    assert [item["id"] for item in api.call("GET", "/consents", alice.token).json()["items"]] == [
        kept.consent_id
    ]

    def audit() -> AuditEvent:
        query = select(AuditEvent).where(AuditEvent.event == "consent.revoked")
        return current_session().scalars(query).one()

    event = services.db.call(audit)
    assert (event.actor_id, event.target_id) == (alice.user.id, revoked.consent_id)
    assert event.details["token_families_revoked"] == 1


def test_an_unknown_or_revoked_consent_is_404(
    api: Api, alice: Person, grant: Callable[..., Grant], services: Services
) -> None:
    given = grant(alice.user)
    assert api.call("DELETE", f"/consents/{given.consent_id}", alice.token).status_code == 204
    before = rows(services)
    for consent_id in (given.consent_id, "no-such-consent", "%00"):
        assert is_problem(api.call("DELETE", f"/consents/{consent_id}", alice.token), 404)
    assert rows(services) == before
