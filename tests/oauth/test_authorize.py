"""The authorization endpoint: docs/security.md A (client and redirect URI checks, PKCE, scope,
prompt and max_age, response modes, iss) over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from starlette.testclient import TestClient

from authserver.services import Services
from authserver.sessions.models import LoginSession
from authserver.sessions.pages import safe_next
from authserver.users.models import User
from tests import factories
from tests.conftest import ISSUER, count_rows, sign_in_by_form
from tests.oauth.conftest import (
    CALLBACK,
    RP,
    VERIFIER,
    Flow,
    authorization_params,
    location_params,
)


def assert_error_page(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")


def assert_client_error(response: httpx.Response, error: str, state: str | None = "S") -> None:
    assert response.status_code == 303, response.text
    assert response.headers["location"].startswith(CALLBACK + "?")
    params = location_params(response)
    assert params["error"] == error, params
    assert params.get("state") == state
    assert params["iss"] == ISSUER
    assert "code" not in params


def get_authorize(client: TestClient, rp: RP, **overrides: str | None) -> httpx.Response:
    return client.get("/authorize", params=authorization_params(rp, **overrides))


# -- client and redirect URI ---------------------------------------------------------------


@pytest.mark.parametrize("client_id", [None, "no-such-client", "x" * 500])
def test_unknown_or_missing_client_is_an_error_page(
    client: TestClient, ready: RP, client_id: str | None
) -> None:
    """docs/security.md A1: never a redirect without a known client."""
    assert_error_page(get_authorize(client, ready, client_id=client_id))


REDIRECT_VARIANTS = [
    "https://app.example.com/CB",
    "https://APP.example.com/cb",
    "HTTPS://app.example.com/cb",
    "https://app.example.com/cb/",
    "https://app.example.com/cb?x=1",
    "https://app.example.com/cb/../x",
    "https://app.example.com/cb/..;/x",
    "https://app.example.com/cb%2e%2e",
    "https://app.example.com/cb#frag",
    "https://app.example.com@evil.example/cb",
    "https://a@b@evil.example/cb",
    "https://app.example.com.evil.example/cb",
    "http://app.example.com/cb",
    "https://app.example.com:444/cb",
    "https://app.example.com:443/cb",
    "https://äpp.example.com/cb",
    "https://app.example.com/cb\r\nSet-Cookie: x=y",
    "https://app.example.com/cb ",
    " https://app.example.com/cb",
    "//app.example.com/cb",
    "javascript:alert(1)//https://app.example.com/cb",
]


@pytest.mark.parametrize("redirect_uri", REDIRECT_VARIANTS)
def test_redirect_uri_variants_are_an_error_page_and_store_nothing(
    client: TestClient, services: Services, ready: RP, redirect_uri: str
) -> None:
    """docs/security.md A2: exact string match, nothing stored, never redirected to."""
    response = get_authorize(client, ready, redirect_uri=redirect_uri)
    assert_error_page(response)
    assert count_rows(services.db, "authorization_codes") == 0


def test_unregistered_redirect_with_prompt_none_is_still_an_error_page(
    client: TestClient, rp: RP
) -> None:
    """docs/security.md A14: client and redirect URI are checked before prompt=none answers."""
    response = get_authorize(client, rp, redirect_uri="https://evil.example/cb", prompt="none")
    assert_error_page(response)


def test_registered_query_must_match_byte_for_byte(
    make: factories.Factory, flow: Flow, user: User, signed_in: LoginSession
) -> None:
    """docs/security.md A3 (oidcc-redirect-uri-query-OK, -mismatch, -added)."""
    registered = "https://app.example.com/cb?a=1"
    client, secret = make.client(redirect_uris=[registered], scope="openid")
    rp = RP(client, secret, registered)
    flow.allow(user, rp, "openid")
    response = get_authorize(flow.client, rp, scope="openid")
    assert response.status_code == 303
    assert response.headers["location"].startswith(registered + "&code=")
    assert location_params(response)["a"] == "1"
    for sent in ("https://app.example.com/cb?a=2", "https://app.example.com/cb?a=1&b=2"):
        assert_error_page(get_authorize(flow.client, rp, scope="openid", redirect_uri=sent))


def test_loopback_redirect_may_use_any_port_but_nothing_else(
    flow: Flow, public_rp: RP, user: User, signed_in: LoginSession
) -> None:
    """docs/security.md A4: RFC 8252 §7.3 loopback port exception, path and query still exact."""
    flow.allow(user, public_rp)
    ok = get_authorize(flow.client, public_rp, redirect_uri="http://127.0.0.1:53123/cb")
    assert ok.status_code == 303
    assert ok.headers["location"].startswith("http://127.0.0.1:53123/cb?code=")
    for sent in (
        "http://127.0.0.1:53123/cb?bar=foo",
        "http://127.0.0.1.evil.example/cb",
        "http://127.0.0.1:53123/cb/",
        "http://localhost:53123/cb",
        "http://[::1]:53123/cb",
        "http://127.0.0.1:99999/cb",
        "https://127.0.0.1:53123/cb",
    ):
        assert_error_page(get_authorize(flow.client, public_rp, redirect_uri=sent))


def test_a_confidential_clients_loopback_redirect_keeps_its_port(
    flow: Flow, make: factories.Factory, user: User, signed_in: LoginSession
) -> None:
    """RFC 8252 §7.3 gives any-port loopback to native (public) apps only: a confidential
    client registered with `http://127.0.0.1:8080/cb` gets codes there and nowhere else, so
    another local process listening on some other port cannot receive them."""
    client, secret = make.client(redirect_uris=["http://127.0.0.1:8080/cb"])
    confidential = RP(client, secret, "http://127.0.0.1:8080/cb")
    flow.allow(user, confidential)
    ok = get_authorize(flow.client, confidential)
    assert ok.status_code == 303
    assert ok.headers["location"].startswith("http://127.0.0.1:8080/cb?code=")
    for sent in ("http://127.0.0.1:53123/cb", "http://127.0.0.1/cb"):
        assert_error_page(get_authorize(flow.client, confidential, redirect_uri=sent))


def test_loopback_code_redeems_with_the_port_it_was_sent_to(
    flow: Flow, public_rp: RP, user: User, signed_in: LoginSession
) -> None:
    flow.allow(user, public_rp)
    sent = "http://127.0.0.1:53123/cb"
    code = flow.code(public_rp, redirect_uri=sent)
    response = flow.client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": sent,
            "client_id": public_rp.id,
            "code_verifier": VERIFIER,
        },
    )
    assert response.status_code == 200, response.text


def test_omitted_redirect_uri_needs_exactly_one_registered(
    make: factories.Factory, flow: Flow, user: User, signed_in: LoginSession
) -> None:
    """docs/security.md A5 (oidcc-ensure-redirect-uri-in-authorization-request)."""
    two, secret = make.client(redirect_uris=[CALLBACK, "https://app.example.com/other"])
    flow.allow(user, RP(two, secret))
    assert_error_page(get_authorize(flow.client, RP(two, secret), redirect_uri=None))

    one, secret = make.client(redirect_uris=[CALLBACK])
    rp = RP(one, secret)
    flow.allow(user, rp)
    code = flow.code(rp, redirect_uri=None)
    response = flow.client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER},
        auth=rp.basic,
    )
    assert response.status_code == 200, response.text


def test_disabled_client_is_an_error_page(
    client: TestClient, services: Services, ready: RP
) -> None:
    """docs/security.md A22: a disabled client does not exist for the protocol."""

    def disable() -> None:
        from authserver.oauth import clients

        found = clients.get(ready.id)
        assert found is not None
        found.is_active = False

    services.db.call(disable)
    assert_error_page(get_authorize(client, ready))


def test_client_without_the_code_grant_gets_unauthorized_client(
    make: factories.Factory, flow: Flow, user: User, signed_in: LoginSession
) -> None:
    """docs/security.md A22."""
    client, secret = make.client(
        redirect_uris=[CALLBACK], grant_types=["client_credentials"], scope="api"
    )
    response = get_authorize(flow.client, RP(client, secret), scope="api")
    assert_client_error(response, "unauthorized_client")


# -- parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["state", "code_challenge", "scope", "response_mode", "nonce"])
def test_repeated_parameter_is_invalid_request(client: TestClient, ready: RP, name: str) -> None:
    """docs/security.md A6: RFC 6749 §3.1, parameters MUST NOT be included more than once."""
    query = urlencode(authorization_params(ready)) + "&" + urlencode({name: "S"})
    response = client.get(f"/authorize?{query}")
    assert response.status_code == 303
    params = parse_qs(urlsplit(response.headers["location"]).query)
    assert params["error"] == ["invalid_request"]
    assert params["iss"] == [ISSUER]


@pytest.mark.parametrize("name", ["redirect_uri", "client_id"])
def test_repeated_redirect_uri_or_client_id_is_an_error_page(
    client: TestClient, ready: RP, name: str
) -> None:
    """docs/security.md A6: with two redirect URIs there is no trusted place for the error."""
    params = authorization_params(ready)
    query = urlencode(params) + "&" + urlencode({name: params[name]})
    assert_error_page(client.get(f"/authorize?{query}"))


def test_missing_response_type_is_unsupported(client: TestClient, ready: RP) -> None:
    """docs/security.md A7 (oidcc-response-type-missing)."""
    response = get_authorize(client, ready, response_type=None)
    assert_client_error(response, "unsupported_response_type")
    assert location_params(response)["error_description"] == (
        "The response_type parameter is missing: send response_type=code."
    )


@pytest.mark.parametrize("response_type", ["token", "id_token", "code id_token", "code token"])
def test_other_response_types_are_refused_without_tokens(
    client: TestClient, ready: RP, response_type: str
) -> None:
    """docs/security.md A7: code only, never a token in a fragment."""
    response = get_authorize(client, ready, response_type=response_type)
    assert_client_error(response, "unsupported_response_type")
    description = location_params(response)["error_description"]
    assert description == "Only response_type=code (the authorization code flow) is supported."
    assert "#" not in response.headers["location"]
    assert "access_token" not in response.headers["location"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"code_challenge": None, "code_challenge_method": None},
        {"code_challenge": None},
        {"code_challenge_method": None},
        {"code_challenge_method": "plain"},
        {"code_challenge_method": "S512"},
        {"code_challenge": "a" * 42},
        {"code_challenge": "a" * 129},
        {"code_challenge": "a" * 42 + "!"},
        {"code_challenge": "a" * 42 + "é"},
    ],
)
def test_pkce_s256_is_required_and_well_formed(
    client: TestClient, ready: RP, overrides: dict[str, str | None]
) -> None:
    """docs/security.md A8: S256 required from every client; plain, S512, bad length or
    characters refused (RFC 7636 §4.1-4.2)."""
    assert_client_error(get_authorize(client, ready, **overrides), "invalid_request")


def test_public_clients_need_pkce_too(
    flow: Flow, public_rp: RP, user: User, signed_in: LoginSession
) -> None:
    """docs/security.md A8 (OAuth 2.1 §4.1.2.1)."""
    flow.allow(user, public_rp)
    response = get_authorize(
        flow.client, public_rp, code_challenge=None, code_challenge_method=None
    )
    assert response.status_code == 303
    assert location_params(response)["error"] == "invalid_request"


def test_unknown_parameters_and_shuffled_scope_succeed(client: TestClient, ready: RP) -> None:
    """docs/security.md A9 (…-unknown-parameter-succeeds, oidcc-alternate-happy-flow) and A19."""
    params = authorization_params(
        ready,
        scope="email profile openid",
        extra="foobar",
        display="popup",
        ui_locales="fr-CA",
        claims_locales="fr",
        acr_values="urn:mace:incommon:iap:silver",
        login_hint="erin@example.com",
    )
    response = client.get("/authorize?" + urlencode(list(reversed(params.items()))))
    assert response.status_code == 303
    assert "code" in location_params(response)


@pytest.mark.parametrize("scope", ["openid admin2", "openid unknown", None, "   "])
def test_scope_outside_the_clients_is_invalid_scope(
    client: TestClient, ready: RP, scope: str | None
) -> None:
    """docs/security.md A10: never silently narrowed or broadened (ASVS 10.4.11)."""
    assert_client_error(get_authorize(client, ready, scope=scope), "invalid_scope")


def test_admin_scope_needs_an_admin(
    make: factories.Factory, flow: Flow, user: User, signed_in: LoginSession
) -> None:
    client, secret = make.client(redirect_uris=[CALLBACK], scope="openid admin")
    rp = RP(client, secret)
    flow.allow(user, rp, "openid admin")
    assert_client_error(get_authorize(flow.client, rp, scope="openid admin"), "invalid_scope")


def test_success_carries_code_state_and_iss_only(client: TestClient, ready: RP) -> None:
    """docs/security.md A11, RFC 9207 §2; 303 and never cached (A23)."""
    response = get_authorize(client, ready)
    assert response.status_code == 303
    assert response.headers["cache-control"] == "no-store"
    params = location_params(response)
    assert set(params) == {"code", "state", "iss"}
    assert params["state"] == "S"
    assert params["iss"] == ISSUER
    assert len(params["code"]) >= 43


def test_state_may_be_omitted_or_long(client: TestClient, ready: RP) -> None:
    """docs/security.md A11: no state → none back; a 1,500-char state comes back verbatim."""
    assert "state" not in location_params(get_authorize(client, ready, state=None))
    long_state = "s" * 1000 + "~._-" * 125
    assert location_params(get_authorize(client, ready, state=long_state))["state"] == long_state


def test_markup_in_parameters_is_url_encoded(client: TestClient, ready: RP) -> None:
    """docs/security.md A12."""
    payload = '"><svg onload=alert(1)>'
    response = get_authorize(client, ready, state=payload, nonce=payload, login_hint=payload)
    assert "<svg" not in response.headers["location"]
    assert location_params(response)["state"] == payload


def test_nonce_is_optional_and_bounded(client: TestClient, ready: RP) -> None:
    """docs/security.md A13: no nonce is fine for the code flow; 64 chars work; huge is refused."""
    assert "code" in location_params(get_authorize(client, ready, nonce=None))
    assert "code" in location_params(get_authorize(client, ready, nonce="n" * 64))
    assert_client_error(get_authorize(client, ready, nonce="n" * 513), "invalid_request")


def test_post_authorize_works_like_get(client: TestClient, ready: RP) -> None:
    """docs/security.md A17 (oidcc-ensure-post-request-succeeds)."""
    response = client.post("/authorize", data=authorization_params(ready))
    assert response.status_code == 303
    assert set(location_params(response)) == {"code", "state", "iss"}


@pytest.mark.parametrize(
    ("name", "error"),
    [("request", "request_not_supported"), ("request_uri", "request_uri_not_supported")],
)
def test_request_objects_are_refused_not_ignored(
    client: TestClient, app_with: Callable[..., TestClient], ready: RP, name: str, error: str
) -> None:
    """docs/security.md A20. (With pushed authorization requests on, a request_uri that
    /par did not issue is `invalid_request_uri` instead: see tests/oauth/test_par.py.)"""
    without_par = app_with(pushed_authorization_requests=False)
    without_par.cookies = client.cookies
    value = "eyJhbGciOiJub25lIn0.e30."
    assert_client_error(get_authorize(without_par, ready, **{name: value}), error)


def test_no_cors_on_the_authorization_endpoint(client: TestClient, ready: RP) -> None:
    """docs/security.md A21 (RFC 9700 §2.6)."""
    headers = {"Origin": "https://evil.example"}
    for response in (
        client.get("/authorize", params=authorization_params(ready), headers=headers),
        client.options("/authorize", headers={**headers, "Access-Control-Request-Method": "GET"}),
    ):
        assert not any(h.startswith("access-control-") for h in response.headers)


def test_malformed_query_is_an_error_page(client: TestClient, ready: RP) -> None:
    """docs/security.md L95: invalid UTF-8 and NUL never reach Authlib or the database."""
    assert_error_page(client.get(f"/authorize?client_id={ready.id}&state=%ff%fe"))
    assert_error_page(client.get(f"/authorize?client_id={ready.id}&state=a%00b"))
    assert_error_page(client.get(f"/authorize?client_id={ready.id}&response_type=co%22de"))


# -- sign-in, prompt and max_age -----------------------------------------------------------


def test_without_a_session_the_user_is_sent_to_sign_in(client: TestClient, rp: RP) -> None:
    """STYLE.md §4 step 1: 303 to /login with the request as a same-origin `next`."""
    response = get_authorize(client, rp, login_hint="erin@example.com")
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/login"
    query = parse_qs(location.query)
    assert query["login_hint"] == ["erin@example.com"]
    next_url = query["next"][0]
    assert safe_next(next_url) == next_url
    assert parse_qs(urlsplit(next_url).query)["client_id"] == [rp.id]


def test_prompt_none_without_a_session_is_login_required(client: TestClient, rp: RP) -> None:
    """docs/security.md A14 (oidcc-prompt-none-not-logged-in)."""
    assert_client_error(get_authorize(client, rp, prompt="none"), "login_required")


def test_prompt_none_with_session_and_consent_is_silent(
    flow: Flow, ready: RP, user: User, signed_in: LoginSession
) -> None:
    """docs/security.md A15 (oidcc-prompt-none-logged-in): same sub and auth_time."""
    first = flow.tokens(ready, user)
    second = flow.tokens(ready, user, prompt="none")
    claims = [
        jwt.decode(t["id_token"], options={"verify_signature": False}) for t in (first, second)
    ]
    assert claims[0]["sub"] == claims[1]["sub"] == user.id
    assert claims[0]["auth_time"] == claims[1]["auth_time"]


def test_prompt_none_without_consent_is_consent_required(
    client: TestClient, rp: RP, signed_in: LoginSession
) -> None:
    """docs/security.md A15."""
    assert_client_error(get_authorize(client, rp, prompt="none"), "consent_required")


@pytest.mark.parametrize("prompt", ["none login", "none consent", "bogus"])
def test_contradictory_or_unknown_prompt_is_invalid_request(
    client: TestClient, ready: RP, prompt: str
) -> None:
    assert_client_error(get_authorize(client, ready, prompt=prompt), "invalid_request")


def test_prompt_login_sends_a_signed_in_user_to_sign_in_again(
    client: TestClient, ready: RP
) -> None:
    """docs/security.md A15 (oidcc-prompt-login): `prompt=login` leaves `next`, so the request
    coming back after sign-in does not loop."""
    response = get_authorize(client, ready, prompt="login consent")
    assert response.status_code == 303
    next_url = parse_qs(urlsplit(response.headers["location"]).query)["next"][0]
    assert parse_qs(urlsplit(next_url).query)["prompt"] == ["consent"]
    response = get_authorize(client, ready, prompt="login")
    next_url = parse_qs(urlsplit(response.headers["location"]).query)["next"][0]
    assert "prompt" not in parse_qs(urlsplit(next_url).query)


def test_max_age_older_than_the_sign_in_asks_again(
    flow: Flow,
    rp: RP,
    user: User,
    sign_in_directly: Callable[..., LoginSession],
    now: datetime,
) -> None:
    """docs/security.md A15 (oidcc-max-age-1, oidcc-max-age-10000)."""
    flow.allow(user, rp)
    sign_in_directly(user, auth_time=now - timedelta(seconds=30))
    stale = get_authorize(flow.client, rp, max_age="1")
    assert urlsplit(stale.headers["location"]).path == "/login"
    next_url = parse_qs(urlsplit(stale.headers["location"]).query)["next"][0]
    assert "max_age" not in parse_qs(urlsplit(next_url).query)
    assert_client_error(
        get_authorize(flow.client, rp, max_age="1", prompt="none"), "login_required"
    )
    tokens = flow.tokens(rp, user, max_age="10000")
    claims = jwt.decode(tokens["id_token"], options={"verify_signature": False})
    assert "auth_time" in claims


def test_malformed_max_age_is_invalid_request(client: TestClient, ready: RP) -> None:
    assert_client_error(get_authorize(client, ready, max_age="-1"), "invalid_request")


@pytest.mark.parametrize("max_age", ["²", "①", "٣", "1" * 5000, "1234567890", " 1", "1.5", "0x10"])
def test_max_age_must_be_ascii_digits(client: TestClient, ready: RP, max_age: str) -> None:
    """docs/security.md A15: with a live session, a `max_age` that `str.isdigit` accepts but `int`
    refuses (or converts slowly) is `invalid_request` back to the client, never a 500."""
    assert_client_error(get_authorize(client, ready, max_age=max_age), "invalid_request")


def sign_in_with_next(client: TestClient, user: User, login_url: str) -> httpx.Response:
    """Sign in as a person does: the login page with its `next`, then the form."""
    page = client.get(login_url)
    assert page.status_code == 200, page.text
    next_url = parse_qs(urlsplit(login_url).query)["next"][0]
    response = sign_in_by_form(client, user.email, next=next_url)
    assert response.status_code == 303, response.text
    return response


def id_token_claims(tokens: dict[str, Any]) -> dict[str, Any]:
    return dict(jwt.decode(tokens["id_token"], options={"verify_signature": False}))


REAUTHENTICATION_REQUESTS = [{"prompt": "login"}, {"max_age": "0"}, {"max_age": "1"}]


@pytest.mark.parametrize("asked", REAUTHENTICATION_REQUESTS)
def test_reauthentication_is_enforced_on_the_next_url(
    flow: Flow,
    rp: RP,
    user: User,
    sign_in_directly: Callable[..., LoginSession],
    now: datetime,
    asked: dict[str, str],
) -> None:
    """docs/security.md A15 (oidcc-prompt-login, oidcc-max-age-1): `next` drops `prompt=login` and
    `max_age`, but loading it with the old session is not a way around them: it asks for
    sign-in again; after a real sign-in the code carries a later `auth_time`."""
    flow.allow(user, rp)
    sign_in_directly(user, auth_time=now - timedelta(seconds=60))
    before = id_token_claims(flow.tokens(rp, user))["auth_time"]

    response = get_authorize(flow.client, rp, **asked)
    assert urlsplit(response.headers["location"]).path == "/login"
    login_url = response.headers["location"]
    next_url = parse_qs(urlsplit(login_url).query)["next"][0]
    assert safe_next(next_url) == next_url

    direct = flow.client.get(next_url)
    assert direct.status_code == 303
    assert urlsplit(direct.headers["location"]).path == "/login"
    assert "code" not in parse_qs(urlsplit(direct.headers["location"]).query)
    silent = flow.client.get(next_url + "&prompt=none")
    assert_client_error(silent, "login_required")

    back = sign_in_with_next(flow.client, user, login_url)
    assert back.headers["location"] == next_url
    code = location_params(flow.client.get(next_url))["code"]
    response = flow.exchange(rp, code)
    assert response.status_code == 200, response.text
    assert id_token_claims(response.json())["auth_time"] > before


@pytest.mark.parametrize(
    "marker",
    ["x", "eyJ0IjoiMjAwMC0wMS0wMVQwMDowMDowMCswMDowMCIsImMiOiJ4In0.bad-signature"],
)
def test_a_tampered_auth_after_marker_asks_for_a_fresh_sign_in(
    client: TestClient, ready: RP, marker: str
) -> None:
    """docs/security.md A15: a marker that does not verify is read as "sign in again", and the
    sign-in page gets a fresh, valid one."""
    response = get_authorize(client, ready, auth_after=marker)
    assert response.status_code == 303
    assert urlsplit(response.headers["location"]).path == "/login"
    next_url = parse_qs(urlsplit(response.headers["location"]).query)["next"][0]
    assert parse_qs(urlsplit(next_url).query)["auth_after"] != [marker]


def test_an_auth_after_marker_of_another_client_asks_for_a_fresh_sign_in(
    flow: Flow, ready: RP, make: factories.Factory, user: User
) -> None:
    """docs/security.md A15: a valid marker is bound to the client it was made for."""
    other, secret = make.client(name="Other", redirect_uris=[CALLBACK], scope=ready.client.scope)
    other_rp = RP(other, secret)
    flow.allow(user, other_rp)
    response = get_authorize(flow.client, other_rp, prompt="login")
    next_url = parse_qs(urlsplit(response.headers["location"]).query)["next"][0]
    marker = parse_qs(urlsplit(next_url).query)["auth_after"][0]
    assert "code" in location_params(get_authorize(flow.client, ready))
    foreign = get_authorize(flow.client, ready, auth_after=marker)
    assert urlsplit(foreign.headers["location"]).path == "/login"


def test_a_long_state_survives_sign_in(
    client: TestClient, rp: RP, user: User, allow: Callable[..., None]
) -> None:
    """docs/security.md A11: an authorization request as long as the app accepts (a 6,000-char
    `state`) comes back from the sign-in page whole, not dropped for the landing page."""
    allow(user, rp)
    long_state = "s" * 3000 + "~._-" * 750
    response = get_authorize(client, rp, state=long_state)
    assert urlsplit(response.headers["location"]).path == "/login"
    back = sign_in_with_next(client, user, response.headers["location"])
    assert urlsplit(back.headers["location"]).path == "/authorize"
    params = location_params(client.get(back.headers["location"]))
    assert params["state"] == long_state
    assert "code" in params


def test_id_token_hint_of_another_user_with_prompt_none_is_login_required(
    flow: Flow,
    make: factories.Factory,
    ready: RP,
    user: User,
    sign_in_directly: Callable[..., LoginSession],
) -> None:
    """docs/security.md A16."""
    other = make.user()
    flow.allow(other, ready)
    sign_in_directly(other)
    hint = flow.tokens(ready, other)["id_token"]
    sign_in_directly(user)
    assert_client_error(
        get_authorize(flow.client, ready, prompt="none", id_token_hint=hint), "login_required"
    )
    own = flow.tokens(ready, user)["id_token"]
    response = get_authorize(flow.client, ready, prompt="none", id_token_hint=own)
    assert "code" in location_params(response)


def test_forged_id_token_hint_is_refused(flow: Flow, ready: RP, user: User) -> None:
    """docs/security.md A16, F51: alg none or a stripped signature is no hint."""
    real = flow.tokens(ready, user)["id_token"]
    header, payload, _ = real.split(".")
    none_header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    for forged in (f"{none_header}.{payload}.", f"{header}.{payload}.", "garbage"):
        response = get_authorize(flow.client, ready, id_token_hint=forged)
        assert_client_error(response, "invalid_request")


# -- response modes ------------------------------------------------------------------------


def test_form_post_renders_a_form_that_works_without_javascript(
    client: TestClient, ready: RP
) -> None:
    """OAuth 2.0 Form Post Response Mode: a same-origin script submits it (CSP allows no
    inline script) and a Continue button does the same without JavaScript."""
    response = get_authorize(client, ready, response_mode="form_post", state='"><x')
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert f'action="{CALLBACK}"' in response.text
    assert 'name="iss"' in response.text
    assert 'name="code"' in response.text
    assert "&#34;&gt;&lt;x" in response.text
    assert "<button" in response.text
    assert response.text.count("<script") == 1
    assert '<script src="/static/form_post.js"></script>' in response.text


def test_form_post_errors_are_posted_too(client: TestClient, rp: RP) -> None:
    response = get_authorize(client, rp, response_mode="form_post", prompt="none")
    assert response.status_code == 200
    assert 'value="login_required"' in response.text


def test_unsupported_response_mode_is_invalid_request_in_the_query(
    client: TestClient, ready: RP
) -> None:
    assert_client_error(get_authorize(client, ready, response_mode="fragment"), "invalid_request")


def test_pages_send_no_referrer(client: TestClient, rp: RP) -> None:
    """docs/security.md A23."""
    response = get_authorize(client, rp, redirect_uri="https://evil.example/")
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
