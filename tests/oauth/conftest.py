"""Fixtures for the protocol tests: a signed-in browser, a registered client, and helpers
that run authorize → code → token the way a relying party does; for the clients API, helpers
to look at client rows and to use a client at the token endpoint."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from authserver import db
from authserver.db import current_session
from authserver.oauth import clients, consent
from authserver.oauth.clients import Client
from authserver.services import Services
from authserver.sessions import models as sessions
from authserver.sessions.models import LoginSession
from authserver.users import models as users
from authserver.users.models import User
from tests import factories
from tests.conftest import API

CALLBACK = "https://app.example.com/cb"
VERIFIER = "a-code-verifier-that-is-long-enough-for-rfc-7636-section-4-1"
SCOPE = "openid profile email offline_access"


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


CHALLENGE = challenge_of(VERIFIER)


@dataclass
class RP:
    """A registered relying party: its client record, secret and redirect URI."""

    client: Client
    secret: str | None
    redirect_uri: str = CALLBACK

    @property
    def id(self) -> str:
        return self.client.id

    @property
    def basic(self) -> tuple[str, str]:
        assert self.secret is not None
        return (self.client.id, self.secret)


def location_params(response: httpx.Response) -> dict[str, str]:
    """The query of a redirect back to the client, one value per name (repeats fail)."""
    query = parse_qs(urlsplit(response.headers["location"]).query, keep_blank_values=True)
    assert all(len(values) == 1 for values in query.values()), query
    return {name: values[0] for name, values in query.items()}


def authorization_params(rp: RP, **overrides: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": rp.id,
        "redirect_uri": rp.redirect_uri,
        "scope": "openid profile email",
        "state": "S",
        "nonce": "N",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return {name: value for name, value in params.items() if value is not None}


@pytest.fixture
def now() -> datetime:
    return db.utcnow()


@pytest.fixture
def user(make: factories.Factory, services: Services) -> User:
    created = make.user(email="erin@example.com", name="Erin Example")
    return services.db.call(_verified, created.id)


def _verified(user_id: str) -> User:
    user = users.get(user_id)
    assert user is not None
    user.email_verified = True
    return user


@pytest.fixture
def rp(make: factories.Factory) -> RP:
    client, secret = make.client(
        name="Photo Printer",
        redirect_uris=[CALLBACK],
        scope=SCOPE,
        grant_types=["authorization_code", "refresh_token", "client_credentials"],
    )
    return RP(client, secret)


@pytest.fixture
def public_rp(make: factories.Factory) -> RP:
    client, _ = make.client(
        name="Native App",
        redirect_uris=["http://127.0.0.1/cb"],
        scope=SCOPE,
        auth_method="none",
    )
    return RP(client, None, "http://127.0.0.1/cb")


@pytest.fixture
def sign_in_directly(client: TestClient, services: Services) -> Callable[..., LoginSession]:
    """Sign `user` in without the login page: a session row and its cookie."""

    def start(user: User, *, auth_time: datetime | None = None) -> LoginSession:
        login, raw_sid = services.db.call(
            sessions.start, services.digester, services.settings, user_id=user.id, now=auth_time
        )
        client.cookies.set(sessions.cookie_name(services.settings), raw_sid)
        return login

    return start


@pytest.fixture
def allow(services: Services, now: datetime) -> Callable[..., None]:
    """Remember that `user` allowed `rp` a scope, as clicking Allow does."""

    def allow(user: User, rp: RP, scope: str = SCOPE) -> None:
        services.db.call(consent.remember, user.id, rp.id, scope, now)

    return allow


@dataclass
class Flow:
    """Authorize → code → token, as a relying party runs it."""

    client: TestClient
    sign_in_directly: Callable[..., LoginSession]
    allow: Callable[..., None]

    def code(self, rp: RP, **overrides: str | None) -> str:
        response = self.client.get("/authorize", params=authorization_params(rp, **overrides))
        assert response.status_code == 303, response.text
        params = location_params(response)
        assert "code" in params, params
        return params["code"]

    def exchange(
        self,
        rp: RP,
        code: str,
        *,
        verifier: str = VERIFIER,
        headers: dict[str, str] | None = None,
        **extra: str,
    ) -> httpx.Response:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": rp.redirect_uri,
            "code_verifier": verifier,
            **extra,
        }
        return self.post_token(rp, data, headers)

    def post_token(
        self, rp: RP, data: dict[str, str], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """A token request as `rp` makes it: a public client names itself, a confidential
        one authenticates with its secret."""
        if rp.secret is None:
            return self.client.post("/token", data={**data, "client_id": rp.id}, headers=headers)
        return self.client.post("/token", data=data, auth=rp.basic, headers=headers)

    def tokens(self, rp: RP, user: User, **overrides: str | None) -> dict[str, Any]:
        """Sign in (if needed), consent, authorize and redeem: the token response."""
        self.allow(user, rp)
        response = self.exchange(rp, self.code(rp, **overrides))
        assert response.status_code == 200, response.text
        return response.json()

    def refresh(
        self, rp: RP, refresh_token: str, *, headers: dict[str, str] | None = None, **extra: str
    ) -> httpx.Response:
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token, **extra}
        return self.post_token(rp, data, headers)

    def userinfo(self, access_token: str) -> httpx.Response:
        return self.client.get("/userinfo", headers={"Authorization": f"Bearer {access_token}"})

    def introspect(self, rp: RP, token: str, **extra: str) -> dict[str, Any]:
        response = self.client.post("/introspect", data={"token": token, **extra}, auth=rp.basic)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def flow(
    client: TestClient, sign_in_directly: Callable[..., LoginSession], allow: Callable[..., None]
) -> Flow:
    return Flow(client, sign_in_directly, allow)


@pytest.fixture
def signed_in(user: User, sign_in_directly: Callable[..., LoginSession]) -> LoginSession:
    return sign_in_directly(user)


@pytest.fixture
def ready(flow: Flow, rp: RP, user: User, signed_in: LoginSession) -> RP:
    """A signed-in user who already allowed `rp`: a valid request gets a code at once."""
    flow.allow(user, rp)
    return rp


@pytest.fixture
def issued(flow: Flow, rp: RP, user: User, signed_in: LoginSession) -> dict[str, Any]:
    """Tokens `rp` got for `user` through the whole code flow."""
    return flow.tokens(rp, user)


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch, now: datetime) -> Callable[[float], None]:
    """Freeze the protocol clock (`db.utcnow`) at `now`; call it to move by seconds."""
    current = [now]
    monkeypatch.setattr(db, "utcnow", lambda: current[0])

    def advance(seconds: float) -> None:
        current[0] = current[0] + timedelta(seconds=seconds)

    return advance


# -- the clients API (`/api/v1/clients`) --------------------------------------------------------

CLIENTS = API + "/clients"


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


def client_credentials(client: TestClient, client_id: str, secret: str) -> httpx.Response:
    """A client_credentials request with HTTP Basic authentication (RFC 6749 §4.4)."""
    return client.post(
        "/token",
        data={"grant_type": "client_credentials", "scope": "api"},
        auth=(client_id, secret),
    )
