"""The device authorization grant end to end (RFC 8628): a poller playing the TV, and
Chromium playing the person who types the code on /device, signs in and allows.

Cited by docs/security.md D43."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
from playwright.sync_api import Page

from authserver.oauth.clients import DEVICE_CODE
from tests.e2e.conftest import LiveServer, sign_in_with_browser

pytestmark = pytest.mark.e2e


def test_a_person_connects_a_device_by_typing_its_code(live_server: LiveServer, page: Page) -> None:
    server = live_server.url
    user = live_server.make.user(email="device-e2e@example.com", name="Dana Device")
    tv, _ = live_server.make.client(
        name="Living Room TV",
        scope="openid profile offline_access",
        auth_method="none",
        grant_types=[DEVICE_CODE, "refresh_token"],
    )
    with httpx.Client(base_url=server, timeout=10) as poller:
        started = poller.post(
            "/device_authorization", data={"client_id": tv.id, "scope": "openid profile"}
        )
        assert started.status_code == 200, started.text
        body = started.json()

        def poll() -> httpx.Response:
            data = {"grant_type": DEVICE_CODE, "device_code": body["device_code"]}
            return poller.post("/token", data={**data, "client_id": tv.id})

        assert poll().json()["error"] == "authorization_pending"
        too_soon = poll()
        assert too_soon.status_code == 400
        assert too_soon.json()["error"] == "slow_down"

        page.goto(body["verification_uri"])
        sign_in_with_browser(page, user.email)
        page.get_by_label("Code").wait_for()
        page.get_by_label("Code").fill(body["user_code"].lower())
        page.get_by_role("button", name="Continue").click()
        page.get_by_role("button", name="Allow").wait_for()
        assert "Living Room TV" in page.content()
        page.get_by_role("button", name="Allow").click()
        page.get_by_text("Return to your device").wait_for()

        # slow_down raised the interval by 5 s: wait it out, then the tokens come.
        time.sleep(body["interval"] + 5 + 0.5)
        issued = poll()
        assert issued.status_code == 200, issued.text
        tokens = issued.json()
        jwks = jwt.PyJWKClient(f"{server}/jwks.json")
        claims = jwt.decode(
            tokens["id_token"],
            jwks.get_signing_key_from_jwt(tokens["id_token"]).key,
            algorithms=["RS256"],
            audience=tv.id,
            issuer=server,
        )
        assert claims["sub"] == user.id
        assert claims["name"] == "Dana Device"
        userinfo = poller.get(
            "/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
        assert userinfo.json()["sub"] == user.id
        assert poll().json()["error"] == "invalid_grant"
