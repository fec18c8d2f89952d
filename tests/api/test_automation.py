"""An operator-trusted client administering through client_credentials (issue 4, SPEC §7).

The `admin` scope reaches a client only through its registration, and it counts only while
the registration still carries it (docs/security.md J78), checked on every request.
"""

from __future__ import annotations

from sqlalchemy import select
from starlette.testclient import TestClient

from authserver.audit import AuditEvent
from authserver.db import current_session
from authserver.oauth import clients
from tests.factories import Factory


def client_token(client: TestClient, client_id: str, secret: str, scope: str) -> dict:
    response = client.post(
        "/token",
        data={"grant_type": "client_credentials", "scope": scope},
        auth=(client_id, secret),
    )
    return {"status": response.status_code, **response.json()}


def automation(make: Factory, scope: str = "admin") -> tuple[str, str]:
    registered, secret = make.client(
        name="Provisioning bot", grant_types=["client_credentials"], redirect_uris=[], scope=scope
    )
    assert secret is not None
    return registered.id, secret


def test_a_client_registered_for_admin_administers_users(
    client: TestClient, make: Factory, services
) -> None:
    bot_id, secret = automation(make)
    issued = client_token(client, bot_id, secret, "admin")
    assert issued["status"] == 200
    headers = {"Authorization": f"Bearer {issued['access_token']}"}

    created = client.post(
        "/api/v1/users",
        json={"email": "new.hire@example.com", "name": "New Hire", "password": "a long password"},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    listed = client.get("/api/v1/users", params={"email": "new.hire@example.com"}, headers=headers)
    assert listed.status_code == 200
    assert [u["email"] for u in listed.json()["items"]] == ["new.hire@example.com"]
    assert client.get("/api/v1/audit", headers=headers).status_code == 200

    def actors() -> set[tuple[str, str | None]]:
        rows = current_session().scalars(
            select(AuditEvent).where(AuditEvent.event == "user.created")
        )
        return {(row.actor_type, row.actor_id) for row in rows}

    assert ("client", bot_id) in services.db.call(actors)


def test_admin_stops_counting_when_the_registration_drops_it(
    client: TestClient, make: Factory, services
) -> None:
    """docs/security.md J78: the next request after the operator's change is refused."""
    bot_id, secret = automation(make, scope="admin users:read")
    token = client_token(client, bot_id, secret, "admin")["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/users", headers=headers).status_code == 200

    def drop_admin() -> None:
        found = clients.get(bot_id)
        assert found is not None
        found.scope = "users:read"

    services.db.call(drop_admin)
    refused = client.get("/api/v1/users", headers=headers)
    assert refused.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]


def test_a_client_cannot_ask_for_admin_it_was_not_registered_for(
    client: TestClient, make: Factory
) -> None:
    bot_id, secret = automation(make, scope="users:read")
    issued = client_token(client, bot_id, secret, "admin")
    assert issued["status"] == 400
    assert issued["error"] == "invalid_scope"


def test_a_client_token_without_admin_reaches_no_admin_route(
    client: TestClient, make: Factory
) -> None:
    bot_id, secret = automation(make, scope="users:read")
    token = client_token(client, bot_id, secret, "users:read")["access_token"]
    response = client.get("/api/v1/users", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
