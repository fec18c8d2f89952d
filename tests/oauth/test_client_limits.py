"""Per-client budgets at /token, /revoke and /introspect (SPEC §8; docs/security.md M100)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from starlette.testclient import TestClient

from tests import factories
from tests.oauth.conftest import RP

AppWith = Callable[..., TestClient]


def client_credentials(client: TestClient, rp: RP) -> httpx.Response:
    return client.post("/token", data={"grant_type": "client_credentials"}, auth=rp.basic)


def assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"] == "slow_down"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers["cache-control"] == "no-store"


def test_token_requests_past_the_budget_get_429_and_other_clients_do_not(
    app_with: AppWith, rp: RP, make: factories.Factory
) -> None:
    """M100: token endpoint per client, 429 with Retry-After."""
    client = app_with(token_rate_per_client=3)
    other = RP(*make.client(name="Other", grant_types=["client_credentials"], scope="openid"))

    answers = [client_credentials(client, rp).status_code for _ in range(3)]
    throttled = client_credentials(client, rp)

    assert answers == [200, 200, 200]
    assert_throttled(throttled)
    assert "access_token" not in throttled.text
    assert client_credentials(client, other).status_code == 200


def test_failed_authentication_does_not_spend_the_named_clients_budget(
    app_with: AppWith, rp: RP
) -> None:
    """Only an authenticated client is counted: naming a client with a wrong secret cannot
    lock the real one out."""
    client = app_with(token_rate_per_client=3)
    impostor = RP(rp.client, "not-the-secret")

    failures = [client_credentials(client, impostor).status_code for _ in range(10)]

    assert set(failures) == {401}
    assert [client_credentials(client, rp).status_code for _ in range(3)] == [200, 200, 200]


def test_revocation_and_introspection_have_budgets_of_their_own(app_with: AppWith, rp: RP) -> None:
    """M100: introspection per resource server; a busy token endpoint does not starve it."""
    client = app_with(token_rate_per_client=2)
    token = client_credentials(client, rp).json()["access_token"]
    client_credentials(client, rp)
    assert_throttled(client_credentials(client, rp))

    introspected = [
        client.post("/introspect", data={"token": token}, auth=rp.basic) for _ in range(3)
    ]
    assert [r.status_code for r in introspected[:2]] == [200, 200]
    assert introspected[0].json()["active"] is True
    assert_throttled(introspected[2])

    revoked = [client.post("/revoke", data={"token": token}, auth=rp.basic) for _ in range(3)]
    assert [r.status_code for r in revoked[:2]] == [200, 200]
    assert_throttled(revoked[2])
