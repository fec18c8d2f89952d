"""The token endpoint with authorization codes and client authentication: docs/security.md B."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import httpx2
import jwt
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client
from starlette.applications import Starlette
from starlette.testclient import TestClient

from authserver import db
from authserver.oauth import codes
from authserver.services import Services
from authserver.sessions import models as sessions
from authserver.sessions.models import LoginSession
from authserver.users import models as users
from authserver.users.models import User
from tests import factories
from tests.conftest import ISSUER, count_rows
from tests.oauth.conftest import (
    CALLBACK,
    RP,
    VERIFIER,
    Flow,
)

#: RFC 6749 §5.2: error_description is %x20-21 / %x23-5B / %x5D-7E.
DESCRIPTION = re.compile(r"^[\x20\x21\x23-\x5b\x5d-\x7e]*$")


def assert_oauth_error(response: httpx.Response, error: str, status: int = 400) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert DESCRIPTION.match(body.get("error_description", ""))
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"


def verify_with_jwks(
    client: TestClient, token: str, *, audience: str, alg: str = "RS256"
) -> dict[str, Any]:
    """What a relying party or resource server does: PyJWT, our JWKS, an explicit alg."""
    jwks = jwt.PyJWKSet.from_dict(client.get("/jwks.json").json())
    kid = jwt.get_unverified_header(token)["kid"]
    return jwt.decode(token, jwks[kid].key, algorithms=[alg], audience=audience, issuer=ISSUER)


def test_code_exchange_returns_verifiable_tokens(
    flow: Flow, ready: RP, user: User, signed_in: LoginSession, services: Services
) -> None:
    """docs/security.md B24 (oidcc-server, oidcc-idtoken-signature), RFC 9068 access token."""
    response = flow.exchange(ready, flow.code(ready))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == services.settings.access_token_ttl
    assert body["scope"] == "openid profile email"
    assert {"access_token", "refresh_token", "id_token"} <= set(body)

    id_claims = verify_with_jwks(flow.client, body["id_token"], audience=ready.id)
    assert jwt.get_unverified_header(body["id_token"])["alg"] == "RS256"
    assert id_claims["sub"] == user.id
    assert id_claims["nonce"] == "N"
    assert id_claims["sid"] == signed_in.id
    assert id_claims["amr"] == ["pwd"]
    assert id_claims["auth_time"] == int(signed_in.auth_time.timestamp())
    digest = hashlib.sha256(body["access_token"].encode()).digest()
    assert id_claims["at_hash"] == base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()
    assert id_claims["email"] == user.email

    assert jwt.get_unverified_header(body["access_token"])["typ"] == "at+jwt"
    at_claims = verify_with_jwks(
        flow.client, body["access_token"], audience=services.settings.api_audience
    )
    assert at_claims["sub"] == user.id
    assert at_claims["client_id"] == ready.id
    assert at_claims["scope"] == "openid profile email"
    assert {"exp", "iat", "jti", "auth_time"} <= set(at_claims)


def test_refresh_token_is_high_entropy_and_url_safe(flow: Flow, ready: RP, user: User) -> None:
    """docs/security.md B34 (RFC 6749 App. A.17)."""
    body = flow.tokens(ready, user)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", body["refresh_token"])


def test_id_token_uses_the_clients_algorithm(
    make: factories.Factory, flow: Flow, user: User, signed_in: LoginSession, services: Services
) -> None:
    """SPEC §5: ES256 per client."""
    client, secret = make.client(redirect_uris=[CALLBACK])

    def use_es256() -> None:
        from authserver.oauth import clients

        found = clients.get(client.id)
        assert found is not None
        found.id_token_signed_response_alg = "ES256"

    services.db.call(use_es256)
    rp = RP(client, secret)
    body = flow.tokens(rp, user)
    claims = verify_with_jwks(flow.client, body["id_token"], audience=rp.id, alg="ES256")
    assert claims["sub"] == user.id


def test_authlib_client_completes_the_flow(
    app: Starlette, flow: Flow, ready: RP, user: User
) -> None:
    """Authlib's own OAuth2Client (PKCE S256, client_secret_basic) against the server; it
    speaks httpx2, so the app is mounted through httpx2's ASGI transport."""

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        transport = httpx2.ASGITransport(app=app)
        async with AsyncOAuth2Client(
            ready.id,
            ready.secret,
            scope="openid profile email",
            redirect_uri=CALLBACK,
            code_challenge_method="S256",
            transport=transport,
        ) as rp_client:
            url, _ = rp_client.create_authorization_url(
                f"{ISSUER}/authorize", code_verifier=VERIFIER, nonce="n-0S6_WzA2Mj"
            )
            response = flow.client.get(url)
            assert response.status_code == 303, response.text
            token = await rp_client.fetch_token(
                f"{ISSUER}/token",
                authorization_response=response.headers["location"],
                code_verifier=VERIFIER,
            )
            refreshed = await rp_client.refresh_token(
                f"{ISSUER}/token", refresh_token=token["refresh_token"]
            )
            return dict(token), dict(refreshed)

    token, refreshed = asyncio.run(run())
    assert token["token_type"].lower() == "bearer"
    assert refreshed["refresh_token"] != token["refresh_token"]


def test_client_secret_post_works(
    make: factories.Factory, flow: Flow, user: User, signed_in: LoginSession
) -> None:
    """oidcc-server-client-secret-post."""
    client, secret = make.client(redirect_uris=[CALLBACK], auth_method="client_secret_post")
    rp = RP(client, secret)
    flow.allow(user, rp)
    code = flow.code(rp)
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": CALLBACK,
        "code_verifier": VERIFIER,
        "client_id": rp.id,
        "client_secret": secret or "",
    }
    assert flow.client.post("/token", data=data).status_code == 200


def test_public_client_redeems_with_pkce_alone(
    flow: Flow, public_rp: RP, user: User, signed_in: LoginSession
) -> None:
    body = flow.tokens(public_rp, user)
    assert "refresh_token" in body


# -- code replay, expiry and binding -------------------------------------------------------


def test_code_replay_fails_and_revokes_what_it_bought(
    flow: Flow, ready: RP, services: Services
) -> None:
    """docs/security.md B25 (oidcc-codereuse; ASVS 10.4.2)."""
    code = flow.code(ready)
    first = flow.exchange(ready, code).json()
    assert_oauth_error(flow.exchange(ready, code), "invalid_grant")
    assert flow.userinfo(first["access_token"]).status_code == 401
    assert_oauth_error(flow.refresh(ready, first["refresh_token"]), "invalid_grant")
    assert flow.introspect(ready, first["access_token"]) == {"active": False}
    assert flow.introspect(ready, first["refresh_token"]) == {"active": False}
    assert count_rows(services.db, "token_families") == 1
    events = services.db.call(_events, "code.reuse_detected")
    assert len(events) == 1
    assert first["access_token"] not in str(events[0])


def _events(name: str) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from authserver.audit import AuditEvent

    rows = db.current_session().scalars(select(AuditEvent).where(AuditEvent.event == name))
    return [{**row.details, "actor": row.actor_id, "target": row.target_id} for row in rows]


def test_code_replay_after_thirty_seconds(
    flow: Flow, ready: RP, frozen: Callable[[float], None]
) -> None:
    """docs/security.md B25 (oidcc-codereuse-30seconds)."""
    code = flow.code(ready)
    first = flow.exchange(ready, code).json()
    frozen(30)
    assert_oauth_error(flow.exchange(ready, code), "invalid_grant")
    assert flow.userinfo(first["access_token"]).status_code == 401


def test_expired_code_is_invalid_grant(
    flow: Flow, ready: RP, services: Services, frozen: Callable[[float], None]
) -> None:
    """docs/security.md B26: 60 s lifetime (settings.code_ttl)."""
    code = flow.code(ready)
    frozen(services.settings.code_ttl + 1)
    assert_oauth_error(flow.exchange(ready, code), "invalid_grant")
    assert count_rows(services.db, "access_tokens") == 0


def test_code_is_bound_to_its_client(
    make: factories.Factory, flow: Flow, ready: RP, services: Services
) -> None:
    """docs/security.md B27: another client's valid credentials get nothing, and change nothing."""
    other_client, other_secret = make.client(redirect_uris=[CALLBACK])
    other = RP(other_client, other_secret)
    code = flow.code(ready)
    assert_oauth_error(flow.exchange(other, code), "invalid_grant")
    assert count_rows(services.db, "access_tokens") == 0
    assert flow.exchange(ready, code).status_code == 200


def test_pkce_verifier_is_checked_at_the_token_endpoint(flow: Flow, ready: RP) -> None:
    """docs/security.md B28: missing → 400, wrong → invalid_grant, malformed → 400; a failed
    attempt does not burn the code for its rightful holder."""
    code = flow.code(ready)
    missing = flow.client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK},
        auth=ready.basic,
    )
    assert_oauth_error(missing, "invalid_request")
    assert_oauth_error(flow.exchange(ready, code, verifier="w" * 43), "invalid_grant")
    assert_oauth_error(flow.exchange(ready, code, verifier="short"), "invalid_request")
    assert_oauth_error(flow.exchange(ready, code, verifier="!" * 43), "invalid_request")
    assert flow.exchange(ready, code).status_code == 200


#: RFC 7636 Appendix B: this verifier's S256 challenge, as the RFC prints it.
RFC7636_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
RFC7636_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


@pytest.fixture(params=["confidential", "public"])
def any_rp(
    request: pytest.FixtureRequest, flow: Flow, rp: RP, public_rp: RP, user: User,
    signed_in: LoginSession,
) -> RP:  # fmt: skip
    chosen = rp if request.param == "confidential" else public_rp
    flow.allow(user, chosen)
    return chosen


def test_rfc7636_appendix_b_vector_redeems(flow: Flow, any_rp: RP) -> None:
    """docs/security.md B28: the server computes S256 as the RFC does, checked against the
    RFC's own numbers rather than the suite's helper."""
    code = flow.code(any_rp, code_challenge=RFC7636_CHALLENGE)
    response = flow.exchange(any_rp, code, verifier=RFC7636_VERIFIER)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "verifier",
    [
        RFC7636_VERIFIER[:-1] + "j",  # one character off
        RFC7636_VERIFIER.upper(),  # case matters
        RFC7636_VERIFIER + "A",  # one character longer
        RFC7636_CHALLENGE,  # the challenge itself, as `plain` would take it
    ],
)
def test_wrong_verifier_is_invalid_grant_for_every_client_type(
    flow: Flow, any_rp: RP, verifier: str
) -> None:
    """docs/security.md B28: a well-formed verifier that does not hash to the challenge is
    `invalid_grant` for public and confidential clients alike, issues nothing, and leaves
    the code for the holder of the right verifier."""
    code = flow.code(any_rp, code_challenge=RFC7636_CHALLENGE)
    assert_oauth_error(flow.exchange(any_rp, code, verifier=verifier), "invalid_grant")
    assert flow.exchange(any_rp, code, verifier=RFC7636_VERIFIER).status_code == 200


def test_verifier_for_a_code_without_challenge_is_a_downgrade(
    flow: Flow, ready: RP, user: User, signed_in: LoginSession, services: Services
) -> None:
    """docs/security.md B28 (RFC 9700 §4.8.2). /authorize never issues such a code; one made
    behind its back must still not be redeemable with a made-up verifier."""
    now = db.utcnow()
    services.db.call(
        codes.create,
        services.digester,
        "legacy-code",
        client_id=ready.id,
        user_id=user.id,
        session_id=signed_in.id,
        redirect_uri=CALLBACK,
        scope="openid",
        nonce=None,
        code_challenge="",
        code_challenge_method="",
        auth_time=now,
        amr="pwd",
        acr=None,
        now=now,
        ttl=60,
    )
    assert_oauth_error(flow.exchange(ready, "legacy-code"), "invalid_request")


@pytest.mark.parametrize("redirect_uri", ["https://app.example.com/other", None])
def test_redirect_uri_must_repeat_the_authorization_requests(
    flow: Flow, ready: RP, redirect_uri: str | None
) -> None:
    """docs/security.md B29 (RFC 6749 §4.1.3)."""
    code = flow.code(ready)
    data = {"grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER}
    if redirect_uri is not None:
        data["redirect_uri"] = redirect_uri
    assert_oauth_error(flow.client.post("/token", data=data, auth=ready.basic), "invalid_grant")


def test_disabled_user_cannot_redeem(flow: Flow, ready: RP, user: User, services: Services) -> None:
    """docs/security.md B33."""
    code = flow.code(ready)

    def disable() -> None:
        found = users.get(user.id)
        assert found is not None
        found.is_active = False

    services.db.call(disable)
    assert_oauth_error(flow.exchange(ready, code), "invalid_grant")
    assert count_rows(services.db, "access_tokens") == 0


# -- client authentication -----------------------------------------------------------------


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{client_id}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def test_wrong_secret_in_basic_is_401_with_a_basic_challenge(
    flow: Flow, ready: RP, services: Services
) -> None:
    """docs/security.md B30 (RFC 6749 §5.2)."""
    code = flow.code(ready)
    response = flow.client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
              "code_verifier": VERIFIER},
        headers=basic(ready.id, "wrong"),
    )  # fmt: skip
    assert_oauth_error(response, "invalid_client", 401)
    assert response.headers["www-authenticate"] == f'Basic realm="{ISSUER}"'
    assert count_rows(services.db, "access_tokens") == 0


@pytest.mark.parametrize(
    ("data", "headers", "error", "status"),
    [
        ({"client_id": "{id}", "client_secret": "wrong"}, {}, "invalid_client", 401),
        ({"client_id": "nobody", "client_secret": "x"}, {}, "invalid_client", 401),
        ({}, {"basic": ("nobody", "x")}, "invalid_client", 401),
        ({"client_id": "{id}"}, {}, "invalid_client", 401),
        ({}, {}, "invalid_client", 401),
        ({"client_secret": "{secret}"}, {"basic": ("{id}", "{secret}")}, "invalid_request", 400),
        ({"client_id": "someone-else"}, {"basic": ("{id}", "{secret}")}, "invalid_request", 400),
        ({}, {"raw": "Basic !!!"}, "invalid_client", 401),
        ({}, {"raw": "Basic " + base64.b64encode(b"no-colon").decode()}, "invalid_client", 401),
        ({}, {"raw": "Basic " + base64.b64encode(b"\xff\xfe:x").decode()}, "invalid_client", 401),
        ({}, {"raw": "Bearer abc"}, "invalid_client", 401),
        ({}, {"basic": ("%00", "x")}, "invalid_client", 401),
        ({}, {"basic": ("a%00b", "x")}, "invalid_client", 401),
        ({}, {"basic": ("%1F", "x")}, "invalid_client", 401),
        ({}, {"basic": ("x" * 65, "x")}, "invalid_client", 401),
        ({}, {"raw": "Basic " + base64.b64encode(b"a\x00b:x").decode()}, "invalid_client", 401),
        ({"client_id": "a\x00b", "client_secret": "x"}, {}, "invalid_request", 400),
        ({"client_id": "a\x01b", "client_secret": "x"}, {}, "invalid_client", 401),
        ({"client_id": "a\x1bb"}, {}, "invalid_client", 401),
        ({"client_id": "\x7f"}, {}, "invalid_client", 401),
    ],
)
def test_client_authentication_failures(
    flow: Flow,
    ready: RP,
    data: dict[str, str],
    headers: dict[str, Any],
    error: str,
    status: int,
) -> None:
    """docs/security.md B30 and L95: one method per request, every failure 401 invalid_client
    (400 invalid_request for two methods at once), garbage never a 500."""
    secret = ready.secret or ""

    def fill(value: str) -> str:
        return value.replace("{id}", ready.id).replace("{secret}", secret)

    request_headers: dict[str, str] = {}
    if "basic" in headers:
        request_headers = basic(*(fill(v) for v in headers["basic"]))
    if "raw" in headers:
        request_headers = {"Authorization": headers["raw"]}
    code = flow.code(ready)
    body = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
            "code_verifier": VERIFIER, **{k: fill(v) for k, v in data.items()}}  # fmt: skip
    response = flow.client.post("/token", data=body, headers=request_headers)
    assert_oauth_error(response, error, status)
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Basic realm=")


@pytest.mark.parametrize("endpoint", ["/token", "/revoke", "/introspect"])
@pytest.mark.parametrize(
    ("data", "headers"),
    [
        ({}, {"Authorization": "Basic " + base64.b64encode(b"%00:x").decode()}),
        ({}, {"Authorization": "Basic " + base64.b64encode(b"\x00\x01:x").decode()}),
        ({"client_id": "bad\x01id", "client_secret": "x"}, {}),
        ({"client_id": "bad\u2028id", "client_secret": "x"}, {}),
    ],
)
def test_control_characters_in_a_client_id_are_invalid_client(
    flow: Flow, ready: RP, endpoint: str, data: dict[str, str], headers: dict[str, str]
) -> None:
    """docs/security.md B30: NUL or another control character in a client id (the Basic user,
    form-url-decoded, or the `client_id` field) is 401 `invalid_client` at every
    authenticated endpoint, refused before any query (PostgreSQL refuses NUL in text with
    an error: a 500). A raw NUL in the form body is already `invalid_request` when read."""
    body = {"grant_type": "client_credentials", "token": "t", **data}
    response = flow.client.post(endpoint, data=body, headers=headers)
    assert_oauth_error(response, "invalid_client", 401)


def test_a_code_from_a_session_that_ended_is_invalid_grant(
    flow: Flow, ready: RP, services: Services, signed_in: LoginSession
) -> None:
    """docs/security.md B33 (the code's browser session ended between /authorize and /token, e.g.
    the user signed out): the code buys nothing."""
    code = flow.code(ready)
    services.db.call(sessions.end, services.app_access, signed_in.id)
    response = flow.exchange(ready, code)
    assert_oauth_error(response, "invalid_grant", 400)
    assert count_rows(services.db, "access_tokens") == 0


def test_basic_credentials_are_form_url_decoded(flow: Flow, ready: RP) -> None:
    """docs/security.md B30 (RFC 6749 §2.3.1)."""
    code = flow.code(ready)
    encoded = "".join(f"%{ord(ch):02X}" for ch in ready.secret or "")
    response = flow.client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
              "code_verifier": VERIFIER},
        headers=basic(quote(ready.id), encoded),
    )  # fmt: skip
    assert response.status_code == 200, response.text


def test_registered_method_is_enforced(
    make: factories.Factory, flow: Flow, user: User, signed_in: LoginSession
) -> None:
    """A client registered for client_secret_post cannot switch to Basic (and back)."""
    client, secret = make.client(redirect_uris=[CALLBACK], auth_method="client_secret_post")
    rp = RP(client, secret)
    flow.allow(user, rp)
    assert_oauth_error(flow.exchange(rp, flow.code(rp)), "invalid_client", 401)


# -- request shape and grant types ---------------------------------------------------------


def test_grant_type_problems(flow: Flow, ready: RP) -> None:
    """docs/security.md B31."""
    assert_oauth_error(flow.client.post("/token", data={}, auth=ready.basic), "invalid_request")
    for grant_type in ("password", "implicit", "urn:example:unknown", "authorization code"):
        response = flow.client.post(
            "/token", data={"grant_type": grant_type, "username": "u", "password": "p"},
            auth=ready.basic,
        )  # fmt: skip
        assert_oauth_error(response, "unsupported_grant_type")
    response = flow.client.post("/token", data={"grant_type": "pass\u00e9"}, auth=ready.basic)
    assert_oauth_error(response, "invalid_request")


def test_grant_not_registered_for_the_client_is_unauthorized_client(
    make: factories.Factory, flow: Flow, user: User, signed_in: LoginSession
) -> None:
    """docs/security.md B31 (ASVS 10.4.4)."""
    client, secret = make.client(redirect_uris=[CALLBACK], grant_types=["authorization_code"])
    rp = RP(client, secret)
    body = flow.tokens(rp, user)
    assert "refresh_token" not in body
    response = flow.client.post("/token", data={"grant_type": "client_credentials"}, auth=rp.basic)
    assert_oauth_error(response, "unauthorized_client")


def test_request_shape_is_strict(flow: Flow, ready: RP) -> None:
    """docs/security.md B32: repeated parameters, JSON, query-only parameters, GET."""
    code = flow.code(ready)
    repeated = (
        f"grant_type=authorization_code&code={code}&code={code}"
        f"&redirect_uri={quote(CALLBACK, safe='')}&code_verifier={VERIFIER}"
    )
    response = flow.client.post(
        "/token",
        content=repeated,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=ready.basic,
    )
    assert_oauth_error(response, "invalid_request")
    as_json = flow.client.post(
        "/token", json={"grant_type": "authorization_code", "code": code}, auth=ready.basic
    )
    assert_oauth_error(as_json, "invalid_request")
    in_query = flow.client.post(
        "/token", params={"grant_type": "authorization_code", "code": code}, auth=ready.basic
    )
    assert_oauth_error(in_query, "invalid_request")
    garbage = flow.client.post(
        "/token",
        content=b"grant_type=%ff%fe&code=\x00",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=ready.basic,
    )
    assert_oauth_error(garbage, "invalid_request")
    get = flow.client.get("/token")
    assert get.status_code == 405
    assert flow.exchange(ready, code).status_code == 200


def test_audit_records_issuance_without_token_values(
    flow: Flow, ready: RP, user: User, services: Services
) -> None:
    """docs/security.md §0: the audit trail names who and what, never a token."""
    body = flow.tokens(ready, user)
    events = services.db.call(_events, "token.issued")
    assert [event["actor"] for event in events] == [ready.id]
    for token in (body["access_token"], body["refresh_token"], body["id_token"]):
        assert token not in str(events)
