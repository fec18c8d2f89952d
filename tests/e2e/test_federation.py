"""Signing in here through a real upstream OpenID provider, in Chromium (issue 12).

The upstream is a second instance of this server, started by the test on another loopback
port with its own SQLite database, keys and people, and a client registered for the first
server. The first server trusts that one host (`AUTHSERVER_TRUSTED_HOSTS`), which is the
only reason the outbound client talks plain http to it. A third-party app's /authorize on
the first server → "Continue with" the upstream → sign-in and consent there → back →
consent here → code → tokens about the first server's person, saying the sign-in was
federated.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from playwright.sync_api import Page

from authserver.app import build_services
from authserver.db import Database
from authserver.federation import providers
from authserver.services import Services
from authserver.settings import Settings
from authserver.users import models as users
from tests import factories
from tests.e2e.conftest import RelyingParty, authorize_url, sign_in_with_browser
from tests.factories import PASSWORD
from tests.servers import Server, environment, free_port, uvicorn

pytestmark = pytest.mark.e2e


def cli(env: dict[str, str], cwd: Path, *args: str, stdin: str = "") -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "authserver.cli", *args, "--json"],
        input=stdin, env=env, cwd=cwd, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return dict(json.loads(done.stdout))


@dataclass(frozen=True)
class Pair:
    server: Server
    upstream: Server
    services: Services
    make: factories.Factory
    upstream_client_id: str
    upstream_client_secret: str


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory,
    keys_template: Path,
    database_url: str,
    schema: Database,
) -> Iterator[Pair]:
    folder = tmp_path_factory.mktemp("federation")
    server_port, upstream_port = free_port(), free_port()
    server_url = f"http://127.0.0.1:{server_port}"
    upstream_url = f"http://127.0.0.1:{upstream_port}"

    upstream_env = environment(
        upstream_url,
        f"sqlite:///{folder / 'upstream.db'}",
        AUTHSERVER_KEYS_DIR=str(folder / "upstream-keys"),
    )
    subprocess.run(
        [sys.executable, "-m", "authserver.cli", "migrate"],
        env=upstream_env, cwd=folder, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    for email in ("ann@acme.example", "bob@acme.example"):
        cli(upstream_env, folder, "users", "create", "--email", email, "--verified",
            "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    registered = cli(upstream_env, folder, "clients", "create", "--name", "Downstream server",
                     "--redirect-uri", f"{server_url}/login/federated/callback",
                     "--scope", "openid email profile")  # fmt: skip

    (folder / "keys").mkdir()
    for key in keys_template.iterdir():
        (folder / "keys" / key.name).write_bytes(key.read_bytes())
    server_env = environment(
        server_url, database_url, AUTHSERVER_KEYS_DIR=str(folder / "keys"),
        AUTHSERVER_TRUSTED_HOSTS=f"127.0.0.1:{upstream_port}",
    )  # fmt: skip
    with (
        uvicorn(folder, upstream_env, port=upstream_port) as upstream,
        uvicorn(folder, server_env, port=server_port) as server,
    ):
        services = build_services(Settings.from_mapping(server_env))
        try:
            yield Pair(server, upstream, services, factories.Factory(services),
                       registered["client_id"], registered["client_secret"])  # fmt: skip
        finally:
            services.db.dispose()


def add_upstream(pair: Pair, **changes: Any) -> None:
    """The upstream as an operator adds it; returns once the server's sign-in page (whose
    list of providers is cached for a few seconds) offers it."""
    services = pair.services
    endpoints = providers.endpoints_for(services.fetcher, "oidc", pair.upstream.url)
    assert endpoints["token_endpoint"] == f"{pair.upstream.url}/token"
    provider = services.db.call(
        providers.create, services.federation.box, "oidc", endpoints,
        providers.Changes(name="Acme SSO", client_id=pair.upstream_client_id,
                          client_secret=pair.upstream_client_secret, **changes),
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while f"/login/federated/{provider.id}" not in httpx.get(f"{pair.server.url}/login").text:
        assert time.monotonic() < deadline, "the sign-in page does not offer the provider"
        time.sleep(0.5)


def test_a_third_party_app_signs_a_person_in_through_the_upstream_provider(
    pair: Pair, relying_party: RelyingParty, page: Page
) -> None:
    server = pair.server.url
    person = pair.make.user(email="ann@acme.example", name="Ann Here")
    add_upstream(pair, domains=["acme.example"])
    callback = f"{relying_party.url}/callback"
    app, secret = pair.make.client(name="Photo Printer", redirect_uris=[callback])
    url, verifier = authorize_url(server, app.id, callback, scope="openid email", state="s1")

    page.goto(url)
    page.get_by_role("link", name="Continue with Acme SSO").click()
    page.wait_for_url(f"{pair.upstream.url}/login?**")
    sign_in_with_browser(page, "ann@acme.example")
    page.get_by_role("button", name="Allow").wait_for()
    assert "Downstream server" in page.content()
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(f"{server}/consent?**")
    assert "Photo Printer" in page.content()
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(f"{callback}?**")

    code = httpx.URL(page.url).params["code"]
    token = httpx.post(
        f"{server}/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": callback,
              "code_verifier": verifier},
        auth=(app.id, secret or ""),
    ).json()  # fmt: skip
    jwks = jwt.PyJWKClient(f"{server}/jwks.json")
    claims = jwt.decode(
        token["id_token"],
        jwks.get_signing_key_from_jwt(token["id_token"]).key,
        algorithms=["RS256"],
        audience=app.id,
        issuer=server,
    )
    assert claims["sub"] == person.id
    assert claims["amr"][0] == "fed"
    assert claims["auth_time"] <= time.time()
    assert "upstream" not in json.dumps(token).lower()


def test_an_upstream_consent_denied_comes_back_to_our_sign_in_page(
    pair: Pair, relying_party: RelyingParty, page: Page
) -> None:
    services, server = pair.services, pair.server.url
    add_upstream(pair, jit=True)
    callback = f"{relying_party.url}/callback"
    app, _ = pair.make.client(name="Photo Printer", redirect_uris=[callback])
    url, _ = authorize_url(server, app.id, callback)

    page.goto(url)
    page.get_by_role("link", name="Continue with Acme SSO").click()
    sign_in_with_browser(page, "bob@acme.example")
    page.get_by_role("button", name="Deny").click()
    page.wait_for_url(f"{server}/login/federated/callback?**")
    assert "You cancelled the sign-in at Acme SSO" in page.content()
    assert "Continue with Acme SSO" in page.content()
    assert services.db.call(users.find_by_email, "bob@acme.example") is None
