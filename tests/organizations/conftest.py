"""Two tenants for the organization API: Alice owns Acme, Bob owns Bobco (with Carol as a
member), each holding a live API token for both organization scopes, plus helpers to look
at the rows directly, so a test can prove that a refused request changed nothing."""

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
from authserver.organizations.models import Membership, Organization
from authserver.users.models import User
from tests import factories

SCOPES = "organizations:read organizations:write"
API = "/api/v1"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Tenant:
    """A user, the organization they own, and a token of theirs."""

    user: User
    organization: Organization
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)

    @property
    def org_path(self) -> str:
        return f"{API}/organizations/{self.organization.id}"


@dataclass
class Person:
    user: User
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


class Api:
    """The HTTP client with a JSON body helper: `api.call("PATCH", path, token, {...})`."""

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


@pytest.fixture
def alice(make: factories.Factory, tokens: factories.TokenFactory) -> Tenant:
    user = make.user(email="alice@example.com", name="Alice")
    organization = make.organization(user, name="Acme")
    return Tenant(user, organization, tokens.access_token(user, SCOPES).token)


@pytest.fixture
def bob(make: factories.Factory, tokens: factories.TokenFactory) -> Tenant:
    user = make.user(email="bob@example.com", name="Bob")
    organization = make.organization(user, name="Bobco")
    return Tenant(user, organization, tokens.access_token(user, SCOPES).token)


@pytest.fixture
def carol(
    make: factories.Factory, tokens: factories.TokenFactory, services: Services, bob: Tenant
) -> Person:
    """A plain member of Bobco."""
    user = make.user(email="carol@example.com", name="Carol")
    join(services, bob.organization, user, "member")
    return Person(user, tokens.access_token(user, SCOPES).token)


@pytest.fixture
def admin(make: factories.Factory, tokens: factories.TokenFactory) -> Person:
    """A server administrator (with the `admin` scope) who belongs to no organization."""
    user = make.user(email="root@example.com", is_admin=True)
    return Person(user, tokens.access_token(user, "admin").token)


def join(services: Services, organization: Organization, user: User, role: str) -> None:
    def add() -> None:
        current_session().add(
            Membership(organization_id=organization.id, user_id=user.id, role=role)
        )

    services.db.call(add)


def role_of(services: Services, organization: Organization, user: User) -> str | None:
    def read() -> str | None:
        membership = current_session().get(Membership, (organization.id, user.id))
        return membership.role if membership else None

    return services.db.call(read)


def rows(services: Services) -> dict[str, list[tuple[Any, ...]]]:
    """Every organization and membership as plain tuples, to compare before and after."""

    def read() -> dict[str, list[tuple[Any, ...]]]:
        session = current_session()
        organizations = session.execute(
            select(Organization.id, Organization.name, Organization.updated_at).order_by(
                Organization.id
            )
        )
        memberships = session.execute(
            select(Membership.organization_id, Membership.user_id, Membership.role).order_by(
                Membership.organization_id, Membership.user_id
            )
        )
        return {
            "organizations": [tuple(row) for row in organizations],
            "memberships": [tuple(row) for row in memberships],
        }

    return services.db.call(read)


def audit_events(services: Services, prefix: str = "organization.") -> list[AuditEvent]:
    def read() -> list[AuditEvent]:
        query = (
            select(AuditEvent).where(AuditEvent.event.startswith(prefix)).order_by(AuditEvent.at)
        )
        return list(current_session().scalars(query))

    return services.db.call(read)


def is_problem(response: httpx.Response, status: int) -> bool:
    """An RFC 9457 answer with the given status."""
    body = response.json()
    return (
        response.status_code == status
        and response.headers["content-type"] == "application/problem+json"
        and body["status"] == status
        and isinstance(body["detail"], str)
    )
