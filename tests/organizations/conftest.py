"""Two tenants for the organization API: Alice owns Acme, Bob owns Bobco (with Carol as a
member), each holding a live API token for both organization scopes, plus helpers to look
at the rows directly, so a test can prove that a refused request changed nothing.

The administrator (in no organization), `Api` and `is_problem` are shared: see
`tests/conftest.py`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from authserver.db import current_session
from authserver.organizations.models import Membership, Organization
from authserver.services import Services
from authserver.users.models import User
from tests import factories
from tests.conftest import API
from tests.factories import Person

SCOPES = "organizations:read organizations:write"


@dataclass
class Tenant(Person):
    """A person with a token of theirs, and the organization they own."""

    organization: Organization

    @property
    def org_path(self) -> str:
        return f"{API}/organizations/{self.organization.id}"


def owner(
    make: factories.Factory, tokens: factories.TokenFactory, email: str, name: str, org: str
) -> Tenant:
    user = make.user(email=email, name=name)
    organization = make.organization(user, name=org)
    return Tenant(user, tokens.access_token(user, SCOPES), organization)


@pytest.fixture
def alice(make: factories.Factory, tokens: factories.TokenFactory) -> Tenant:
    return owner(make, tokens, "alice@example.com", "Alice", "Acme")


@pytest.fixture
def bob(make: factories.Factory, tokens: factories.TokenFactory) -> Tenant:
    return owner(make, tokens, "bob@example.com", "Bob", "Bobco")


@pytest.fixture
def carol(person: Callable[..., Person], services: Services, bob: Tenant) -> Person:
    """A plain member of Bobco."""
    carol = person("carol@example.com", SCOPES, name="Carol")
    join(services, bob.organization, carol.user, "member")
    return carol


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
