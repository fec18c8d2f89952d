"""Password reset by emailed link: the request page, the link, and what a reset ends."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from authserver.db import utcnow
from authserver.services import Services
from authserver.users import models as users
from tests import factories
from tests.conftest import (
    audit_events,
    count_rows,
    csrf_token,
    sessions_of,
    sign_in_by_form,
    update_user,
)
from tests.users.conftest import (
    Inbox,
    add_family,
    family,
    open_session,
    signs_in,
    submit,
    user_by_email,
)

NEW_PASSWORD = "a brand new passphrase"
EMAIL = "grace@example.com"


def reset_link(client: TestClient, inbox: Inbox, email: str = EMAIL) -> str:
    assert submit(client, "/reset-password", email=email).status_code == 200
    return inbox.link(email, "/reset-password/confirm")


def set_password(client: TestClient, link: str, password: str = NEW_PASSWORD) -> httpx.Response:
    page = client.get(link)
    assert page.status_code == 200, page.text
    form = {"csrf_token": csrf_token(page), "token": link.split("token=")[1], "password": password}
    return client.post("/reset-password/confirm", data=form)


def test_request_page_names_its_field(client: TestClient) -> None:
    page = client.get("/reset-password")

    assert page.status_code == 200
    assert '<label for="email">Email</label>' in page.text
    assert '<button type="submit">Send reset link</button>' in page.text
    assert csrf_token(page)


def test_reset_through_the_emailed_link(
    app: Starlette,
    client: TestClient,
    services: Services,
    make: factories.Factory,
    inbox: Inbox,
) -> None:
    """A reset ends every session and revokes every token family of the account."""
    user = make.user(EMAIL)
    assert sign_in_by_form(client, EMAIL).status_code == 303
    elsewhere = open_session(services, user.id)
    bound = add_family(services, make, user.id, session_id=elsewhere.id)
    offline = add_family(services, make, user.id, session_id=None, offline=True)
    other_user = make.user("someone@example.com")
    untouched = add_family(services, make, other_user.id, session_id=None, offline=True)

    link = reset_link(client, inbox)
    assert inbox.only(EMAIL)["Subject"] == "Reset your password"
    page = client.get(link)
    assert page.status_code == 200
    assert '<label for="password">New password</label>' in page.text
    assert '<button type="submit">Set password</button>' in page.text
    assert EMAIL in page.text
    done = set_password(client, link)

    assert done.status_code == 200
    assert [s.ended_at is not None for s in sessions_of(services, user.id)] == [True, True]
    assert not signs_in(app, EMAIL, factories.PASSWORD)
    assert signs_in(app, EMAIL, NEW_PASSWORD)
    for family_id in (bound, offline):
        assert family(services, family_id).revoked_at is not None
        assert family(services, family_id).revoked_reason == "password_reset"
    assert family(services, untouched).revoked_at is None
    assert user_by_email(services, EMAIL).email_verified  # type: ignore[union-attr]
    assert [m["Subject"] for m in inbox.to(EMAIL)][-1] == "Your password was changed"
    assert [e.outcome for e in audit_events(services, "password.reset_requested")] == ["success"]
    (event,) = audit_events(services, "password.reset")
    assert event.target_id == user.id
    assert event.details == {"sessions_ended": 2, "token_families_revoked": 2}


def test_the_browser_that_reset_is_signed_out_too(
    client: TestClient, make: factories.Factory, inbox: Inbox
) -> None:
    make.user(EMAIL)
    assert sign_in_by_form(client, EMAIL).status_code == 303
    set_password(client, reset_link(client, inbox))

    assert "You are signed in" not in client.get("/login").text


def test_a_reset_link_works_once(client: TestClient, make: factories.Factory, inbox: Inbox) -> None:
    make.user(EMAIL)
    link = reset_link(client, inbox)
    page = client.get(link)
    form = {"csrf_token": csrf_token(page), "token": link.split("token=")[1]}

    first = client.post("/reset-password/confirm", data={**form, "password": NEW_PASSWORD})
    second = client.post("/reset-password/confirm", data={**form, "password": "yet another one!"})

    assert first.status_code == 200
    assert second.status_code == 400
    assert "This link can&#39;t be used" in second.text
    assert client.get(link).status_code == 400


def test_a_reset_spends_the_older_links_too(
    app: Starlette, client: TestClient, make: factories.Factory, inbox: Inbox
) -> None:
    make.user(EMAIL)
    older = reset_link(client, inbox)
    newer = reset_link(client, inbox)

    set_password(client, newer)

    assert client.get(older).status_code == 400
    assert signs_in(app, EMAIL, NEW_PASSWORD)


def test_a_reset_link_expires(
    client: TestClient,
    services: Services,
    make: factories.Factory,
    inbox: Inbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make.user(EMAIL)
    link = reset_link(client, inbox)
    page = client.get(link)
    form = {
        "csrf_token": csrf_token(page),
        "token": link.split("token=")[1],
        "password": NEW_PASSWORD,
    }
    later = utcnow() + timedelta(seconds=services.settings.password_reset_ttl + 1)
    monkeypatch.setattr(users, "utcnow", lambda: later)

    assert client.get(link).status_code == 400
    assert client.post("/reset-password/confirm", data=form).status_code == 400
    monkeypatch.undo()
    assert services.passwords.verify(
        user_by_email(services, EMAIL).password_hash,  # type: ignore[union-attr]
        factories.PASSWORD,
    )


def test_a_weak_password_leaves_the_link_usable(
    app: Starlette, client: TestClient, make: factories.Factory, inbox: Inbox
) -> None:
    make.user(EMAIL)
    link = reset_link(client, inbox)

    weak = set_password(client, link, "short")

    assert weak.status_code == 400
    assert "at least 8 characters" in weak.text
    assert set_password(client, link).status_code == 200
    assert signs_in(app, EMAIL, NEW_PASSWORD)


def test_known_and_unknown_addresses_get_the_same_answer(
    client: TestClient, services: Services, make: factories.Factory, inbox: Inbox
) -> None:
    """I72: same status and body for a registered, a disabled and an unknown address."""
    make.user(EMAIL)
    update_user(services, make.user("disabled@example.com").id, is_active=False)

    answers = [
        submit(client, "/reset-password", email=address)
        for address in (EMAIL, "nobody@example.com", "disabled@example.com")
    ]

    assert answers[0].status_code == 200
    assert len({(a.status_code, a.text) for a in answers}) == 1
    assert [m["To"] for m in inbox.messages] == [EMAIL]
    outcomes = [
        (e.outcome, e.details.get("reason"))
        for e in audit_events(services, "password.reset_requested")
    ]
    assert outcomes == [
        ("success", None),
        ("failure", "unknown_account"),
        ("failure", "inactive_account"),
    ]


def test_a_verification_link_is_no_reset_link(
    client: TestClient, services: Services, inbox: Inbox
) -> None:
    """Links are keyed per purpose: one kind never works as the other."""
    submit(client, "/signup", name="Grace", email=EMAIL, password=factories.PASSWORD)
    token = inbox.link(EMAIL, "/verify-email").split("token=")[1]

    assert client.get(f"/reset-password/confirm?token={token}").status_code == 400


def test_reset_post_with_a_wrong_purpose_token_changes_nothing(
    app: Starlette, client: TestClient, services: Services, inbox: Inbox
) -> None:
    """docs/security.md H64: a verification token posted to the reset form, with a valid
    CSRF token, is a 400; the password, the verification state and the link all stay."""
    submit(client, "/signup", name="Grace", email=EMAIL, password=factories.PASSWORD)
    link = inbox.link(EMAIL, "/verify-email")
    token = link.split("token=")[1]
    page = client.get("/reset-password")

    refused = client.post(
        "/reset-password/confirm",
        data={"csrf_token": csrf_token(page), "token": token, "password": NEW_PASSWORD},
    )

    assert refused.status_code == 400
    assert not signs_in(app, EMAIL, NEW_PASSWORD)
    user = user_by_email(services, EMAIL)
    assert user is not None
    assert not user.email_verified
    verify = client.get(link)
    form = {"csrf_token": csrf_token(verify), "token": token}
    assert client.post("/verify-email", data=form).status_code == 200
    assert signs_in(app, EMAIL, factories.PASSWORD)


def test_confirm_without_csrf_token_changes_nothing(
    app: Starlette, client: TestClient, make: factories.Factory, inbox: Inbox
) -> None:
    """H64: 403, the password stays and the link stays usable."""
    make.user(EMAIL)
    link = reset_link(client, inbox)
    token = link.split("token=")[1]

    refused = client.post(
        "/reset-password/confirm", data={"token": token, "password": NEW_PASSWORD}
    )

    assert refused.status_code == 403
    assert signs_in(app, EMAIL, factories.PASSWORD)
    assert set_password(client, link).status_code == 200


def test_request_without_csrf_token_sends_nothing(
    client: TestClient, services: Services, make: factories.Factory, inbox: Inbox
) -> None:
    make.user(EMAIL)
    client.get("/reset-password")

    assert client.post("/reset-password", data={"email": EMAIL}).status_code == 403
    assert inbox.messages == []
    assert count_rows(services.db, "email_tokens") == 0
