"""/signup and email verification over HTTP, with the links read from real SMTP deliveries."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from starlette.testclient import TestClient

from authserver.db import utcnow
from authserver.services import Services
from authserver.sessions.models import cookie_name
from authserver.users import models as users
from tests import factories
from tests.conftest import audit_events, count_rows, csrf_token, update_user
from tests.users.conftest import Inbox, free_port, submit, user_by_email

NEW = {"name": "Ada Lovelace", "email": "ada@example.com", "password": factories.PASSWORD}


def test_page_names_its_fields_and_carries_a_csrf_token(client: TestClient) -> None:
    """SPEC §6: inputs labelled Name, Email, Password and a `Create account` button."""
    page = client.get("/signup")

    assert page.status_code == 200
    for name, label in (("name", "Name"), ("email", "Email"), ("password", "Password")):
        assert f'<label for="{name}">{label}</label>' in page.text
        assert f'id="{name}" name="{name}"' in page.text
    assert '<button type="submit">Create account</button>' in page.text
    assert 'autocomplete="new-password"' in page.text
    assert csrf_token(page)
    assert page.headers["cache-control"] == "no-store"


def test_sign_up_then_verify_through_the_emailed_link(
    client: TestClient, services: Services, inbox: Inbox
) -> None:
    answer = submit(client, "/signup", **NEW)

    assert answer.status_code == 200
    assert "Check your email" in answer.text
    assert cookie_name(services.settings) not in answer.cookies
    user = user_by_email(services, "ada@example.com")
    assert user is not None
    assert user.name == "Ada Lovelace"
    assert not user.email_verified
    assert user.password_hash is not None
    assert user.password_hash.startswith("$argon2id$")
    assert audit_events(services, "user.signed_up")[0].target_id == user.id

    message = inbox.only("ada@example.com")
    assert message["Subject"] == "Confirm your email address"
    assert message["From"] == "no-reply@127.0.0.1"
    link = inbox.link("ada@example.com", "/verify-email")

    page = client.get(link)
    assert page.status_code == 200
    assert '<button type="submit">Verify email</button>' in page.text
    assert not user_by_email(services, "ada@example.com").email_verified  # type: ignore[union-attr]

    token = link.split("token=")[1]
    done = client.post("/verify-email", data={"csrf_token": csrf_token(page), "token": token})

    assert done.status_code == 200
    assert "Email verified" in done.text
    assert user_by_email(services, "ada@example.com").email_verified  # type: ignore[union-attr]
    assert [e.target_id for e in audit_events(services, "email.verified")] == [user.id]


def test_a_verification_link_works_once(client: TestClient, inbox: Inbox) -> None:
    submit(client, "/signup", **NEW)
    link = inbox.link("ada@example.com", "/verify-email")
    page = client.get(link)
    form = {"csrf_token": csrf_token(page), "token": link.split("token=")[1]}

    assert client.post("/verify-email", data=form).status_code == 200
    again = client.post("/verify-email", data=form)

    assert again.status_code == 400
    assert "This link can&#39;t be used" in again.text
    assert client.get(link).status_code == 400


def test_a_verification_link_expires_after_a_day(
    client: TestClient, services: Services, inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    submit(client, "/signup", **NEW)
    link = inbox.link("ada@example.com", "/verify-email")
    page = client.get(link)
    form = {"csrf_token": csrf_token(page), "token": link.split("token=")[1]}
    later = utcnow() + timedelta(seconds=services.settings.email_verify_ttl + 1)
    monkeypatch.setattr(users, "utcnow", lambda: later)

    assert client.get(link).status_code == 400
    assert client.post("/verify-email", data=form).status_code == 400
    assert not user_by_email(services, "ada@example.com").email_verified  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "token", ["", "x", "A" * 43, "A" * 5000, "%00", "%FF%FE", "é", "../../etc/passwd"]
)
def test_garbage_links_get_a_clear_400_page(client: TestClient, token: str) -> None:
    """L95: bad input is a 400 page, never a 500."""
    for path in ("/verify-email", "/reset-password/confirm"):
        page = client.get(f"{path}?token={token}")
        assert page.status_code == 400
        assert "This link can&#39;t be used" in page.text


def test_a_taken_email_gets_the_same_answer_and_its_owner_a_notice(
    client: TestClient, services: Services, make: factories.Factory, inbox: Inbox
) -> None:
    """I72: registration does not tell whether an address has an account."""
    owner = make.user("taken@example.com", password="the owner's own password")

    taken = submit(client, "/signup", **{**NEW, "email": "Taken@Example.com"})
    fresh = submit(client, "/signup", **{**NEW, "email": "fresh@example.com"})

    assert (taken.status_code, taken.text) == (fresh.status_code, fresh.text)
    assert count_rows(services.db, "users") == 2
    assert count_rows(services.db, "email_tokens") == 1
    notice = inbox.only("taken@example.com")
    assert notice["Subject"] == "Someone tried to sign up with your email address"
    assert "/reset-password" in notice.get_content()
    assert "token=" not in notice.get_content()
    unchanged = user_by_email(services, "taken@example.com")
    assert unchanged is not None
    assert unchanged.password_hash == owner.password_hash
    assert unchanged.name == owner.name
    failed = audit_events(services, "user.signed_up")
    assert {(e.outcome, e.target_id) for e in failed if e.outcome == "failure"} == {
        ("failure", owner.id)
    }


def test_signup_turned_off_is_404(app_with: Callable[..., TestClient]) -> None:
    client = app_with(signup_enabled=False)

    assert client.get("/signup").status_code == 404
    assert client.post("/signup", data=NEW).status_code == 404


def test_a_post_without_csrf_token_is_refused_and_writes_nothing(
    client: TestClient, services: Services, inbox: Inbox
) -> None:
    """H64: no token → 403, nothing changed, no mail."""
    client.get("/signup")
    refused = client.post("/signup", data=NEW)
    foreign = client.post(
        "/signup",
        data={**NEW, "csrf_token": csrf_token(client.get("/signup"))},
        headers={"Origin": "https://evil.example"},
    )

    assert refused.status_code == 403
    assert foreign.status_code == 403
    assert count_rows(services.db, "users") == 0
    assert count_rows(services.db, "audit_events") == 0
    assert inbox.messages == []


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"password": "short"}, "at least 8 characters"),
        ({"password": "x" * 1025}, "at most 1024 characters"),
        ({"email": "not-an-email"}, "not a valid email address"),
        ({"name": "   "}, "Enter your name."),
    ],
)
def test_bad_input_is_shown_on_the_form(
    client: TestClient, services: Services, changes: dict[str, str], error: str
) -> None:
    """I70: the length rule, no composition rules; the typed values stay, the password not."""
    answer = submit(client, "/signup", **{**NEW, **changes})

    assert answer.status_code == 400
    assert error in answer.text
    assert factories.PASSWORD not in answer.text
    assert count_rows(services.db, "users") == 0


def test_a_long_passphrase_is_accepted_whole(client: TestClient, services: Services) -> None:
    """I70: 128 characters work and are not truncated."""
    passphrase = ("velvet orbit lantern quarry " * 5)[:127] + "!"
    assert len(passphrase) == 128
    assert submit(client, "/signup", **{**NEW, "password": passphrase}).status_code == 200
    user = user_by_email(services, NEW["email"])
    assert user is not None
    assert services.passwords.verify(user.password_hash, passphrase)
    assert not services.passwords.verify(user.password_hash, passphrase[:127] + "?")


def test_mail_server_down_still_creates_the_account(
    app_with: Callable[..., TestClient], services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """L: a mail failure is logged; no 500, the account stays, a new link can be asked for."""
    client = app_with(smtp_url=f"smtp://127.0.0.1:{free_port()}")

    answer = submit(client, "/signup", **NEW)
    again = submit(client, "/verify-email/resend", email=NEW["email"])

    assert answer.status_code == 200
    assert again.status_code == 200
    assert user_by_email(services, NEW["email"]) is not None
    assert "could not send mail" in caplog.text
    assert factories.PASSWORD not in caplog.text


def test_a_new_confirmation_link_is_sent_only_to_unverified_accounts(
    client: TestClient, services: Services, make: factories.Factory, inbox: Inbox
) -> None:
    """I72: the answer is the same for unverified, verified and unknown addresses."""
    make.user("pending@example.com")
    update_user(services, make.user("done@example.com").id, email_verified=True)

    answers = [
        submit(client, "/verify-email/resend", email=address)
        for address in ("pending@example.com", "done@example.com", "nobody@example.com")
    ]

    assert len({(a.status_code, a.text) for a in answers}) == 1
    assert answers[0].status_code == 200
    assert [m["To"] for m in inbox.messages] == ["pending@example.com"]
    link = inbox.link("pending@example.com", "/verify-email")
    assert client.get(link).status_code == 200


def test_sign_ups_per_ip_are_limited(
    app_with: Callable[..., TestClient], services: Services, inbox: Inbox
) -> None:
    """SPEC §8: registration per IP; 429 with Retry-After."""
    client = app_with(mail_rate_per_ip=2)

    for n in range(2):
        assert submit(client, "/signup", **{**NEW, "email": f"u{n}@example.com"}).status_code == 200
    refused = submit(client, "/signup", **{**NEW, "email": "u3@example.com"})

    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    assert "Too many requests" in refused.text
    assert user_by_email(services, "u3@example.com") is None
    assert len(inbox.messages) == 2


def test_mail_to_one_address_is_capped(
    app_with: Callable[..., TestClient], make: factories.Factory, inbox: Inbox
) -> None:
    """Nobody can make the server flood a mailbox; the page still reads the same."""
    client = app_with(mail_rate_per_address=2)
    make.user("victim@example.com")

    answers = [submit(client, "/reset-password", email="victim@example.com") for _ in range(4)]

    assert len({(a.status_code, a.text) for a in answers}) == 1
    assert len(inbox.to("victim@example.com")) == 2
