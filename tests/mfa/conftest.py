"""Fixtures for second factors: people with an authenticator app or recovery codes set up
directly in the database (a browser signs in through the pages with `sign_in_by_form`)."""

from __future__ import annotations

import time

import httpx
from starlette.testclient import TestClient

from authserver.mfa import models as mfa_models
from authserver.mfa import recovery, totp
from authserver.services import Services
from authserver.users.models import User
from tests.conftest import csrf_token
from tests.oauth.conftest import allow, flow, now, rp, sign_in_directly, user  # noqa: F401


def enrol_totp(services: Services, person: User, *, required: bool = True) -> bytes:
    """A confirmed authenticator app for `person` (and, by default, "ask at every sign-in");
    returns its secret, from which tests compute codes as the app would."""
    secret = totp.new_secret()

    def enrol() -> None:
        mfa_models.start_totp(person.id, totp.encrypt(services.digester, person.id, secret))
        assert mfa_models.take_step(person.id, 0, confirm=True)
        mfa_models.set_person_requires(person.id, required)

    services.db.call(enrol)
    return secret


def recovery_codes(services: Services, person: User) -> list[str]:
    return services.db.call(recovery.regenerate, services.digester, person.id)


def code_now(secret: bytes, offset_steps: int = 0) -> str:
    return totp.code_at(secret, time.time() + offset_steps * totp.STEP)


def submit_factor(
    client: TestClient, method: str, code: str, next_url: str | None = None
) -> httpx.Response:
    page = client.get("/login/factor", params={"next": next_url} if next_url else None)
    assert page.status_code == 200, page.text
    data = {"csrf_token": csrf_token(page), "method": method, "code": code}
    if next_url:
        data["next"] = next_url
    return client.post("/login/factor", data=data)
