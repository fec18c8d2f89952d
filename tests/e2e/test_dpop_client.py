"""DPoP (RFC 9449) with a client library that implements it: oauth4webapi's `DPoP` handle in
a Node process, against a live server with server nonces on. The library binds the code
with `dpop_jkt`, answers `use_dpop_nonce` by retrying with the nonce, and gets DPoP-bound
access tokens that /userinfo accepts with its proofs; the same token as Bearer, or the
public client's refresh token without a proof, is refused
(docs/security.md O113, O114, O115 and O116)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from playwright.sync_api import Page

from authserver.db import Database
from tests.e2e.conftest import LiveServer, RelyingParty, running_server, sign_in_with_browser

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def nonce_server(
    tmp_path_factory: pytest.TempPathFactory,
    keys_template: Path,
    database_url: str,
    schema: Database,
) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("dpop")
    with running_server(folder, keys_template, database_url, AUTHSERVER_DPOP_NONCE="on") as server:
        yield server


def test_oauth4webapi_dpop_code_flow_userinfo_and_refresh(
    nonce_server: LiveServer, relying_party: RelyingParty, page: Page, node_clients: Path
) -> None:
    server = nonce_server.url
    callback = f"{relying_party.url}/dpop-callback"
    user = nonce_server.make.user(email="dpop@example.com")
    client, _ = nonce_server.make.client(
        name="DPoP App", redirect_uris=[callback], scope="openid offline_access", auth_method="none"
    )
    node = subprocess.Popen(
        ["node", "dpop_client.mjs", server, client.id, callback],
        cwd=node_clients,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdout is not None
        url = node.stdout.readline().strip()
        assert url.startswith(f"{server}/authorize?"), node.stderr.read() if node.stderr else ""
        page.goto(url)
        sign_in_with_browser(page, user.email)
        page.get_by_role("button", name="Allow").click()
        page.wait_for_url(f"{callback}?**")
        out, err = node.communicate(page.url + "\n", timeout=60)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    assert node.returncode == 0, err
    got = json.loads(out.strip().splitlines()[-1])

    assert got["token_type"] == "dpop"
    assert got["refreshed_token_type"] == "dpop"
    assert got["nonce_retries"] >= 1
    assert got["userinfo"]["sub"] == user.id
    for token in (got["access_token"], got["refreshed_access_token"]):
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["cnf"] == {"jkt": got["jkt"]}

    as_bearer = httpx.get(
        f"{server}/userinfo", headers={"Authorization": f"Bearer {got['access_token']}"}
    )
    assert as_bearer.status_code == 401
    assert as_bearer.headers["www-authenticate"].startswith("DPoP ")
    assert as_bearer.json()["error"] == "invalid_token"
    stolen_refresh = httpx.post(
        f"{server}/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": got["refresh_token"],
            "client_id": client.id,
        },
    )
    assert stolen_refresh.status_code == 400
    assert stolen_refresh.json()["error"] == "invalid_grant"
