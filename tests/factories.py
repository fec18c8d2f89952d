"""Test data builders: one call makes a valid user, client or organization."""

from __future__ import annotations

import itertools
from typing import Any

from authserver.app import Services
from authserver.oauth import clients
from authserver.oauth.clients import Client
from authserver.organizations import models as orgs
from authserver.organizations.models import Organization
from authserver.users import models as users
from authserver.users.models import User

PASSWORD = "correct horse battery staple"
_counter = itertools.count(1)


class Factory:
    def __init__(self, services: Services) -> None:
        self.services = services

    def user(self, email: str | None = None, password: str = PASSWORD, **fields: Any) -> User:
        email = email or f"user{next(_counter)}@example.com"
        password_hash = self.services.passwords.hash(password)
        return self.services.db.call(
            users.create, email=email, password_hash=password_hash, **fields
        )

    def client(self, **fields: Any) -> tuple[Client, str | None]:
        fields.setdefault("name", "Example App")
        fields.setdefault("redirect_uris", ["https://app.example.com/cb"])
        return self.services.db.call(clients.create, self.services.digester, **fields)

    def organization(self, owner: User, name: str = "Acme") -> Organization:
        return self.services.db.call(orgs.create, name=name, owner_id=owner.id)
