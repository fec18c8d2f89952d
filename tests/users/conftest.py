"""Fixtures for the account pages: a real SMTP server on 127.0.0.1 and a browser helper.

The app under test sends its mail through `SmtpMailer` to an aiosmtpd server in this process,
so the tests read the links out of the messages a person would receive.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from starlette.testclient import TestClient

from authserver.db import current_session, utcnow
from authserver.oauth.tokens import TokenFamily
from authserver.services import Services
from authserver.sessions import models as sessions
from authserver.sessions.models import LoginSession
from authserver.settings import Settings
from authserver.users import models as users
from authserver.users.models import User
from tests import factories
from tests.conftest import ISSUER, csrf_token


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class Inbox:
    """The aiosmtpd handler: every accepted message, parsed."""

    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]

    def only(self, address: str) -> EmailMessage:
        received = self.to(address)
        assert len(received) == 1, f"{len(received)} messages to {address}"
        return received[0]

    def link(self, address: str, path: str) -> str:
        """The one link to `path` in the latest message to `address`, relative to the issuer."""
        body = self.to(address)[-1].get_content()
        found = re.findall(re.escape(ISSUER + path) + r"\?token=[A-Za-z0-9_-]+", body)
        assert len(found) == 1, body
        return found[0].removeprefix(ISSUER)


@dataclass
class SmtpServer:
    inbox: Inbox
    port: int

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpServer]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield SmtpServer(inbox, port)
    controller.stop()


@pytest.fixture
def inbox(smtp_server: SmtpServer) -> Iterator[Inbox]:
    smtp_server.inbox.messages.clear()
    yield smtp_server.inbox
    smtp_server.inbox.messages.clear()


@pytest.fixture
def settings(settings: Settings, smtp_server: SmtpServer) -> Settings:
    return settings.replace(smtp_url=smtp_server.url)


def submit(client: TestClient, path: str, **data: str) -> httpx.Response:
    """Open the form at `path` and post it, as a person would."""
    page = client.get(path)
    assert page.status_code == 200, page.text
    return client.post(path.split("?")[0], data={"csrf_token": csrf_token(page), **data})


def signs_in(app: Any, email: str, password: str) -> bool:
    """Whether a fresh browser can sign in with these credentials."""
    with TestClient(app, base_url=ISSUER, follow_redirects=False) as browser:
        return submit(browser, "/login", email=email, password=password).status_code == 303


def user_by_email(services: Services, email: str) -> User | None:
    return services.db.call(users.find_by_email, email)


def open_session(services: Services, user_id: str) -> LoginSession:
    """A session of another browser, started directly."""
    login_session, _ = services.db.call(
        sessions.start, services.digester, services.settings, user_id=user_id
    )
    return login_session


def add_family(
    services: Services,
    make: factories.Factory,
    user_id: str,
    *,
    session_id: str | None,
    offline: bool = False,
) -> str:
    """A token family as the token endpoint would leave it; returns its id."""
    client, _ = make.client()

    def insert() -> str:
        family = TokenFamily(
            client_id=client.id,
            user_id=user_id,
            session_id=session_id,
            scope="openid offline_access" if offline else "openid",
            offline=offline,
            expires_at=utcnow() + timedelta(days=1),
        )
        current_session().add(family)
        current_session().flush()
        return family.id

    return services.db.call(insert)


def family(services: Services, family_id: str) -> TokenFamily:
    found = services.db.call(lambda: current_session().get(TokenFamily, family_id))
    assert found is not None
    return found
