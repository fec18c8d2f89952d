"""Fixtures for the sign-in and sign-out tests: a browser helper and an https variant of the app."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from authserver.app import Services, create_app
from authserver.audit import AuditEvent
from authserver.db import current_session
from authserver.sessions.models import LoginSession
from authserver.settings import Settings
from authserver.users import models as users
from tests import factories

HTTPS_ISSUER = "https://id.example.com"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')

SignIn = Callable[..., httpx.Response]


def csrf_token(page: httpx.Response) -> str:
    match = CSRF_INPUT.search(page.text)
    assert match, "the page has no CSRF token"
    return match.group(1)


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


@pytest.fixture
def app_with() -> Iterator[Callable[..., TestClient]]:
    """Clients for apps built from changed settings: `app_with(settings, login_rate_per_ip=3)`."""
    with ExitStack() as stack:

        def build(settings: Settings, **changes: Any) -> TestClient:
            application = create_app(settings.replace(**changes))
            client = TestClient(application, base_url=settings.issuer, follow_redirects=False)
            return stack.enter_context(client)

        yield build


def sessions_of(services: Services, user_id: str) -> list[LoginSession]:
    def query() -> list[LoginSession]:
        rows = current_session().scalars(
            select(LoginSession).where(LoginSession.user_id == user_id)
        )
        return list(rows)

    return services.db.call(query)


def audit_events(services: Services, event: str) -> list[AuditEvent]:
    def query() -> list[AuditEvent]:
        rows = current_session().scalars(select(AuditEvent).where(AuditEvent.event == event))
        return list(rows)

    return services.db.call(query)


def update_user(services: Services, user_id: str, **fields: Any) -> None:
    def update() -> None:
        user = users.get(user_id)
        assert user is not None
        for name, value in fields.items():
            setattr(user, name, value)

    services.db.call(update)


def is_signed_in(client: TestClient) -> bool:
    page = client.get("/login")
    assert page.status_code == 200
    return "You are signed in as" in page.text
