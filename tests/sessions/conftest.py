"""Fixtures for the sign-in and sign-out tests: a browser helper and an https variant of the app."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from starlette.testclient import TestClient

from authserver.app import create_app
from authserver.settings import Settings
from tests import factories
from tests.conftest import csrf_token

HTTPS_ISSUER = "https://id.example.com"

SignIn = Callable[..., httpx.Response]


@pytest.fixture
def sign_in() -> SignIn:
    """Open /login in `client` and submit it, as a person would."""

    def submit(
        client: TestClient,
        email: str,
        password: str = factories.PASSWORD,
        **fields: str,
    ) -> httpx.Response:
        page = client.get("/login")
        data = {"csrf_token": csrf_token(page), "email": email, "password": password, **fields}
        return client.post("/login", data=data)

    return submit


@pytest.fixture
def https_settings(settings: Settings) -> Settings:
    return settings.replace(issuer=HTTPS_ISSUER)


@pytest.fixture
def https_client(https_settings: Settings) -> Iterator[TestClient]:
    application = create_app(https_settings)
    with TestClient(application, base_url=HTTPS_ISSUER, follow_redirects=False) as client:
        yield client


def is_signed_in(client: TestClient) -> bool:
    page = client.get("/login")
    assert page.status_code == 200
    return "You are signed in as" in page.text
