"""Two people for the identity API, paths under `/api/v1`, grants that hold real refresh
tokens, and a snapshot of every row the API could touch, so a refused request can be shown
to have changed nothing (docs/security.md §0 "Nothing changed").

The administrator, `person`, `Api` and `is_problem` are shared: see `tests/conftest.py`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from authserver import db
from authserver.db import current_session
from authserver.oauth import consent
from authserver.oauth import tokens as token_store
from authserver.oauth.clients import Client
from authserver.oauth.consent import Consent
from authserver.oauth.tokens import AccessToken, TokenFamily
from authserver.resource_server import InvalidToken
from authserver.security import new_token
from authserver.services import Services
from authserver.sessions.models import LoginSession
from authserver.users.models import User
from tests import factories
from tests.conftest import API, Api
from tests.factories import Person


@pytest.fixture
def api(client: TestClient) -> Api:
    """Paths under `/api/v1`: `api.call("GET", "/users/me", token)`."""
    return Api(client, base=API)


@pytest.fixture
def alice(person: Callable[..., Person]) -> Person:
    return person("alice@example.com", name="Alice")


@pytest.fixture
def bob(person: Callable[..., Person]) -> Person:
    return person("bob@example.com", name="Bob")


@dataclass
class Grant:
    """What an application holds after a person allowed it: a consent, a token family bound
    to a browser session, a live access token and a refresh token."""

    client: Client
    secret: str
    issued: factories.IssuedToken
    refresh_token: str
    consent_id: str

    @property
    def basic(self) -> tuple[str, str]:
        return (self.client.id, self.secret)


@pytest.fixture
def grant(
    make: factories.Factory, tokens: factories.TokenFactory, services: Services
) -> Callable[..., Grant]:
    def build(user: User, scope: str = "openid profile", *, offline: bool = False) -> Grant:
        client, secret = make.client(grant_types=["authorization_code", "refresh_token"])
        assert secret is not None
        issued = tokens.access_token(user, scope, client=client, offline=offline)
        raw = new_token()

        def store() -> str:
            family = current_session().get(TokenFamily, issued.family_id)
            assert family is not None
            now = db.utcnow()
            token_store.add_refresh_token(services.digester, raw, family, now, 3600)
            return consent.remember(user.id, client.id, scope, now).id

        consent_id = services.db.call(store)
        return Grant(client, secret, issued, raw, consent_id)

    return build


def refresh(client: TestClient, grant: Grant) -> httpx.Response:
    """A real refresh at /token, as the application would make it: on success the grant
    holds the successor, so the next refresh is a legitimate one, not a replay."""
    data = {"grant_type": "refresh_token", "refresh_token": grant.refresh_token}
    response = client.post("/token", data=data, auth=grant.basic)
    if response.status_code == 200:
        grant.refresh_token = response.json().get("refresh_token", grant.refresh_token)
    return response


def introspect(client: TestClient, grant: Grant, token: str) -> bool:
    response = client.post("/introspect", data={"token": token}, auth=grant.basic)
    assert response.status_code == 200
    return bool(response.json()["active"])


def token_is_live(services: Services, issued: factories.IssuedToken) -> bool:
    """Both views a resource server and /token have: the bearer verifier and the family."""

    def check() -> tuple[bool, bool]:
        try:
            services.verify_access_token(issued.token, audience=services.settings.api_audience)
            verified = True
        except InvalidToken:
            verified = False
        family = current_session().get(TokenFamily, issued.family_id)
        family_live = family is not None and token_store.family_is_live(family, db.utcnow())
        return verified, family_live

    verified, family_live = services.db.call(check)
    assert verified == family_live, "the verifier and the family disagree"
    return verified


def rows(services: Services) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the identity API reads or writes, as plain tuples."""

    def read() -> dict[str, list[tuple[Any, ...]]]:
        session = current_session()
        tables: dict[str, Any] = {
            "users": select(
                User.id, User.email, User.name, User.password_hash, User.is_admin,
                User.is_active, User.email_verified, User.updated_at,
            ).order_by(User.id),
            "sessions": select(LoginSession.id, LoginSession.user_id, LoginSession.ended_at)
            .order_by(LoginSession.id),
            "families": select(TokenFamily.id, TokenFamily.revoked_at).order_by(TokenFamily.id),
            "access_tokens": select(AccessToken.jti, AccessToken.revoked_at)
            .order_by(AccessToken.jti),
            "consents": select(Consent.id, Consent.user_id, Consent.scope, Consent.updated_at)
            .order_by(Consent.id),
        }  # fmt: skip
        return {
            name: [tuple(row) for row in session.execute(query)] for name, query in tables.items()
        }

    return services.db.call(read)
