"""The linking rules: who an upstream sign-in becomes here, with the account-takeover routes
closed, and the last way in kept. docs/security.md N104, N105."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import respx
from sqlalchemy import select
from starlette.testclient import TestClient

from authserver.db import current_session
from authserver.federation.models import LinkedIdentity
from authserver.users import models as users
from tests.conftest import audit_events, csrf_token, sessions_of, sign_in_by_form, update_user
from tests.federation.upstream import FakeOidc, add_provider, begin, finish


@pytest.fixture
def fake() -> Iterator[FakeOidc]:
    upstream = FakeOidc()
    with respx.mock(assert_all_called=False) as router:
        upstream.install(router)
        yield upstream


def links_of(services: Any, user_id: str) -> list[LinkedIdentity]:
    return services.db.call(
        lambda: list(
            current_session().scalars(
                select(LinkedIdentity).where(LinkedIdentity.user_id == user_id)
            )
        )
    )


def sign_in_upstream(client: TestClient, fake: FakeOidc, provider_id: str) -> Any:
    return finish(client, begin(client, provider_id, fake))


def test_an_unverified_upstream_email_never_links_to_an_existing_account(
    client: TestClient, fake: FakeOidc, services: Any, make: Any
) -> None:
    victim = make.user(email="ann@acme.example")
    provider = add_provider(
        services, domains=["acme.example"], trust_verified_emails=True, jit=True
    )
    fake.email_verified = False
    response = sign_in_upstream(client, fake, provider.id)
    assert response.status_code == 403
    assert "Sign in with your password, then link Acme SSO" in response.text
    assert links_of(services, victim.id) == []
    assert sessions_of(services, victim.id) == []
    [failure] = audit_events(services, "login.failed")
    assert failure.details["reason"] == "link_requires_sign_in"


def test_a_verified_email_from_a_provider_not_authoritative_for_its_domain_does_not_link(
    client: TestClient, fake: FakeOidc, services: Any, make: Any
) -> None:
    victim = make.user(email="ann@acme.example")
    provider = add_provider(services, domains=["other.example"], jit=True)
    response = sign_in_upstream(client, fake, provider.id)
    assert response.status_code == 403
    assert links_of(services, victim.id) == []
    assert sessions_of(services, victim.id) == []


def test_a_verified_email_in_an_authoritative_domain_links_the_existing_account(
    client: TestClient, fake: FakeOidc, services: Any, make: Any
) -> None:
    fake.email = "\uff21nn@ACME.example"  # a fullwidth A: NFKC makes it A
    existing = make.user(email="ann@acme.example")
    provider = add_provider(services, domains=["acme.example"])
    assert sign_in_upstream(client, fake, provider.id).status_code == 303
    [link] = links_of(services, existing.id)
    assert link.subject == "upstream-1"
    [session] = sessions_of(services, existing.id)
    assert session.amr.split()[0] == "fed"
    [linked] = audit_events(services, "identity.linked")
    assert linked.details["reason"] == "verified_email"


def test_the_operator_may_trust_a_providers_verified_emails_for_any_domain(
    client: TestClient, fake: FakeOidc, services: Any, make: Any
) -> None:
    existing = make.user(email="ann@acme.example")
    provider = add_provider(services, trust_verified_emails=True)
    assert sign_in_upstream(client, fake, provider.id).status_code == 303
    assert len(links_of(services, existing.id)) == 1


def test_a_linked_subject_signs_in_after_the_person_changes_their_email_here(
    client: TestClient, fake: FakeOidc, services: Any, make: Any
) -> None:
    person = make.user(email="ann@acme.example")
    provider = add_provider(services, domains=["acme.example"])
    assert sign_in_upstream(client, fake, provider.id).status_code == 303
    update_user(services, person.id, email="ann.new@elsewhere.example")
    client.cookies.clear()
    assert sign_in_upstream(client, fake, provider.id).status_code == 303
    assert len(sessions_of(services, person.id)) == 2
    assert services.db.call(users.find_by_email, "ann@acme.example") is None


def test_an_upstream_sign_in_ends_the_browsers_previous_session_h63(
    client: TestClient, fake: FakeOidc, services: Any, make: Any
) -> None:
    person = make.user(email="ann@acme.example")
    provider = add_provider(services, domains=["acme.example"])
    assert sign_in_by_form(client, "ann@acme.example").status_code == 303
    assert sign_in_upstream(client, fake, provider.id).status_code == 303
    sessions = sorted(sessions_of(services, person.id), key=lambda s: s.created_at)
    assert [s.amr for s in sessions] == ["pwd", "fed pwd mfa"]
    assert sessions[0].ended_at is not None
    assert sessions[1].ended_at is None


def test_without_jit_an_unknown_person_gets_no_account(
    client: TestClient, fake: FakeOidc, services: Any
) -> None:
    provider = add_provider(services)
    response = sign_in_upstream(client, fake, provider.id)
    assert response.status_code == 403
    assert "There is no account here" in response.text
    assert services.db.call(users.find_by_email, "ann@acme.example") is None


def test_jit_people_join_the_providers_organization_with_its_default_role(
    client: TestClient, fake: FakeOidc, services: Any, make: Any
) -> None:
    from authserver.organizations import models as orgs

    owner = make.user(email="owner@acme.example")
    organization = make.organization(owner)
    provider = add_provider(
        services, jit=True, organization_id=organization.id, default_role="member"
    )
    assert sign_in_upstream(client, fake, provider.id).status_code == 303
    user = services.db.call(users.find_by_email, "ann@acme.example")
    assert services.db.call(orgs.role_of, organization.id, user.id) == "member"


def test_a_disabled_account_cannot_sign_in_upstream(
    client: TestClient, fake: FakeOidc, services: Any, make: Any
) -> None:
    person = make.user(email="ann@acme.example")
    provider = add_provider(services, domains=["acme.example"])
    assert sign_in_upstream(client, fake, provider.id).status_code == 303
    update_user(services, person.id, is_active=False)
    client.cookies.clear()
    response = sign_in_upstream(client, fake, provider.id)
    assert response.status_code == 403
    assert "cannot sign in" in response.text


# -- /account: link and unlink ------------------------------------------------------------------


def test_a_signed_in_person_links_an_upstream_account_from_the_account_page(
    client: TestClient, fake: FakeOidc, services: Any, make: Any
) -> None:
    person = make.user(email="bob@example.com")
    provider = add_provider(services)
    assert sign_in_by_form(client, "bob@example.com").status_code == 303
    page = client.get("/account")
    assert "Link Acme SSO" in page.text
    response = client.post(
        f"/account/identities/{provider.id}/link", data={"csrf_token": csrf_token(page)}
    )
    assert response.status_code == 303
    sent = begin_from(response, fake)
    assert sent["prompt"] == "login"
    done = finish(client, sent)
    assert done.headers["location"] == "/account?done=linked"
    [link] = links_of(services, person.id)
    assert link.email == "ann@acme.example"
    assert "ann@acme.example" in client.get("/account").text


def begin_from(response: Any, fake: FakeOidc) -> dict[str, str]:
    from urllib.parse import parse_qs, urlsplit

    sent = {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}
    fake.request = sent
    return sent


def test_an_upstream_account_linked_to_someone_else_is_not_linked_again(
    client: TestClient, fake: FakeOidc, services: Any, make: Any
) -> None:
    provider = add_provider(services, jit=True)
    assert sign_in_upstream(client, fake, provider.id).status_code == 303
    client.cookies.clear()
    other = make.user(email="bob@example.com")
    assert sign_in_by_form(client, "bob@example.com").status_code == 303
    page = client.get("/account")
    response = client.post(
        f"/account/identities/{provider.id}/link", data={"csrf_token": csrf_token(page)}
    )
    refused = finish(client, begin_from(response, fake))
    assert refused.status_code == 403
    assert "already linked to another person" in refused.text
    assert links_of(services, other.id) == []


def test_the_last_way_in_cannot_be_unlinked(
    client: TestClient, fake: FakeOidc, services: Any
) -> None:
    provider = add_provider(services, jit=True)
    assert sign_in_upstream(client, fake, provider.id).status_code == 303
    user = services.db.call(users.find_by_email, "ann@acme.example")
    [link] = links_of(services, user.id)
    page = client.get("/account")
    response = client.post(
        f"/account/identities/{link.id}/unlink", data={"csrf_token": csrf_token(page)}
    )
    assert response.status_code == 409
    assert "only way to sign in" in response.text
    assert len(links_of(services, user.id)) == 1
    assert audit_events(services, "identity.unlinked") == []


def test_a_link_is_removed_when_a_password_remains(
    client: TestClient, fake: FakeOidc, services: Any, make: Any
) -> None:
    person = make.user(email="ann@acme.example")
    provider = add_provider(services, domains=["acme.example"])
    assert sign_in_upstream(client, fake, provider.id).status_code == 303
    [link] = links_of(services, person.id)
    page = client.get("/account")
    response = client.post(
        f"/account/identities/{link.id}/unlink", data={"csrf_token": csrf_token(page)}
    )
    assert response.headers["location"] == "/account?done=unlinked"
    assert links_of(services, person.id) == []
    assert len(audit_events(services, "identity.unlinked")) == 1


def test_unlinking_without_the_csrf_token_changes_nothing(
    client: TestClient, fake: FakeOidc, services: Any, make: Any
) -> None:
    person = make.user(email="ann@acme.example")
    provider = add_provider(services, domains=["acme.example"])
    assert sign_in_upstream(client, fake, provider.id).status_code == 303
    [link] = links_of(services, person.id)
    response = client.post(f"/account/identities/{link.id}/unlink", data={})
    assert response.status_code == 403
    assert len(links_of(services, person.id)) == 1
