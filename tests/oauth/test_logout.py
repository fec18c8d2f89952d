"""RP-Initiated Logout at /logout (docs/security.md H68; conformance
oidcc-rp-initiated-logout-*)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.testclient import TestClient

from authserver.oauth.clients import Client
from authserver.services import Services
from tests import factories
from tests.conftest import audit_events, csrf_token, is_signed_in, sessions_of, sign_in_by_form

RETURN_URI = "https://app.example.com/logged-out"
RETURN_WITH_QUERY = "https://app.example.com/bye?from=op"


@dataclass
class SignedIn:
    user_id: str
    session_id: str
    client: Client


@pytest.fixture
def rp(make: factories.Factory) -> Client:
    client, _ = make.client(post_logout_redirect_uris=[RETURN_URI, RETURN_WITH_QUERY])
    return client


@pytest.fixture
def signed_in(
    client: TestClient, make: factories.Factory, services: Services, rp: Client
) -> SignedIn:
    user = make.user()
    assert sign_in_by_form(client, user.email).status_code == 303
    [row] = sessions_of(services, user.id)
    return SignedIn(user.id, row.id, rp)


def id_token(services: Services, who: SignedIn, **changes: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": services.settings.issuer,
        "aud": who.client.id,
        "sub": who.user_id,
        "sid": who.session_id,
        "iat": now,
        "exp": now + 300,
        **changes,
    }
    return services.keystore.sign(claims, typ="JWT")


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(part: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def session_ended(services: Services, who: SignedIn) -> bool:
    [row] = sessions_of(services, who.user_id)
    return row.ended_at is not None


def test_no_params_asks_before_signing_out(
    client: TestClient, services: Services, signed_in: SignedIn
) -> None:
    """oidcc-rp-initiated-logout-no-params, ASVS 10.6.2: a bare GET (which any page can cause)
    shows a Sign out button; it does not end the session by itself."""
    page = client.get("/logout")

    assert page.status_code == 200
    assert "Sign out</button>" in page.text
    assert 'method="post" action="/logout"' in page.text
    assert "location" not in page.headers
    assert not session_ended(services, signed_in)
    assert is_signed_in(client)


def test_confirming_signs_out(client: TestClient, services: Services, signed_in: SignedIn) -> None:
    page = client.get("/logout")

    done = client.post("/logout", data={"csrf_token": csrf_token(page)})

    assert done.status_code == 200
    assert "You are signed out" in done.text
    assert 'sid=""' in done.headers["set-cookie"]
    assert session_ended(services, signed_in)
    assert not is_signed_in(client)
    [event] = audit_events(services, "logout")
    assert (event.actor_id, event.target_id) == (signed_in.user_id, signed_in.session_id)


@pytest.mark.parametrize("case", ["missing", "foreign-origin", "garbage"])
def test_confirmation_without_our_csrf_token_is_refused(
    client: TestClient, services: Services, signed_in: SignedIn, case: str
) -> None:
    """H64: a cross-site POST cannot sign the user out."""
    token = csrf_token(client.get("/logout"))
    data = {"csrf_token": token}
    headers = {}
    if case == "missing":
        data = {}
    elif case == "foreign-origin":
        headers["origin"] = "https://evil.example"
    else:
        data["csrf_token"] = "not-a-token"

    response = client.post("/logout", data=data, headers=headers)

    assert response.status_code == 403
    assert not session_ended(services, signed_in)


def test_valid_hint_and_registered_uri_sign_out_and_return_with_state(
    client: TestClient, services: Services, signed_in: SignedIn
) -> None:
    """oidcc-rp-initiated-logout: sign out, then 303 to the registered URI with `state`."""
    params = {
        "id_token_hint": id_token(services, signed_in),
        "post_logout_redirect_uri": RETURN_URI,
        "state": "s t&ate",
    }

    response = client.get("/logout", params=params)

    assert response.status_code == 303
    assert response.headers["location"] == RETURN_URI + "?state=s+t%26ate"
    assert session_ended(services, signed_in)
    assert not is_signed_in(client)


def test_a_registered_query_is_kept_and_state_appended(
    client: TestClient, services: Services, signed_in: SignedIn
) -> None:
    params = {
        "id_token_hint": id_token(services, signed_in),
        "post_logout_redirect_uri": RETURN_WITH_QUERY,
        "state": "abc",
        "client_id": signed_in.client.id,
    }

    response = client.get("/logout", params=params)

    assert response.headers["location"] == RETURN_WITH_QUERY + "&state=abc"


def test_rp_may_post_the_request_as_a_form(
    client: TestClient, services: Services, signed_in: SignedIn
) -> None:
    """RP-Initiated Logout §2: the RP may use a form POST; the hint, not a CSRF token, proves it."""
    data = {"id_token_hint": id_token(services, signed_in), "post_logout_redirect_uri": RETURN_URI}

    response = client.post("/logout", data=data, headers={"origin": "https://app.example.com"})

    assert response.status_code == 303
    assert response.headers["location"] == RETURN_URI
    assert session_ended(services, signed_in)


def test_an_expired_hint_still_counts(
    client: TestClient, services: Services, signed_in: SignedIn
) -> None:
    """RP-Initiated Logout §2: RPs send ID tokens whose `exp` has passed; the OP accepts them."""
    hint = id_token(services, signed_in, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)

    response = client.get(
        "/logout", params={"id_token_hint": hint, "post_logout_redirect_uri": RETURN_URI}
    )

    assert response.status_code == 303
    assert session_ended(services, signed_in)


def test_valid_hint_without_uri_signs_out_and_shows_the_page(
    client: TestClient, services: Services, signed_in: SignedIn
) -> None:
    response = client.get("/logout", params={"id_token_hint": id_token(services, signed_in)})

    assert response.status_code == 200
    assert "You are signed out" in response.text
    assert session_ended(services, signed_in)


def test_already_signed_out_still_returns_to_the_rp(
    client: TestClient, services: Services, signed_in: SignedIn
) -> None:
    hint = id_token(services, signed_in)
    client.post("/logout", data={"csrf_token": csrf_token(client.get("/logout"))})

    response = client.get(
        "/logout", params={"id_token_hint": hint, "post_logout_redirect_uri": RETURN_URI}
    )

    assert response.status_code == 303
    assert response.headers["location"] == RETURN_URI


@pytest.mark.parametrize(
    "uri",
    [
        RETURN_URI + "?foo=bar",
        RETURN_URI + "/",
        "https://evil.example/logged-out",
        "https://app.example.com/LOGGED-OUT",
        RETURN_WITH_QUERY.replace("op", "rp"),
        "javascript:alert(1)",
    ],
)
def test_unregistered_uri_never_redirects(
    client: TestClient, services: Services, signed_in: SignedIn, uri: str
) -> None:
    """oidcc-rp-initiated-logout-bad-post-logout-redirect-uri and -query-added: no redirect and,
    without the user's say-so, no sign-out; an error, with the Sign out button."""
    params = {"id_token_hint": id_token(services, signed_in), "post_logout_redirect_uri": uri}

    response = client.get("/logout", params=params)

    assert response.status_code == 400
    assert "location" not in response.headers
    assert "has not registered" in response.text
    assert "Sign out</button>" in response.text
    assert uri not in response.text
    assert not session_ended(services, signed_in)


def forged_hints(services: Services, who: SignedIn) -> dict[str, str]:
    """Hints an attacker could make: each must be worthless."""
    good = id_token(services, who)
    header, payload, signature = good.split(".")
    claims = unb64(payload)
    kid = unb64(header)["kid"]
    foreign = RSAKey.generate_key(2048, parameters={"kid": kid})
    public_pem = services.keystore.verification_keys().keys[0].as_pem(private=False)
    hs_header = b64({"alg": "HS256", "typ": "JWT", "kid": kid})
    hs_input = f"{hs_header}.{payload}".encode()
    hs_signature = b64(hmac.new(public_pem, hs_input, hashlib.sha256).digest())
    now = int(time.time())
    return {
        "alg-none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "alg-none-kept-sig": f"{b64({'alg': 'none', 'kid': kid})}.{payload}.{signature}",
        "modified-sub": f"{header}.{b64({**claims, 'sub': 'someone-else'})}.{signature}",
        "foreign-key": jwt.encode({"alg": "RS256", "kid": kid}, claims, foreign),
        "hs256-with-public-key": f"{hs_header}.{payload}.{hs_signature}",
        "other-issuer": id_token(services, who, iss="https://other.example"),
        "other-audience": id_token(services, who, aud="some-other-client"),
        "access-token-typ": services.keystore.sign({**claims, "exp": now + 60}, typ="at+jwt"),
        "not-a-jwt": "garbage",
        "five-parts": "a.b.c.d.e",
        "nul": "\x00" + good,
        "huge": good + "A" * 9000,
    }


@pytest.mark.parametrize(
    "kind",
    [
        "alg-none",
        "alg-none-kept-sig",
        "modified-sub",
        "foreign-key",
        "hs256-with-public-key",
        "other-issuer",
        "other-audience",
        "access-token-typ",
        "not-a-jwt",
        "five-parts",
        "nul",
        "huge",
    ],
)
def test_forged_or_foreign_hints_neither_redirect_nor_sign_out(
    client: TestClient, services: Services, signed_in: SignedIn, kind: str
) -> None:
    """oidcc-rp-initiated-logout-modified-id-token-hint and -bad-id-token-hint: the hint must
    be an ID token we signed (no `none`, no key or algorithm the token picks), for this
    issuer and client. The user is asked instead."""
    hint = forged_hints(services, signed_in)[kind]
    params = {
        "id_token_hint": hint,
        "post_logout_redirect_uri": RETURN_URI,
        "client_id": signed_in.client.id,
        "state": "xyz",
    }

    response = client.post("/logout", data=params)

    assert response.status_code == 400
    assert "location" not in response.headers
    assert "Sign out</button>" in response.text
    assert not session_ended(services, signed_in)


def test_hint_for_another_session_asks_first(
    client: TestClient, services: Services, signed_in: SignedIn
) -> None:
    """A genuine ID token from an earlier session proves nothing about this one."""
    hint = id_token(services, signed_in, sid="an-earlier-session")

    response = client.get(
        "/logout", params={"id_token_hint": hint, "post_logout_redirect_uri": RETURN_URI}
    )

    assert response.status_code == 200
    assert "location" not in response.headers
    assert "Sign out</button>" in response.text
    assert not session_ended(services, signed_in)


def test_without_a_hint_the_user_confirms_and_gets_a_link_back(
    client: TestClient, services: Services, signed_in: SignedIn
) -> None:
    """oidcc-rp-initiated-logout-no-id-token-hint: no automatic redirect. Once the user has
    confirmed, the registered URI is offered as a link, with `state`."""
    params = {
        "client_id": signed_in.client.id,
        "post_logout_redirect_uri": RETURN_URI,
        "state": "abc",
    }
    page = client.get("/logout", params=params)
    assert page.status_code == 200
    assert "location" not in page.headers
    assert not session_ended(services, signed_in)

    done = client.post("/logout", data={**params, "csrf_token": csrf_token(page)})

    assert done.status_code == 200
    assert "location" not in done.headers
    assert f'href="{RETURN_URI}?state=abc"' in done.text
    assert "Return to Example App" in done.text
    assert session_ended(services, signed_in)


def test_signed_out_visitor_sees_the_signed_out_page(client: TestClient, rp: Client) -> None:
    response = client.get("/logout")

    assert response.status_code == 200
    assert "You are signed out" in response.text


@pytest.mark.parametrize(
    "params",
    [
        {"client_id": "\x00"},
        {"client_id": "x" * 5000},
        {"post_logout_redirect_uri": "\x00", "client_id": "abc"},
        {"state": "\x00" * 100},
        {"id_token_hint": "..."},
    ],
)
def test_odd_parameters_never_500(
    client: TestClient, signed_in: SignedIn, params: dict[str, str]
) -> None:
    response = client.get("/logout", params=params)

    assert response.status_code in {200, 400}
    assert "location" not in response.headers
