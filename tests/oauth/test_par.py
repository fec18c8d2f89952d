"""Pushed authorization requests (RFC 9126): /par, then /authorize with the request_uri.

The client side is Authlib's `OAuth2Client` (over the ASGI app), which builds the
authorization request with PKCE; the request is pushed by hand, as RFC 9126 §2.1 shows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client
from starlette.applications import Starlette
from starlette.testclient import TestClient

from authserver.oauth import par
from authserver.services import Services
from authserver.sessions.models import LoginSession
from authserver.users.models import User
from tests import factories
from tests.conftest import count_rows
from tests.oauth.conftest import CALLBACK, RP, SCOPE, authorization_params, location_params
from tests.oauth.test_races import PARALLEL, post_all


@pytest.fixture
def oauth_client(client: TestClient, rp: RP) -> Iterator[OAuth2Client]:
    """Authlib's client, talking to the app through the test client's transport."""
    session = OAuth2Client(
        rp.id,
        rp.secret,
        token_endpoint_auth_method="client_secret_basic",
        scope="openid profile",
        redirect_uri=CALLBACK,
        code_challenge_method="S256",
        transport=client._transport,
        base_url="http://testserver",
    )
    yield session
    session.close()


def pushed_params(oauth_client: OAuth2Client, issuer: str) -> tuple[dict[str, str], str]:
    """The authorization request Authlib builds, as form fields, and its PKCE verifier."""
    verifier = generate_token(64)
    url, _ = oauth_client.create_authorization_url(
        f"{issuer}/authorize", code_verifier=verifier, state="pushed-state", nonce="n-1"
    )
    query = parse_qs(urlsplit(url).query)
    return {name: values[0] for name, values in query.items()}, verifier


def push(client: TestClient, rp: RP, params: dict[str, str]) -> Any:
    response = client.post("/par", data=params, auth=rp.basic)
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()


@pytest.fixture
def consented(user: User, rp: RP, allow: Callable[..., None], signed_in: LoginSession) -> None:
    allow(user, rp)


def test_pushed_request_then_code_then_tokens(
    client: TestClient, rp: RP, oauth_client: OAuth2Client, settings: Any, consented: None
) -> None:
    params, verifier = pushed_params(oauth_client, settings.issuer)
    pushed = push(client, rp, params)
    assert pushed["request_uri"].startswith("urn:ietf:params:oauth:request_uri:")
    assert pushed["expires_in"] == settings.par_ttl

    response = client.get(
        "/authorize",
        params={
            "client_id": rp.id,
            "request_uri": pushed["request_uri"],
            "state": "from-the-query",
            "scope": "openid profile email offline_access",
        },
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"].startswith(CALLBACK)
    answer = location_params(response)
    assert answer["state"] == "pushed-state"
    token = oauth_client.fetch_token(
        f"{settings.issuer}/token",
        grant_type="authorization_code",
        code=answer["code"],
        code_verifier=verifier,
    )
    assert token["scope"] == "openid profile"
    assert "id_token" in token


def test_a_used_request_uri_is_refused(
    client: TestClient, rp: RP, oauth_client: OAuth2Client, settings: Any, consented: None
) -> None:
    params, _ = pushed_params(oauth_client, settings.issuer)
    request_uri = push(client, rp, params)["request_uri"]
    query = {"client_id": rp.id, "request_uri": request_uri}
    assert client.get("/authorize", params=query).status_code == 303
    again = client.get("/authorize", params=query)
    assert again.status_code == 400
    assert "invalid_request_uri" in again.text
    assert "location" not in again.headers


def test_an_expired_request_uri_is_refused(
    client: TestClient,
    rp: RP,
    oauth_client: OAuth2Client,
    settings: Any,
    consented: None,
    frozen: Callable[[float], None],
) -> None:
    params, _ = pushed_params(oauth_client, settings.issuer)
    request_uri = push(client, rp, params)["request_uri"]
    frozen(settings.par_ttl + 1)
    late = client.get("/authorize", params={"client_id": rp.id, "request_uri": request_uri})
    assert late.status_code == 400
    assert "invalid_request_uri" in late.text


def test_the_interaction_carries_only_the_request_uri(
    client: TestClient,
    rp: RP,
    oauth_client: OAuth2Client,
    settings: Any,
    user: User,
    sign_in_directly: Callable[..., LoginSession],
    frozen: Callable[[float], None],
) -> None:
    """Sign-in and consent take longer than `expires_in`: the first use claims it."""
    params, _ = pushed_params(oauth_client, settings.issuer)
    request_uri = push(client, rp, params)["request_uri"]
    query = {"client_id": rp.id, "request_uri": request_uri}
    to_login = client.get("/authorize", params=query)
    assert to_login.status_code == 303
    next_url = parse_qs(urlsplit(to_login.headers["location"]).query)["next"][0]
    assert set(parse_qs(urlsplit(next_url).query)) == {"client_id", "request_uri"}
    frozen(settings.par_ttl + 30)
    sign_in_directly(user)
    to_consent = client.get(next_url)
    assert to_consent.status_code == 303
    assert to_consent.headers["location"].startswith("/consent?")
    page = client.get(to_consent.headers["location"])
    assert page.status_code == 200
    assert "Photo Printer" in page.text
    assert "code_challenge" not in page.text


def test_another_clients_request_uri_is_refused(
    client: TestClient,
    rp: RP,
    public_rp: RP,
    oauth_client: OAuth2Client,
    settings: Any,
    consented: None,
) -> None:
    params, _ = pushed_params(oauth_client, settings.issuer)
    request_uri = push(client, rp, params)["request_uri"]
    other = client.get("/authorize", params={"client_id": public_rp.id, "request_uri": request_uri})
    assert other.status_code == 400
    assert "invalid_request_uri" in other.text


def test_a_request_uri_not_from_par_is_invalid_request_uri(
    client: TestClient, rp: RP, consented: None
) -> None:
    for uri in ("https://rp.example/request.jwt", par.URN_PREFIX + "made-up"):
        response = client.get("/authorize", params={"client_id": rp.id, "request_uri": uri})
        assert response.status_code == 400
        assert "invalid_request_uri" in response.text


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"redirect_uri": "https://evil.example/cb"}, "invalid_request"),
        ({"scope": "openid calendar"}, "invalid_scope"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"request_uri": par.URN_PREFIX + "x"}, "invalid_request"),
        ({"resource": "https://unknown.example/api"}, "invalid_target"),
        ({"prompt": "bogus"}, "invalid_request"),
    ],
)
def test_pushed_parameters_are_validated_as_authorize_would(
    client: TestClient, rp: RP, change: dict[str, str | None], error: str
) -> None:
    params = authorization_params(rp, **change)
    response = client.post("/par", data=params, auth=rp.basic)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"] == error
    assert "location" not in response.headers


def test_a_confidential_client_must_authenticate(client: TestClient, rp: RP) -> None:
    response = client.post("/par", data=authorization_params(rp))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_a_public_client_pushes_with_its_client_id(
    client: TestClient,
    public_rp: RP,
    user: User,
    allow: Callable[..., None],
    signed_in: LoginSession,
) -> None:
    allow(user, public_rp)
    response = client.post("/par", data=authorization_params(public_rp))
    assert response.status_code == 201, response.text
    request_uri = response.json()["request_uri"]
    answer = client.get(
        "/authorize", params={"client_id": public_rp.id, "request_uri": request_uri}
    )
    assert answer.status_code == 303
    assert "code" in location_params(answer)


def test_a_client_that_requires_par_is_refused_without_it(
    client: TestClient,
    make: factories.Factory,
    user: User,
    signed_in: LoginSession,
    allow: Callable[..., None],
) -> None:
    strict, secret = make.client(
        name="Strict",
        redirect_uris=[CALLBACK],
        scope=SCOPE,
        require_pushed_authorization_requests=True,
    )
    rp = RP(strict, secret)
    allow(user, rp)
    plain = client.get("/authorize", params=authorization_params(rp))
    assert plain.status_code == 400
    assert "pushed authorization request" in plain.text
    pushed = client.post("/par", data=authorization_params(rp), auth=rp.basic).json()
    answer = client.get(
        "/authorize", params={"client_id": rp.id, "request_uri": pushed["request_uri"]}
    )
    assert answer.status_code == 303
    assert "code" in location_params(answer)


def test_the_server_can_require_par_of_everyone(
    app_with: Callable[..., TestClient], rp: RP, settings: Any
) -> None:
    strict = app_with(require_par=True)
    assert strict.get("/authorize", params=authorization_params(rp)).status_code == 400
    metadata = strict.get("/.well-known/oauth-authorization-server").json()
    assert metadata["require_pushed_authorization_requests"] is True


def test_advertised_only_when_on(
    client: TestClient, app_with: Callable[..., TestClient], settings: Any, rp: RP
) -> None:
    metadata = client.get("/.well-known/openid-configuration").json()
    assert metadata["pushed_authorization_request_endpoint"] == f"{settings.issuer}/par"
    assert metadata["require_pushed_authorization_requests"] is False
    assert metadata["request_uri_parameter_supported"] is False
    off = app_with(pushed_authorization_requests=False)
    metadata = off.get("/.well-known/openid-configuration").json()
    assert "pushed_authorization_request_endpoint" not in metadata
    assert "require_pushed_authorization_requests" not in metadata
    assert off.post("/par", data=authorization_params(rp), auth=rp.basic).status_code == 404


def test_one_request_uri_answered_twenty_times_at_once(
    app: Starlette,
    client: TestClient,
    rp: RP,
    oauth_client: OAuth2Client,
    settings: Any,
    consented: None,
    services: Services,
) -> None:
    """docs/security.md K81 for pushed requests: one authorization response, one code."""
    params, _ = pushed_params(oauth_client, settings.issuer)
    request_uri = push(client, rp, params)["request_uri"]
    cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
    request = {
        "url": "/authorize",
        "data": {"client_id": rp.id, "request_uri": request_uri},
        "headers": {"Cookie": cookie},
    }
    responses = post_all(app, [request] * PARALLEL)
    statuses = Counter(response.status_code for response in responses)
    assert statuses == Counter({303: 1, 400: PARALLEL - 1})
    assert count_rows(services.db, "authorization_codes") == 1
