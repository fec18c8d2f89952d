"""Recovery codes: ten, shown once, stored as keyed digests, each working once; a new set
voids the old one; using one is audited and the person is told by email."""

from __future__ import annotations

import re

from starlette.testclient import TestClient

from authserver.mfa import models as mfa_models
from authserver.mfa.models import RecoveryCode
from authserver.services import Services
from authserver.users.models import User
from tests.conftest import audit_events, csrf_token, sessions_of, sign_in_by_form
from tests.mfa.conftest import enrol_totp, recovery_codes, submit_factor


def _stored(services: Services) -> list[RecoveryCode]:
    from sqlalchemy import select

    from authserver.db import current_session

    return services.db.call(lambda: list(current_session().scalars(select(RecoveryCode))))


def test_the_account_page_makes_ten_codes_shown_once(
    client: TestClient, services: Services, user: User
) -> None:
    sign_in_by_form(client, user.email)
    account = client.get("/account")
    made = client.post("/account/recovery-codes", data={"csrf_token": csrf_token(account)})
    assert made.status_code == 200
    assert made.headers["cache-control"] == "no-store"
    codes = re.findall(r"<li>([a-z2-9]{5}-[a-z2-9]{5})</li>", made.text)
    assert len(codes) == 10
    assert len(set(codes)) == 10
    stored = _stored(services)
    assert len(stored) == 10
    assert not any(code in row.digest or code.replace("-", "") in row.digest for code in codes
                   for row in stored)  # fmt: skip
    assert "10 unused recovery codes" in client.get("/account").text
    assert len(audit_events(services, "mfa.recovery_codes_generated")) == 1


def test_each_code_works_once_and_the_person_is_told(
    client: TestClient, services: Services, user: User
) -> None:
    enrol_totp(services, user)
    codes = recovery_codes(services, user)
    sign_in_by_form(client, user.email)
    done = submit_factor(client, "recovery_code", codes[0].upper(), "/account")
    assert done.headers["location"] == "/account"
    [login] = sessions_of(services, user.id)
    assert login.amr.split() == ["pwd", "mfa"]
    assert login.recovery_code_at is not None
    [used] = audit_events(services, "mfa.recovery_code_used")
    assert used.actor_id == user.id
    [mail] = [m for m in services.mailer.messages if m.to == user.email]
    assert "recovery code" in mail.subject.lower()
    assert "9 unused codes remain" in mail.text

    client.cookies.clear()
    sign_in_by_form(client, user.email)
    assert submit_factor(client, "recovery_code", codes[0]).status_code == 400
    assert submit_factor(client, "recovery_code", codes[1]).status_code == 303
    assert services.db.call(mfa_models.recovery_codes_left, user.id) == 8


def test_a_new_set_voids_the_old_one(client: TestClient, services: Services, user: User) -> None:
    enrol_totp(services, user)
    old = recovery_codes(services, user)
    new = recovery_codes(services, user)
    sign_in_by_form(client, user.email)
    assert submit_factor(client, "recovery_code", old[0]).status_code == 400
    assert submit_factor(client, "recovery_code", new[0]).status_code == 303


def test_a_code_is_spent_by_the_database_once(services: Services, user: User) -> None:
    from authserver.mfa import recovery

    [code, *_] = recovery_codes(services, user)
    assert services.db.call(recovery.spend, services.digester, user.id, code)
    assert not services.db.call(recovery.spend, services.digester, user.id, code)


def test_a_code_belongs_to_its_owner(services: Services, user: User, make) -> None:
    from authserver.mfa import recovery

    other = make.user(email="other@example.com")
    [code, *_] = recovery_codes(services, user)
    assert not services.db.call(recovery.spend, services.digester, other.id, code)
