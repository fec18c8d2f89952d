"""Helpers to look at client rows and to use a client at the token endpoint the way a
relying party would. The administrator with an `admin` token, `Api` and `is_problem` are
shared: see `tests/conftest.py`."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select
from starlette.testclient import TestClient

from authserver.db import current_session
from authserver.oauth import clients
from authserver.oauth.clients import Client
from authserver.services import Services
from tests.conftest import API

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
