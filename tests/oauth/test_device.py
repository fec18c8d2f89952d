"""The device authorization grant (RFC 8628) through the ASGI app: /device_authorization,
the /device page with its consent step, and the device polling /token.

Cited by docs/security.md D43 (the device flow's user code and polling rules) and K81."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from authserver.oauth import device
from authserver.oauth.clients import DEVICE_CODE
from authserver.services import Services
from authserver.sessions.models import LoginSession
from authserver.users.models import User
from tests import factories
from tests.conftest import count_rows, csrf_token
from tests.oauth.conftest import RP, SCOPE
from tests.oauth.test_races import PARALLEL, outcomes, post_all


def consent_nonce(page: httpx.Response) -> str:
    match = re.search(r'name="consent_nonce" value="([^"]+)"', page.text)
    assert match, "the page has no consent nonce"
    return match.group(1)


@pytest.fixture
def tv(make: factories.Factory) -> RP:
    """A public client on a device without a browser: the device grant and refresh."""
    client, _ = make.client(
        name="Living Room TV",
        scope=SCOPE,
        auth_method="none",
        grant_types=[DEVICE_CODE, "refresh_token"],
    )
    return RP(client, None, "")


@pytest.fixture
def confidential_device(make: factories.Factory) -> RP:
    client, secret = make.client(name="Printer", scope=SCOPE, grant_types=[DEVICE_CODE])
    return RP(client, secret, "")


def start(client: TestClient, rp: RP, scope: str = "openid profile offline_access") -> Any:
    if rp.secret is None:
        response = client.post("/device_authorization", data={"client_id": rp.id, "scope": scope})
    else:
        response = client.post("/device_authorization", data={"scope": scope}, auth=rp.basic)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()


def poll(client: TestClient, rp: RP, device_code: str) -> httpx.Response:
    data = {"grant_type": DEVICE_CODE, "device_code": device_code}
    if rp.secret is None:
        return client.post("/token", data={**data, "client_id": rp.id})
    return client.post("/token", data=data, auth=rp.basic)


def enter(client: TestClient, user_code: str) -> httpx.Response:
    """Type the code on the /device page, as a person does."""
    page = client.get("/device")
    assert page.status_code == 200, page.text
    return client.post("/device", data={"csrf_token": csrf_token(page), "user_code": user_code})


def answer(client: TestClient, user_code: str, decision: str) -> httpx.Response:
    shown = enter(client, user_code)
    assert shown.status_code == 200, shown.text
    assert "Living Room TV" in shown.text or "Printer" in shown.text
    return client.post(
        f"/device?user_code={user_code}",
        data={
            "csrf_token": csrf_token(shown),
            "consent_nonce": consent_nonce(shown),
            "decision": decision,
        },
    )


def test_the_device_gets_codes_to_show(client: TestClient, tv: RP, settings: Any) -> None:
    body = start(client, tv)
    assert re.fullmatch(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}", body["user_code"])
    assert body["verification_uri"] == f"{settings.issuer}/device"
    assert body["verification_uri_complete"] == (
        f"{settings.issuer}/device?user_code={body['user_code']}"
    )
    assert body["expires_in"] == settings.device_code_ttl
    assert body["interval"] == settings.device_poll_interval
    assert len(body["device_code"]) >= 40


def test_codes_are_stored_only_as_digests(client: TestClient, tv: RP, services: Services) -> None:
    body = start(client, tv)

    def rows() -> list[device.DeviceAuthorization]:
        from authserver.db import current_session

        return list(current_session().query(device.DeviceAuthorization))

    (row,) = services.db.call(rows)
    stored = " ".join(str(value) for value in vars(row).values())
    assert body["device_code"] not in stored
    assert body["user_code"].replace("-", "") not in stored


def test_pending_then_slow_down_then_tokens(
    client: TestClient,
    tv: RP,
    user: User,
    signed_in: LoginSession,
    frozen: Callable[[float], None],
    services: Services,
) -> None:
    body = start(client, tv)
    first = poll(client, tv, body["device_code"])
    assert first.status_code == 400
    assert first.json()["error"] == "authorization_pending"
    frozen(1)
    fast = poll(client, tv, body["device_code"])
    assert fast.json()["error"] == "slow_down"
    frozen(6)
    # The interval is now 10 s: 6 s later is still too fast, and raises it again.
    assert poll(client, tv, body["device_code"]).json()["error"] == "slow_down"
    frozen(16)
    assert poll(client, tv, body["device_code"]).json()["error"] == "authorization_pending"

    done = answer(client, body["user_code"], "allow")
    assert done.status_code == 200, done.text
    assert "Return to your device" in done.text
    frozen(16)
    tokens = poll(client, tv, body["device_code"])
    assert tokens.status_code == 200, tokens.text
    issued = tokens.json()
    assert {"access_token", "refresh_token", "id_token"} <= issued.keys()
    claims = jwt.decode(issued["id_token"], options={"verify_signature": False})
    assert claims["sub"] == user.id
    assert claims["aud"] == tv.id
    refreshed = client.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": issued["refresh_token"],
            "client_id": tv.id,
        },
    )
    assert refreshed.status_code == 200, refreshed.text
    # Single use: the same device code again is refused.
    again = poll(client, tv, body["device_code"])
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_the_code_is_typed_case_and_dash_insensitively(
    client: TestClient, tv: RP, user: User, signed_in: LoginSession
) -> None:
    body = start(client, tv)
    sloppy = body["user_code"].replace("-", " ").lower()
    shown = enter(client, sloppy)
    assert shown.status_code == 200
    assert "Allow Living Room TV" in shown.text


def test_a_denial_is_access_denied(
    client: TestClient, tv: RP, user: User, signed_in: LoginSession
) -> None:
    body = start(client, tv)
    denied = answer(client, body["user_code"], "deny")
    assert denied.status_code == 200
    response = poll(client, tv, body["device_code"])
    assert response.status_code == 400
    assert response.json()["error"] == "access_denied"


def test_an_expired_code_is_expired_token(
    client: TestClient,
    tv: RP,
    user: User,
    signed_in: LoginSession,
    frozen: Callable[[float], None],
    settings: Any,
) -> None:
    body = start(client, tv)
    frozen(settings.device_code_ttl + 1)
    assert poll(client, tv, body["device_code"]).json()["error"] == "expired_token"
    late = enter(client, body["user_code"])
    assert late.status_code == 400
    assert "not valid or has expired" in late.text


def test_another_clients_device_code_is_invalid_grant(
    client: TestClient, tv: RP, confidential_device: RP, user: User, signed_in: LoginSession
) -> None:
    body = start(client, tv)
    assert answer(client, body["user_code"], "allow").status_code == 200
    stolen = poll(client, confidential_device, body["device_code"])
    assert stolen.status_code == 400
    assert stolen.json()["error"] == "invalid_grant"
    # The rightful device still gets its tokens.
    assert poll(client, tv, body["device_code"]).status_code == 200


def test_wrong_codes_use_up_the_attempts_and_then_nothing_answers(
    client: TestClient, tv: RP, user: User, signed_in: LoginSession, settings: Any
) -> None:
    body = start(client, tv)
    for _ in range(settings.device_code_attempts):
        wrong = enter(client, "BBBB-BBBB")
        assert wrong.status_code == 400
        assert "not valid" in wrong.text
    blocked = enter(client, body["user_code"])
    assert blocked.status_code == 429
    assert "Allow" not in blocked.text
    assert poll(client, tv, body["device_code"]).json()["error"] == "authorization_pending"


def test_the_page_needs_a_signed_in_person(client: TestClient, tv: RP) -> None:
    body = start(client, tv)
    response = client.get(f"/device?user_code={body['user_code']}")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=%2Fdevice%3Fuser_code%3D")


def test_a_confidential_client_must_authenticate(
    client: TestClient, confidential_device: RP
) -> None:
    response = client.post(
        "/device_authorization", data={"client_id": confidential_device.id, "scope": "openid"}
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert start(client, confidential_device)["user_code"]


def test_a_client_without_the_grant_is_refused(client: TestClient, public_rp: RP) -> None:
    response = client.post(
        "/device_authorization", data={"client_id": public_rp.id, "scope": "openid"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "unauthorized_client"


def test_a_scope_beyond_the_registration_is_refused(client: TestClient, tv: RP) -> None:
    response = client.post(
        "/device_authorization", data={"client_id": tv.id, "scope": "openid admin"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


def test_consent_nonce_of_another_authorization_is_refused(
    client: TestClient, tv: RP, user: User, signed_in: LoginSession
) -> None:
    first, second = start(client, tv), start(client, tv)
    shown = enter(client, first["user_code"])
    response = client.post(
        f"/device?user_code={second['user_code']}",
        data={
            "csrf_token": csrf_token(shown),
            "consent_nonce": consent_nonce(shown),
            "decision": "allow",
        },
    )
    assert response.status_code == 400
    assert poll(client, tv, second["device_code"]).json()["error"] == "authorization_pending"


def test_turned_off_it_is_neither_served_nor_advertised(
    app_with: Callable[..., TestClient], tv: RP
) -> None:
    off = app_with(device_flow=False)
    assert off.post("/device_authorization", data={"client_id": tv.id}).status_code == 404
    assert off.get("/device").status_code == 404
    metadata = off.get("/.well-known/openid-configuration").json()
    assert "device_authorization_endpoint" not in metadata
    assert DEVICE_CODE not in metadata["grant_types_supported"]
    response = off.post(
        "/token", data={"grant_type": DEVICE_CODE, "device_code": "x", "client_id": tv.id}
    )
    assert response.json()["error"] == "unsupported_grant_type"


def test_advertised_when_on(client: TestClient, settings: Any) -> None:
    metadata = client.get("/.well-known/openid-configuration").json()
    assert metadata["device_authorization_endpoint"] == f"{settings.issuer}/device_authorization"
    assert DEVICE_CODE in metadata["grant_types_supported"]


def test_a_user_code_already_stored_is_drawn_again(
    client: TestClient, tv: RP, monkeypatch: pytest.MonkeyPatch, services: Services
) -> None:
    """The user code is unique in the database; a clash draws another, never a 500."""
    first = start(client, tv)
    taken = iter(first["user_code"].replace("-", "") + "BCDFGHJK")
    monkeypatch.setattr(device.secrets, "choice", lambda _: next(taken))
    second = start(client, tv)
    assert second["user_code"] == "BCDF-GHJK"


def test_the_admin_scope_is_only_allowed_by_an_admin(
    client: TestClient, make: factories.Factory, user: User, signed_in: LoginSession
) -> None:
    """As at /authorize: a person who is not an administrator cannot hand a device `admin`."""
    console, _ = make.client(
        name="Printer", scope="openid admin", auth_method="none", grant_types=[DEVICE_CODE]
    )
    rp = RP(console, None, "")
    body = start(client, rp, scope="openid admin")
    refused = answer(client, body["user_code"], "allow")
    assert refused.status_code == 403
    assert poll(client, rp, body["device_code"]).json()["error"] == "access_denied"


def test_an_approved_device_code_redeemed_twenty_times_at_once(
    app: Starlette,
    client: TestClient,
    tv: RP,
    user: User,
    signed_in: LoginSession,
    services: Services,
) -> None:
    """docs/security.md K81 for device codes: one poll gets tokens, one token family."""
    body = start(client, tv)
    assert answer(client, body["user_code"], "allow").status_code == 200
    data = {"grant_type": DEVICE_CODE, "device_code": body["device_code"], "client_id": tv.id}
    responses = post_all(app, [{"url": "/token", "data": data}] * PARALLEL)
    assert outcomes(responses) == Counter({"ok": 1, "400 invalid_grant": PARALLEL - 1})
    assert count_rows(services.db, "token_families") == 1
