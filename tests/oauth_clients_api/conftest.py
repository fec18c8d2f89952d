"""An administrator with an `admin` token, and helpers to call `/api/v1/clients` and to use
a client at the token endpoint the way a relying party would."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from authserver.app import Services
from authserver.audit import AuditEvent
from authserver.db import current_session
from authserver.oauth import clients
from authserver.oauth.clients import Client
from authserver.users.models import User
from tests import factories

CLIENTS = "/api/v1/clients"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Admin:
    user: User
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


@pytest.fixture
def admin(make: factories.Factory, tokens: factories.TokenFactory) -> Admin:
    user = make.user(email="root@example.com", is_admin=True)
    return Admin(user, tokens.access_token(user, "admin").token)


class Api:
    def __init__(self, client: TestClient) -> None:
        self.client = client

    def call(
        self, method: str, path: str, token: str | None = None, body: Any = None, **kw: Any
    ) -> httpx.Response:
        headers = {**(bearer(token) if token else {}), **kw.pop("headers", {})}
        if body is not None:
            kw["json"] = body
        return self.client.request(method, path, headers=headers, **kw)


@pytest.fixture
def api(client: TestClient) -> Api:
    return Api(client)


def stored(services: Services, client_id: str) -> Client | None:
    return services.db.call(clients.get, client_id)


def all_clients(services: Services) -> list[tuple[Any, ...]]:
    """Every client row as plain values, to compare before and after a refused request."""

    def read() -> list[tuple[Any, ...]]:
        rows = current_session().scalars(select(Client).order_by(Client.id))
        return [
            (c.id, c.name, c.secret_digest, tuple(c.redirect_uris), c.scope, c.is_active)
            for c in rows
        ]

    return services.db.call(read)


def audit_events(services: Services, prefix: str = "client.") -> list[AuditEvent]:
    def read() -> list[AuditEvent]:
        query = select(AuditEvent).where(AuditEvent.event.startswith(prefix))
        return list(current_session().scalars(query.order_by(AuditEvent.at)))

    return services.db.call(read)


def client_credentials(client: TestClient, client_id: str, secret: str) -> httpx.Response:
    """A client_credentials request with HTTP Basic authentication (RFC 6749 §4.4)."""
    return client.post(
        "/token",
        data={"grant_type": "client_credentials", "scope": "api"},
        auth=(client_id, secret),
    )


def is_problem(response: httpx.Response, status: int) -> bool:
    body = response.json()
    return (
        response.status_code == status
        and response.headers["content-type"] == "application/problem+json"
        and body["status"] == status
        and isinstance(body["detail"], str)
    )
