"""Authenticator apps (RFC 6238): enrolment from /account, the second step after the
password, the ±1 step window, single use per step (database-enforced), the attempt limit,
and the secret encrypted at rest."""

from __future__ import annotations

import base64
import re
import time

import pytest
from starlette.testclient import TestClient

from authserver.mfa import models as mfa_models
from authserver.mfa import totp
from authserver.mfa.policy import ACR_MFA
from authserver.services import Services
from authserver.users.models import User
from tests.conftest import audit_events, csrf_token, sessions_of, sign_in_by_form
from tests.mfa.conftest import code_now, enrol_totp, submit_factor


def test_enrolment_shows_the_secret_once_and_counts_only_once_confirmed(
    client: TestClient, services: Services, user: User
) -> None:
    assert sign_in_by_form(client, user.email, next="/account").headers["location"] == "/account"
    account = client.get("/account")
    assert "Set up authenticator app" in account.text
    started = client.post("/account/totp/start", data={"csrf_token": csrf_token(account)})
    assert started.status_code == 200
    assert started.headers["cache-control"] == "no-store"
    assert 'src="data:image/svg+xml;base64,' in started.text
    shown = re.search(r'id="totp-secret">([A-Z2-7]+)<', started.text)
    assert shown is not None
    secret = base64.b32decode(shown.group(1) + "=" * (-len(shown.group(1)) % 8))
    assert not services.db.call(mfa_models.has_factor, user.id)

    wrong = client.post(
        "/account/totp/confirm", data={"csrf_token": csrf_token(started), "code": "000000"}
    )
    assert wrong.status_code == 400
    assert not services.db.call(mfa_models.has_factor, user.id)

    right = client.post(
        "/account/totp/confirm",
        data={"csrf_token": csrf_token(wrong), "code": code_now(secret)},
    )
    assert right.headers["location"] == "/account?done=totp_enrolled"
    assert services.db.call(mfa_models.has_factor, user.id)
    assert [e.event for e in audit_events(services, "mfa.totp_enrolled")] == ["mfa.totp_enrolled"]
    [login] = sessions_of(services, user.id)
    assert login.amr.split() == ["pwd", "otp", "mfa"], "confirming used the factor"
    again = client.get("/account")
    assert "Remove authenticator app" in again.text
    restarted = client.post("/account/totp/start", data={"csrf_token": csrf_token(again)})
    assert restarted.headers["location"] == "/account", "a confirmed app is not replaced"


def test_the_secret_is_encrypted_at_rest_and_bound_to_the_person(
    services: Services, user: User, make
) -> None:
    secret = enrol_totp(services, user)
    stored = services.db.call(mfa_models.totp_of, user.id).secret
    assert totp.as_base32(secret) not in stored
    assert secret not in base64.urlsafe_b64decode(stored)
    assert totp.decrypt(services.digester, user.id, stored) == secret
    other = make.user(email="other@example.com")
    assert totp.decrypt(services.digester, other.id, stored) is None


def test_a_right_password_then_the_code_completes_the_session(
    client: TestClient, services: Services, user: User
) -> None:
    secret = enrol_totp(services, user)
    answer = sign_in_by_form(client, user.email)
    assert answer.headers["location"] == "/login/factor?next=%2Faccount"
    [pending] = sessions_of(services, user.id)
    assert pending.awaiting_factor
    assert client.get("/account").headers["location"].startswith("/login"), (
        "a session awaiting its second factor is no session"
    )
    done = submit_factor(client, "otp", code_now(secret), "/account")
    assert done.status_code == 303
    assert done.headers["location"] == "/account"
    [login] = sessions_of(services, user.id)
    assert not login.awaiting_factor
    assert login.amr.split() == ["pwd", "otp", "mfa"]
    assert login.acr == ACR_MFA
    assert login.otp_at is not None
    assert login.password_at is not None
    assert client.get("/account").status_code == 200


def test_a_used_code_an_old_code_and_a_wrong_code_are_refused(
    client: TestClient, services: Services, user: User
) -> None:
    secret = enrol_totp(services, user)
    sign_in_by_form(client, user.email)
    assert (
        submit_factor(
            client, "otp", "123456" if code_now(secret) != "123456" else "654321"
        ).status_code
        == 400
    )
    assert submit_factor(client, "otp", code_now(secret, -3)).status_code == 400, "too old"
    used = code_now(secret)
    assert submit_factor(client, "otp", used).status_code == 303

    client.cookies.clear()
    sign_in_by_form(client, user.email)
    assert submit_factor(client, "otp", used).status_code == 400, "replayed in its window"
    assert submit_factor(client, "otp", code_now(secret, -1)).status_code == 400, (
        "a code older than one already accepted"
    )
    failures = audit_events(services, "login.second_factor_failed")
    assert len(failures) == 4


def test_the_window_is_one_step_either_side() -> None:
    secret = totp.new_secret()
    now = 1_800_000_000.0
    step = int(now) // totp.STEP
    for offset in (-1, 0, 1):
        assert totp.matching_step(secret, totp.code_at(secret, now + offset * 30), now) == (
            step + offset
        )
    for offset in (-2, 2):
        assert totp.matching_step(secret, totp.code_at(secret, now + offset * 30), now) is None
    assert totp.matching_step(secret, "12345", now) is None
    assert totp.matching_step(secret, "١٢٣٤٥٦", now) is None


def test_the_same_step_is_taken_once_by_the_database(services: Services, user: User) -> None:
    enrol_totp(services, user)
    step = int(time.time()) // totp.STEP
    assert services.db.call(mfa_models.take_step, user.id, step, confirm=False)
    assert not services.db.call(mfa_models.take_step, user.id, step, confirm=False)
    assert not services.db.call(mfa_models.take_step, user.id, step - 1, confirm=False)


def test_attempts_are_limited_per_account(
    client: TestClient, services: Services, user: User
) -> None:
    """docs/security.md I71: counted before the check, so the right code past the limit is
    refused too."""
    secret = enrol_totp(services, user)
    sign_in_by_form(client, user.email)
    right = code_now(secret)
    wrong = "000000" if right != "000000" else "111111"
    for _ in range(5):
        assert submit_factor(client, "otp", wrong).status_code == 400
    limited = submit_factor(client, "otp", right)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) > 0
    [pending] = sessions_of(services, user.id)
    assert pending.awaiting_factor


@pytest.mark.parametrize("method", ["sms", ""])
def test_an_unknown_method_is_a_clear_error(
    client: TestClient, services: Services, user: User, method: str
) -> None:
    enrol_totp(services, user)
    sign_in_by_form(client, user.email)
    assert submit_factor(client, method, "123456").status_code == 400


def test_without_a_pending_sign_in_the_page_sends_to_login(client: TestClient) -> None:
    answer = client.get("/login/factor", params={"next": "/account"})
    assert answer.headers["location"] == "/login?next=%2Faccount"


def test_a_password_alone_cannot_change_the_factors_of_someone_who_has_one(
    client: TestClient, services: Services, user: User
) -> None:
    """Otherwise a stolen password would add the thief's passkey or remove the app."""
    secret = enrol_totp(services, user, required=False)
    sign_in_by_form(client, user.email)
    [login] = sessions_of(services, user.id)
    assert login.amr == "pwd"
    account = client.get("/account")
    for action in ("/account/totp/remove", "/account/recovery-codes"):
        answer = client.post(action, data={"csrf_token": csrf_token(account)})
        assert answer.headers["location"] == "/login/factor?next=%2Faccount"
    options = client.post(
        "/account/passkeys/options",
        json={},
        headers={"X-CSRF-Token": csrf_token(account), "Accept": "application/json"},
    )
    assert options.status_code == 403
    assert services.db.call(mfa_models.has_factor, user.id)
    assert audit_events(services, prefix="mfa.") == []

    assert submit_factor(client, "otp", code_now(secret), "/account").status_code == 303
    removed = client.post("/account/totp/remove", data={"csrf_token": csrf_token(account)})
    assert removed.headers["location"] == "/account?done=totp_removed"
    assert not services.db.call(mfa_models.has_factor, user.id)


def test_a_right_password_waits_ten_minutes_for_its_factor(
    client: TestClient, services: Services, user: User
) -> None:
    secret = enrol_totp(services, user)
    sign_in_by_form(client, user.email)
    [pending] = sessions_of(services, user.id)
    assert (pending.idle_expires_at - pending.created_at).total_seconds() == 600
    client.get("/login/factor")
    [still] = sessions_of(services, user.id)
    assert still.idle_expires_at == pending.idle_expires_at, "waiting does not extend it"
    submit_factor(client, "otp", code_now(secret))
    client.get("/account")
    [done] = sessions_of(services, user.id)
    assert (done.idle_expires_at - done.created_at).total_seconds() > 600
