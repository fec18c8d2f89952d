"""Fixtures for the sign-in tests: an https variant of the app (signing in: `tests.conftest`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from authserver.app import create_app
from authserver.settings import Settings

HTTPS_ISSUER = "https://id.example.com"


@pytest.fixture
def https_settings(settings: Settings) -> Settings:
    return settings.replace(issuer=HTTPS_ISSUER)


@pytest.fixture
def https_client(https_settings: Settings) -> Iterator[TestClient]:
    application = create_app(https_settings)
    with TestClient(application, base_url=HTTPS_ISSUER, follow_redirects=False) as client:
        yield client
