"""/account/password: a signed-in person changes their password; everything else signs out."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from starlette.applications import Starlette
from starlette.testclient import TestClient

from authserver.services import Services
from tests import factories
from tests.conftest import audit_events, csrf_token, is_signed_in, sessions_of, sign_in_by_form
from tests.users.conftest import (
    Inbox,
    add_family,
    family,
    open_session,
    signs_in,
    user_by_email,
)

EMAIL = "alan@example.com"
NEW_PASSWORD = "an entirely new passphrase"


def change(
    client: TestClient, current: str = factories.PASSWORD, new: str = NEW_PASSWORD
) -> httpx.Response:
    page = client.get("/account/password")
    assert page.status_code == 200, page.text
    form = {"csrf_token": csrf_token(page), "current_password": current, "new_password": new}
    return client.post("/account/password", data=form)


def test_signed_out_visitors_are_sent_to_sign_in(client: TestClient) -> None:
    answer = client.get("/account/password")

    assert answer.status_code == 303
    assert answer.headers["location"] == "/login"


def test_page_names_its_fields(client: TestClient, make: factories.Factory) -> None:
    make.user(EMAIL)
    assert sign_in_by_form(client, EMAIL).status_code == 303
    page = client.get("/account/password")

    assert page.status_code == 200
    assert '<label for="current_password">Current password</label>' in page.text
    assert '<label for="new_password">New password</label>' in page.text
    assert '<button type="submit">Change password</button>' in page.text
    assert page.headers["cache-control"] == "no-store"


def test_change_keeps_this_session_and_ends_the_others(
    app: Starlette,
    client: TestClient,
    services: Services,
    make: factories.Factory,
    inbox: Inbox,
) -> None:
    """Other sessions end and their token families are revoked, offline ones included; this
    browser and the families bound to its session stay."""
    user = make.user(EMAIL)
    assert sign_in_by_form(client, EMAIL).status_code == 303
    (current,) = sessions_of(services, user.id)
    other = open_session(services, user.id)
    kept = add_family(services, make, user.id, session_id=current.id)
    offline_here = add_family(services, make, user.id, session_id=current.id, offline=True)
    other_bound = add_family(services, make, user.id, session_id=other.id)
    offline = add_family(services, make, user.id, session_id=None, offline=True)

    answer = change(client)

    assert answer.status_code == 200
    assert "Password changed" in answer.text
    assert is_signed_in(client)
    ended = {s.id: s.ended_at is not None for s in sessions_of(services, user.id)}
    assert ended == {current.id: False, other.id: True}
    assert family(services, kept).revoked_at is None
    for family_id in (offline_here, other_bound, offline):
        assert family(services, family_id).revoked_reason == "password_changed"
    assert signs_in(app, EMAIL, NEW_PASSWORD)
    assert not signs_in(app, EMAIL, factories.PASSWORD)
    assert inbox.only(EMAIL)["Subject"] == "Your password was changed"
    (event,) = audit_events(services, "password.changed")
    assert event.outcome == "success"
    assert event.details == {"sessions_ended": 1, "token_families_revoked": 3}


def test_a_wrong_current_password_changes_nothing(
    client: TestClient, services: Services, make: factories.Factory, inbox: Inbox
) -> None:
    user = make.user(EMAIL)
    assert sign_in_by_form(client, EMAIL).status_code == 303
    other = open_session(services, user.id)

    answer = change(client, current="not my password")

    assert answer.status_code == 400
    assert "The current password is not correct." in answer.text
    assert user_by_email(services, EMAIL).password_hash == user.password_hash  # type: ignore[union-attr]
    assert {s.id: s.ended_at for s in sessions_of(services, user.id)}[other.id] is None
    assert inbox.messages == []
    (event,) = audit_events(services, "password.changed")
    assert (event.outcome, event.details["reason"]) == ("failure", "wrong_current_password")


def test_wrong_current_passwords_count_like_failed_sign_ins(
    app_with: Callable[..., TestClient], make: factories.Factory
) -> None:
    """I71: the same per-account counter on every path that checks a password."""
    client = app_with(login_rate_per_account=3)
    make.user(EMAIL)
    assert sign_in_by_form(client, EMAIL).status_code == 303

    answers = [change(client, current=f"guess {n}") for n in range(4)]

    assert [a.status_code for a in answers] == [400, 400, 400, 429]
    assert int(answers[-1].headers["retry-after"]) > 0
    assert change(client).status_code == 429


def test_a_weak_new_password_is_refused(
    client: TestClient, services: Services, make: factories.Factory
) -> None:
    user = make.user(EMAIL)
    assert sign_in_by_form(client, EMAIL).status_code == 303

    answer = change(client, new="short")

    assert answer.status_code == 400
    assert "at least 8 characters" in answer.text
    assert user_by_email(services, EMAIL).password_hash == user.password_hash  # type: ignore[union-attr]


def test_a_post_without_csrf_token_changes_nothing(
    client: TestClient, services: Services, make: factories.Factory
) -> None:
    """H64: password change without a CSRF token → 403, nothing changed."""
    user = make.user(EMAIL)
    assert sign_in_by_form(client, EMAIL).status_code == 303
    other = open_session(services, user.id)

    refused = client.post(
        "/account/password",
        data={"current_password": factories.PASSWORD, "new_password": NEW_PASSWORD},
    )

    assert refused.status_code == 403
    assert user_by_email(services, EMAIL).password_hash == user.password_hash  # type: ignore[union-attr]
    assert all(s.ended_at is None for s in sessions_of(services, user.id))
    assert other.ended_at is None
