"""Passkeys through the JSON endpoints with a software authenticator, and the verification
function against forged origins and relying party IDs (the browser test in tests/e2e runs
Chromium's virtual authenticator)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from starlette.testclient import TestClient
from webauthn.helpers import bytes_to_base64url

from authserver.mfa import models as mfa_models
from authserver.mfa import webauthn as passkeys
from authserver.mfa.policy import ACR_MFA
from authserver.services import Services
from authserver.users.models import User
from tests.conftest import csrf_token, sessions_of, sign_in_by_form
from tests.mfa.authenticator import UP, SoftAuthenticator
from tests.mfa.conftest import enrol_totp


@pytest.fixture
def authenticator(services: Services) -> SoftAuthenticator:
    settings = services.settings
    return SoftAuthenticator(passkeys.rp_id(settings), passkeys.origin(settings))


def _register(services: Services, user: User, authenticator: SoftAuthenticator) -> None:
    services.db.call(mfa_models.add_passkey, authenticator.passkey_for(user.id))


def _csrf(client: TestClient, page: str = "/login") -> str:
    return csrf_token(client.get(page))


def _options(client: TestClient, csrf: str, mode: str = "sign_in") -> dict[str, Any]:
    answer = client.post(
        "/login/passkey/options",
        json={"mode": mode},
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def _send(client: TestClient, csrf: str, ticket: str, credential: dict[str, Any], **extra: Any):
    return client.post(
        "/login/passkey",
        json={"ticket": ticket, "credential": credential, **extra},
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
    )


def test_passwordless_sign_in_opens_a_multi_factor_session(
    client: TestClient, services: Services, user: User, authenticator: SoftAuthenticator
) -> None:
    _register(services, user, authenticator)
    csrf = _csrf(client)
    options = _options(client, csrf)
    assert options["publicKey"]["userVerification"] == "required"
    assert options["publicKey"]["rpId"] == "127.0.0.1"
    assert (
        "allowCredentials" not in options["publicKey"]
        or not options["publicKey"]["allowCredentials"]
    ), "discoverable: no email asked"
    credential = authenticator.assertion(options["publicKey"]["challenge"])
    answer = _send(client, csrf, options["ticket"], credential, next="/account")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"redirect": "/account"}
    [login] = sessions_of(services, user.id)
    assert login.amr.split() == ["hwk", "user", "mfa"]
    assert login.acr == ACR_MFA
    assert login.passkey_at is not None
    assert login.password_at is None
    [stored] = services.db.call(mfa_models.passkeys_of, user.id)
    assert stored.sign_count == 1
    assert stored.last_used_at is not None
    assert client.get("/account").status_code == 200


def test_a_challenge_works_once(
    client: TestClient, services: Services, user: User, authenticator: SoftAuthenticator
) -> None:
    _register(services, user, authenticator)
    csrf = _csrf(client)
    options = _options(client, csrf)
    credential = authenticator.assertion(options["publicKey"]["challenge"])
    assert _send(client, csrf, options["ticket"], credential).status_code == 200
    replay = authenticator.assertion(options["publicKey"]["challenge"])
    assert _send(client, csrf, options["ticket"], replay).status_code == 403


def test_a_challenge_is_bound_to_the_browser_it_was_given_to(
    client: TestClient,
    app_with,
    services: Services,
    user: User,
    authenticator: SoftAuthenticator,
) -> None:
    _register(services, user, authenticator)
    csrf = _csrf(client)
    options = _options(client, csrf)
    other = app_with()
    other_csrf = _csrf(other)
    credential = authenticator.assertion(options["publicKey"]["challenge"])
    assert _send(other, other_csrf, options["ticket"], credential).status_code == 403
    assert sessions_of(services, user.id) == []


def test_without_user_verification_a_passkey_is_no_first_factor(
    client: TestClient, services: Services, user: User, authenticator: SoftAuthenticator
) -> None:
    _register(services, user, authenticator)
    csrf = _csrf(client)
    options = _options(client, csrf)
    credential = authenticator.assertion(options["publicKey"]["challenge"], flags=UP)
    assert _send(client, csrf, options["ticket"], credential).status_code == 403
    assert sessions_of(services, user.id) == []


def test_a_passkey_as_the_second_step(
    client: TestClient,
    services: Services,
    user: User,
    authenticator: SoftAuthenticator,
) -> None:
    enrol_totp(services, user)
    _register(services, user, authenticator)
    sign_in_by_form(client, user.email)
    csrf = _csrf(client, "/login/factor")
    options = _options(client, csrf, mode="second_step")
    allowed = [c["id"] for c in options["publicKey"]["allowCredentials"]]
    assert allowed == [bytes_to_base64url(authenticator.credential_id)]
    credential = authenticator.assertion(options["publicKey"]["challenge"])
    answer = _send(client, csrf, options["ticket"], credential, next="/account")
    assert answer.status_code == 200, answer.text
    [login] = sessions_of(services, user.id)
    assert not login.awaiting_factor
    assert login.amr.split() == ["pwd", "hwk", "user", "mfa"]


def test_someone_elses_passkey_does_not_complete_my_second_step(
    client: TestClient,
    services: Services,
    user: User,
    make,
    authenticator: SoftAuthenticator,
) -> None:
    enrol_totp(services, user)
    mallory = make.user(email="mallory@example.com")
    _register(services, mallory, authenticator)
    sign_in_by_form(client, user.email)
    csrf = _csrf(client, "/login/factor")
    with_mine = SoftAuthenticator(authenticator.rp_id, authenticator.origin,
                                  credential_id=secrets.token_bytes(32))  # fmt: skip
    _register(services, user, with_mine)
    options = _options(client, csrf, mode="second_step")
    credential = authenticator.assertion(options["publicKey"]["challenge"])
    assert _send(client, csrf, options["ticket"], credential).status_code == 403
    [pending] = sessions_of(services, user.id)
    assert pending.awaiting_factor


def test_json_endpoints_need_the_csrf_token(client: TestClient) -> None:
    client.get("/login")
    answer = client.post("/login/passkey/options", json={}, headers={"Accept": "application/json"})
    assert answer.status_code == 403
    assert (
        client.post(
            "/login/passkey/options",
            content=b"[1,2",
            headers={"X-CSRF-Token": _csrf(client), "Accept": "application/json"},
        ).status_code
        == 400
    )


@pytest.mark.parametrize(
    ("origin", "rp_id"),
    [
        ("https://evil.example", None),
        ("http://127.0.0.1:8001", None),
        (None, "evil.example"),
    ],
)
def test_an_assertion_for_another_origin_or_rp_id_is_refused(
    services: Services, authenticator: SoftAuthenticator, origin: str | None, rp_id: str | None
) -> None:
    """A relayed assertion names the phishing origin in its
    clientDataJSON, and a credential of another relying party hashes another RP ID."""
    challenge = secrets.token_bytes(32)
    passkey = authenticator.passkey_for("someone")
    good = authenticator.assertion(bytes_to_base64url(challenge))
    assert (
        passkeys.verify_authentication(
            services.settings, good, challenge, passkey, require_user_verification=True
        ).new_sign_count
        == 1
    )
    forged = authenticator.assertion(bytes_to_base64url(challenge), origin=origin, rp_id=rp_id)
    with pytest.raises(passkeys.PasskeyRefused):
        passkeys.verify_authentication(
            services.settings, forged, challenge, passkey, require_user_verification=True
        )
    other_challenge = authenticator.assertion(bytes_to_base64url(secrets.token_bytes(32)))
    with pytest.raises(passkeys.PasskeyRefused):
        passkeys.verify_authentication(
            services.settings, other_challenge, challenge, passkey, require_user_verification=True
        )


@pytest.mark.parametrize("ticket", ["x\x00y", "a" * 37, "", 5])
def test_a_malformed_ticket_is_a_clear_error(client: TestClient, ticket: object) -> None:
    csrf = _csrf(client)
    answer = client.post(
        "/login/passkey",
        json={"ticket": ticket, "credential": {}},
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
    )
    assert answer.status_code == 400


def test_a_signature_counter_that_went_back_is_refused(
    client: TestClient, services: Services, user: User, authenticator: SoftAuthenticator
) -> None:
    """A cloned authenticator shows up as a counter lower than one already seen."""
    _register(services, user, authenticator)
    csrf = _csrf(client)
    options = _options(client, csrf)
    first = authenticator.assertion(options["publicKey"]["challenge"])
    assert _send(client, csrf, options["ticket"], first).status_code == 200
    authenticator.counter = 0
    client.cookies.clear()
    csrf = _csrf(client)
    options = _options(client, csrf)
    clone = authenticator.assertion(options["publicKey"]["challenge"])
    assert _send(client, csrf, options["ticket"], clone).status_code == 403
    assert len(sessions_of(services, user.id)) == 1
