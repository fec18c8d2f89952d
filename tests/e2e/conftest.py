"""A real uvicorn server and a real browser (Debian's Chromium driven by Playwright).

The server runs in its own process on the test database, the way an operator runs it; the
test process sets up users and clients through the same database and then acts as the
browser, the relying party and the resource server.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlencode

import pytest
from authlib.common.security import generate_token
from playwright.sync_api import Browser, Page, sync_playwright

from authserver.app import build_services
from authserver.db import Database
from authserver.services import Services
from authserver.settings import Settings
from tests import factories
from tests.factories import PASSWORD
from tests.servers import environment, free_port, uvicorn

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass(frozen=True)
class LiveServer:
    url: str
    settings: Settings
    services: Services
    make: factories.Factory


@contextmanager
def running_server(
    folder: Path,
    keys_template: Path,
    database_url: str,
    host: str = "127.0.0.1",
    **extra: str,
) -> Iterator[LiveServer]:
    """An authserver in its own uvicorn process on a free port of 127.0.0.1, on the test
    database, with `extra` (`AUTHSERVER_*` settings, `SSL_CERT_FILE`) on top; the
    issuer is `http://<host>:<port>` (WebAuthn needs `localhost`: Chromium refuses an IP
    address as the relying party ID)."""
    shutil.copytree(keys_template, folder / "keys")
    port = free_port()
    url = f"http://{host}:{port}"
    env = environment(url, database_url, AUTHSERVER_KEYS_DIR=str(folder / "keys"), **extra)
    with uvicorn(folder, env, port=port):
        settings = Settings.from_mapping(env)
        services = build_services(settings)
        try:
            yield LiveServer(url, settings, services, factories.Factory(services))
        finally:
            services.db.dispose()


NODE_CLIENTS = Path(__file__).parent / "node"


@pytest.fixture(scope="session")
def node_clients() -> Path:
    """The Node clients of `tests/e2e/node`, run from a cache folder where their npm
    dependencies are installed once per version of `package.json`."""
    manifest = (NODE_CLIENTS / "package.json").read_bytes()
    digest = hashlib.sha256(manifest).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"authserver-e2e-node-{digest}"
    folder.mkdir(exist_ok=True)
    for source in NODE_CLIENTS.iterdir():
        if source.is_file():
            shutil.copy(source, folder / source.name)
    if not (folder / "node_modules").is_dir():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            check=True,
            timeout=300,
        )
    return folder


@pytest.fixture(scope="session")
def live_server(
    tmp_path_factory: pytest.TempPathFactory,
    keys_template: Path,
    database_url: str,
    schema: Database,
) -> Iterator[LiveServer]:
    with running_server(tmp_path_factory.mktemp("live"), keys_template, database_url) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Per module: Playwright's sync API keeps an event loop running on this thread while it
    is open, which would break tests elsewhere that start their own loop."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    yield page
    context.close()


class _RelyingPartyPage(BaseHTTPRequestHandler):
    """Answers every page with a short text; keeps the bodies of form posts it receives."""

    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.received.append(self.rfile.read(length))
        self.do_GET()

    def do_GET(self) -> None:
        body = b"relying party"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass(frozen=True)
class RelyingParty:
    url: str
    received: list[bytes]


@pytest.fixture(scope="session")
def relying_party() -> Iterator[RelyingParty]:
    """A real page for the client's redirect URIs, so the browser's last hop lands somewhere."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RelyingPartyPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield RelyingParty(f"http://127.0.0.1:{server.server_address[1]}", _RelyingPartyPage.received)
    server.shutdown()
    server.server_close()


def authorize_url(server: str, client_id: str, redirect_uri: str, **params: str) -> tuple[str, str]:
    """A code-flow request with a fresh PKCE pair, as a hand-written app builds it: the URL
    and the verifier to redeem its code with."""
    verifier = generate_token(64)
    digest = hashlib.sha256(verifier.encode()).digest()
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": "openid",
        "code_challenge": base64.urlsafe_b64encode(digest).rstrip(b"=").decode(),
        "code_challenge_method": "S256",
        **params,
    }
    return f"{server}/authorize?{urlencode(query)}", verifier


def sign_in_with_browser(page: Page, email: str) -> None:
    """Fill in and send the sign-in page the browser is on."""
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
