"""RFC 8707 resource indicators, introspection by the resource a token is for, and the
RFC 9728 metadata of this server's API; plus the small fixes that came with them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest
from starlette.testclient import TestClient

from authserver import dpop
from authserver.oauth import resources
from authserver.resource_server import API_SCOPES
from authserver.services import Services
from authserver.sessions.models import LoginSession
from authserver.users.models import User
from tests import factories
from tests.conftest import API_CHALLENGE, API_METADATA, ISSUER
from tests.oauth.conftest import RP, SCOPE, Flow, authorization_params, location_params

PHOTOS = "https://photos.example.com"
CALENDAR = "https://calendar.example.com/v2"
API_AUDIENCE = f"{ISSUER}/api/v1"
RP_SCOPE = f"{SCOPE} photos:read photos:write calendar:read users:read"


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def assert_invalid_target(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_target"
    assert response.headers["cache-control"] == "no-store"


@pytest.fixture
def registered(services: Services) -> None:
    def register() -> None:
        resources.create(services.settings, uri=PHOTOS, scopes=["photos:read", "photos:write"])
        resources.create(services.settings, uri=CALENDAR, scopes=["calendar:read"])

    services.db.call(register)


@pytest.fixture
def app_rp(make: factories.Factory) -> RP:
    client, secret = make.client(
        name="Photo Printer",
        redirect_uris=["https://app.example.com/cb"],
        scope=RP_SCOPE,
        grant_types=["authorization_code", "refresh_token"],
    )
    return RP(client, secret)


@pytest.fixture
def consented(
    flow: Flow, app_rp: RP, user: User, signed_in: LoginSession, registered: None
) -> None:
    flow.allow(user, app_rp, RP_SCOPE)


def authorize(flow: Flow, rp: RP, scope: str, *targets: str) -> httpx.Response:
    """An authorization request naming each of `targets` as a `resource`."""
    params = list(authorization_params(rp, scope=scope).items())
    params += [("resource", target) for target in targets]
    return flow.client.get("/authorize?" + urlencode(params))


def code_for(flow: Flow, rp: RP, scope: str, *targets: str) -> str:
    response = authorize(flow, rp, scope, *targets)
    assert response.status_code == 303, response.text
    return location_params(response)["code"]


def tokens_for(flow: Flow, rp: RP, scope: str, *targets: str, **extra: str) -> dict[str, Any]:
    response = flow.exchange(rp, code_for(flow, rp, scope, *targets), **extra)
    assert response.status_code == 200, response.text
    return response.json()


def post_token(client: TestClient, rp: RP, data: list[tuple[str, str]]) -> httpx.Response:
    return client.post(
        "/token",
        content=urlencode(data),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=rp.basic,
    )


# -- the authorization code flow --------------------------------------------------------------


@pytest.mark.usefixtures("consented")
def test_a_token_for_a_resource_is_for_it_alone_with_its_scopes(
    flow: Flow, app_rp: RP, user: User
) -> None:
    """RFC 8707 §2: `aud` is the resource; the token carries only the scopes it accepts, and
    the OpenID Connect scopes stay with the ID token (see `resources`)."""
    issued = tokens_for(flow, app_rp, "openid profile photos:read", PHOTOS)
    claims = claims_of(issued["access_token"])
    assert claims["aud"] == PHOTOS
    assert claims["scope"] == "photos:read"
    assert issued["scope"] == "openid profile photos:read"
    id_token = claims_of(issued["id_token"])
    assert id_token["aud"] == app_rp.id
    assert id_token["name"] == "Erin Example"
    assert flow.userinfo(issued["access_token"]).status_code == 401


@pytest.mark.usefixtures("consented")
def test_without_a_resource_the_token_is_for_this_servers_api_as_before(
    flow: Flow, app_rp: RP
) -> None:
    issued = tokens_for(flow, app_rp, "openid email users:read")
    assert claims_of(issued["access_token"])["aud"] == API_AUDIENCE
    assert claims_of(issued["access_token"])["scope"] == "openid email users:read"
    assert flow.userinfo(issued["access_token"]).status_code == 200

    named = tokens_for(flow, app_rp, "openid email users:read", API_AUDIENCE)
    assert claims_of(named["access_token"])["aud"] == API_AUDIENCE
    assert flow.userinfo(named["access_token"]).json()["email"] == "erin@example.com"


@pytest.mark.usefixtures("consented")
@pytest.mark.parametrize(
    ("scope", "targets"),
    [
        ("openid photos:read", ["https://unknown.example.com"]),
        ("openid photos:read", ["/relative/path"]),
        ("openid photos:read", [f"{PHOTOS}#fragment"]),
        ("openid photos:read", ["https://[unbalanced/"]),
        ("openid calendar:read", [PHOTOS]),
        ("openid users:read", [PHOTOS]),
        ("openid profile", [PHOTOS]),
        ("openid photos:read", [PHOTOS, CALENDAR]),
    ],
)
def test_an_unknown_malformed_or_unsuitable_resource_is_invalid_target_at_authorize(
    flow: Flow, app_rp: RP, scope: str, targets: list[str]
) -> None:
    """RFC 8707 §2: an error redirect once the client and redirect URI are trusted. A
    resource none of the requested scopes is for is refused too: the person consents to
    scopes, so a token for an API they were not asked about is not on offer."""
    response = authorize(flow, app_rp, scope, *targets)
    assert response.status_code == 303
    assert response.headers["location"].startswith(app_rp.redirect_uri + "?")
    params = location_params(response)
    assert params["error"] == "invalid_target"
    assert params["state"] == "S"
    assert params["iss"] == ISSUER
    assert "code" not in params


@pytest.mark.usefixtures("consented")
def test_an_unregistered_redirect_uri_still_gets_an_error_page_not_a_redirect(
    flow: Flow, app_rp: RP
) -> None:
    params = authorization_params(app_rp, redirect_uri="https://evil.example/cb")
    response = flow.client.get("/authorize?" + urlencode({**params, "resource": "nope"}))
    assert response.status_code == 400
    assert "location" not in response.headers


@pytest.mark.usefixtures("consented")
def test_at_the_token_endpoint_the_resource_must_be_one_of_the_codes(
    flow: Flow, app_rp: RP
) -> None:
    code = code_for(flow, app_rp, "openid photos:read calendar:read", PHOTOS, CALENDAR)
    assert_invalid_target(flow.exchange(app_rp, code, resource=API_AUDIENCE))
    assert_invalid_target(flow.exchange(app_rp, code, resource="https://unknown.example.com"))
    data = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", app_rp.redirect_uri),
        ("code_verifier", "a-code-verifier-that-is-long-enough-for-rfc-7636-section-4-1"),
        ("resource", PHOTOS),
        ("resource", CALENDAR),
    ]
    assert_invalid_target(post_token(flow.client, app_rp, data))

    issued = flow.exchange(app_rp, code, resource=CALENDAR)
    assert issued.status_code == 200, issued.text
    claims = claims_of(issued.json()["access_token"])
    assert (claims["aud"], claims["scope"]) == (CALENDAR, "calendar:read")


@pytest.mark.usefixtures("consented")
def test_refresh_narrows_to_one_of_the_grants_resources_and_never_widens(
    flow: Flow, app_rp: RP
) -> None:
    issued = tokens_for(
        flow, app_rp, "openid offline_access photos:read calendar:read", PHOTOS, CALENDAR
    )
    claims = claims_of(issued["access_token"])
    assert claims["aud"] == [PHOTOS, CALENDAR]
    assert claims["scope"] == "photos:read calendar:read"

    refresh = issued["refresh_token"]
    assert_invalid_target(flow.refresh(app_rp, refresh, resource=API_AUDIENCE))
    assert_invalid_target(flow.refresh(app_rp, refresh, resource="https://unknown.example.com"))
    assert_invalid_target(flow.refresh(app_rp, refresh, resource=PHOTOS, scope="calendar:read"))

    narrowed = flow.refresh(app_rp, refresh, resource=CALENDAR)
    assert narrowed.status_code == 200, narrowed.text
    claims = claims_of(narrowed.json()["access_token"])
    assert (claims["aud"], claims["scope"]) == (CALENDAR, "calendar:read")
    assert narrowed.json()["scope"] == "openid offline_access calendar:read"

    again = flow.refresh(app_rp, narrowed.json()["refresh_token"], resource=PHOTOS)
    assert claims_of(again.json()["access_token"])["aud"] == PHOTOS


@pytest.mark.usefixtures("consented")
def test_a_grant_without_resources_refreshes_for_this_servers_api_only(
    flow: Flow, app_rp: RP
) -> None:
    issued = tokens_for(flow, app_rp, "openid offline_access users:read")
    assert_invalid_target(flow.refresh(app_rp, issued["refresh_token"], resource=PHOTOS))
    refreshed = flow.refresh(app_rp, issued["refresh_token"], resource=API_AUDIENCE)
    assert refreshed.status_code == 200, refreshed.text
    assert claims_of(refreshed.json()["access_token"])["aud"] == API_AUDIENCE


# -- client credentials -----------------------------------------------------------------------


@pytest.fixture
def machine(make: factories.Factory) -> RP:
    client, secret = make.client(
        name="Batch job",
        redirect_uris=[],
        grant_types=["client_credentials"],
        scope="photos:read calendar:read",
    )
    return RP(client, secret)


@pytest.mark.usefixtures("registered")
def test_client_credentials_for_a_resource(client: TestClient, machine: RP) -> None:
    def request(**extra: str) -> httpx.Response:
        data = {"grant_type": "client_credentials", **extra}
        return client.post("/token", data=data, auth=machine.basic)

    issued = request(scope="photos:read", resource=PHOTOS)
    assert issued.status_code == 200, issued.text
    claims = claims_of(issued.json()["access_token"])
    assert (claims["aud"], claims["scope"], claims["sub"]) == (PHOTOS, "photos:read", machine.id)

    assert_invalid_target(request(scope="photos:read", resource=CALENDAR))
    assert_invalid_target(request(scope="photos:read", resource="https://unknown.example.com"))
    assert_invalid_target(request(scope="photos:read", resource="photos"))
    without = request(scope="photos:read")
    assert claims_of(without.json()["access_token"])["aud"] == machine.id


# -- introspection by the resource a token is for ---------------------------------------------


@pytest.mark.usefixtures("consented")
def test_a_resource_server_is_told_only_about_tokens_for_its_resource(
    flow: Flow, app_rp: RP, make: factories.Factory, services: Services
) -> None:
    albums = RP(*make.resource_server("https://albums.example.com", ["photos:read"], "Albums"))
    maps = RP(*make.resource_server("https://maps.example.com", ["calendar:read"], "Maps"))
    code = code_for(flow, app_rp, "openid photos:read", "https://albums.example.com")
    token = flow.exchange(app_rp, code).json()["access_token"]

    described = flow.introspect(albums, token)
    assert described["active"] is True
    assert described["aud"] == "https://albums.example.com"
    assert flow.introspect(maps, token) == {"active": False}


# -- RFC 9728 and RFC 6750 --------------------------------------------------------------------


def test_the_api_publishes_its_protected_resource_metadata(client: TestClient) -> None:
    response = client.get("/.well-known/oauth-protected-resource/api/v1")
    assert response.status_code == 200
    document = response.json()
    assert document == {
        "resource": API_AUDIENCE,
        "authorization_servers": [ISSUER],
        "scopes_supported": list(API_SCOPES),
        "bearer_methods_supported": ["header"],
        "resource_name": "authserver identity API",
        "dpop_signing_alg_values_supported": list(dpop.ALGORITHMS),
    }
    assert response.headers["access-control-allow-origin"] == "*"
    assert "public" in response.headers["cache-control"]
    assert f"{ISSUER}/.well-known/oauth-protected-resource/api/v1" == API_METADATA
    discovery = client.get("/.well-known/openid-configuration").json()
    assert document["authorization_servers"] == [discovery["issuer"]]


@pytest.mark.parametrize(
    ("header", "status", "error"),
    [
        (None, 401, None),
        ("Bearer not-a-token", 401, "invalid_token"),
        ("Basic abc", 401, None),
        ("Bearer a b", 400, "invalid_request"),
    ],
)
def test_every_api_refusal_points_at_the_metadata(
    client: TestClient, header: str | None, status: int, error: str | None
) -> None:
    """RFC 9728 §5.1, RFC 6750 §3: the same challenge from /api/v1 and /userinfo."""
    headers = {"Authorization": header} if header else {}
    for path in ("/api/v1/users/me", "/userinfo"):
        response = client.get(path, headers=headers)
        assert response.status_code == status, (path, response.text)
        challenge = response.headers["www-authenticate"]
        if error is None:
            assert challenge == API_CHALLENGE
        else:
            assert challenge.startswith(f'{API_CHALLENGE}, error="{error}"'), (path, challenge)


@pytest.mark.parametrize(
    "path",
    [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
        "/jwks.json",
        "/.well-known/oauth-protected-resource/api/v1",
    ],
)
def test_public_documents_answer_any_origin_and_its_preflight(
    client: TestClient, path: str
) -> None:
    origin = {"Origin": "https://anyone.example"}
    assert client.get(path, headers=origin).headers["access-control-allow-origin"] == "*"
    preflight = client.options(path, headers={**origin, "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "GET" in preflight.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in preflight.headers


# -- the small fixes --------------------------------------------------------------------------


def test_a_throttled_browser_app_can_read_the_429(
    app_with: Callable[..., TestClient], make: factories.Factory
) -> None:
    """A 429 raised by the per-client budget carries the CORS headers of the app's origin,
    at /token and /revoke, so the page can read Retry-After."""
    origin = "https://spa.example"
    spa, _ = make.client(
        name="SPA", redirect_uris=[f"{origin}/cb"], scope=SCOPE, auth_method="none"
    )
    client = app_with(token_rate_per_client=1)
    for path, data in (
        ("/token", {"grant_type": "authorization_code", "code": "nope", "client_id": spa.id}),
        ("/revoke", {"token": "nope", "client_id": spa.id}),
    ):
        first = client.post(path, data=data, headers={"Origin": origin})
        assert first.headers["access-control-allow-origin"] == origin
        throttled = client.post(path, data=data, headers={"Origin": origin})
        assert throttled.status_code == 429, throttled.text
        assert throttled.headers["access-control-allow-origin"] == origin
        assert "retry-after" in throttled.headers["access-control-expose-headers"].lower()
        assert "origin" in throttled.headers["vary"].lower()
