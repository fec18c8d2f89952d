"""Signing in through an upstream OpenID provider: the flow, the claims it leaves in our
session, and every way the upstream answer can be wrong (each refused with a page, nothing
created). docs/security.md N101, N102, N103."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import respx
from sqlalchemy import select
from starlette.testclient import TestClient

from authserver.db import current_session
from authserver.federation.models import LinkedIdentity
from authserver.users import models as users
from tests.conftest import audit_events, count_rows, sessions_of
from tests.federation.upstream import (
    CLIENT_ID,
    CLIENT_SECRET,
    OTHER_KEY,
    ROTATED_KEY,
    SIGNING_KEY,
    UPSTREAM,
    FakeOidc,
    add_provider,
    begin,
    finish,
    s256,
)


@pytest.fixture
def fake() -> Iterator[FakeOidc]:
    upstream = FakeOidc()
    with respx.mock(assert_all_called=False) as router:
        upstream.install(router)
        yield upstream


@pytest.fixture
def provider(services: Any, fake: FakeOidc) -> Any:
    return add_provider(services, jit=True)


def links(services: Any) -> list[LinkedIdentity]:
    return services.db.call(lambda: list(current_session().scalars(select(LinkedIdentity))))


def nothing_created(services: Any) -> bool:
    return (
        count_rows(services.db, "users") == 0
        and count_rows(services.db, "linked_identities") == 0
        and count_rows(services.db, "login_sessions") == 0
    )


def test_the_request_upstream_carries_state_nonce_pkce_s256_and_our_callback(
    client: TestClient, fake: FakeOidc, provider: Any
) -> None:
    sent = begin(client, provider.id, fake)
    assert sent["response_type"] == "code"
    assert sent["client_id"] == CLIENT_ID
    assert sent["redirect_uri"] == "http://127.0.0.1:8000/login/federated/callback"
    assert sent["code_challenge_method"] == "S256"
    assert len(sent["state"]) >= 32
    assert len(sent["nonce"]) >= 32
    assert sent["scope"].split() == ["openid", "email", "profile"]
    finish(client, sent)
    [form] = fake.token_requests
    assert s256(form["code_verifier"][0]) == sent["code_challenge"]
    assert form["redirect_uri"] == [sent["redirect_uri"]]


def test_a_new_person_signs_in_just_in_time_with_upstream_claims(
    client: TestClient, fake: FakeOidc, provider: Any, services: Any
) -> None:
    next_url = "/account"
    sent = begin(client, provider.id, fake, next=next_url)
    response = finish(client, sent)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == next_url
    user = services.db.call(users.find_by_email, "ann@acme.example")
    assert user is not None
    assert user.password_hash is None
    assert user.email_verified
    [session] = sessions_of(services, user.id)
    assert session.amr == "fed pwd mfa"
    assert abs(session.auth_time.timestamp() - (time.time() - 5)) < 3
    [link] = links(services)
    assert (link.user_id, link.subject) == (user.id, "upstream-1")
    assert [e.details["method"] for e in audit_events(services, "login.succeeded")] == ["federated"]
    assert len(audit_events(services, "identity.linked")) == 1
    assert client.get("/account").status_code == 200


def test_the_client_secret_is_stored_encrypted_and_bound_to_the_provider(
    services: Any, provider: Any
) -> None:
    stored = services.db.call(lambda: current_session().get(type(provider), provider.id))
    assert CLIENT_SECRET not in stored.client_secret
    box = services.federation.box
    assert box.open(stored.client_secret, provider.id) == CLIENT_SECRET.encode()
    assert box.open(stored.client_secret, "another-provider-id") is None


def test_an_upstream_refusal_comes_back_to_the_sign_in_page(
    client: TestClient, fake: FakeOidc, provider: Any, services: Any
) -> None:
    sent = begin(client, provider.id, fake)
    response = finish(client, sent, code="", error="access_denied")
    assert response.status_code == 403
    assert "You cancelled the sign-in at Acme SSO" in response.text
    assert "Continue with Acme SSO" in response.text
    assert nothing_created(services)


def test_an_upstream_token_error_is_a_clear_page(
    client: TestClient, fake: FakeOidc, provider: Any, services: Any
) -> None:
    fake.token_status = 400
    response = finish(client, begin(client, provider.id, fake))
    assert response.status_code == 400
    assert "Acme SSO refused to complete the sign-in." in response.text
    assert nothing_created(services)


# -- state, PKCE, iss -------------------------------------------------------------------------


def test_a_callback_with_another_state_is_refused(
    client: TestClient, fake: FakeOidc, provider: Any, services: Any
) -> None:
    sent = begin(client, provider.id, fake)
    response = finish(client, {**sent, "state": "x" * 43})
    assert response.status_code == 400
    assert "expired or was started in another browser" in response.text
    assert fake.token_requests == []
    assert nothing_created(services)


def test_a_callback_in_a_browser_that_did_not_start_it_is_refused(
    client: TestClient, app: Any, fake: FakeOidc, provider: Any, services: Any
) -> None:
    sent = begin(client, provider.id, fake)
    with TestClient(app, base_url="http://127.0.0.1:8000", follow_redirects=False) as other:
        response = finish(other, sent)
    assert response.status_code == 400
    assert "started in another browser" in response.text
    assert fake.token_requests == []
    assert nothing_created(services)


@pytest.mark.parametrize(
    "params",
    [{}, {"state": "é" * 43, "code": "c"}, {"state": "s" * 5000}, {"error": "x\x00"},
     {"state": "", "code": ""}],
    ids=["nothing", "non-ascii state", "huge state", "control characters", "empty"],
)  # fmt: skip
def test_a_malformed_callback_is_a_clear_page(
    client: TestClient, fake: FakeOidc, provider: Any, services: Any, params: dict[str, str]
) -> None:
    begin(client, provider.id, fake)
    response = client.get("/login/federated/callback", params=params)
    assert response.status_code == 400
    assert "Start again" in response.text
    assert nothing_created(services)


def test_a_malformed_flow_cookie_is_a_clear_page(
    client: TestClient, fake: FakeOidc, provider: Any
) -> None:
    sent = begin(client, provider.id, fake)
    for garbage in ("v1.!!!", "v1." + "A" * 40, "x" * 30000):
        client.cookies.clear()
        client.cookies.set("fedflow", garbage, path="/login/federated")
        assert finish(client, sent).status_code == 400
    assert fake.token_requests == []


def test_a_replayed_callback_is_refused(
    client: TestClient, fake: FakeOidc, provider: Any, services: Any
) -> None:
    sent = begin(client, provider.id, fake)
    cookies = dict(client.cookies)
    assert finish(client, sent).status_code == 303
    client.cookies.clear()
    for name, value in cookies.items():
        client.cookies.set(name, value, path="/login/federated")
    replay = finish(client, sent)
    assert replay.status_code == 400
    assert len(fake.token_requests) == 1


def test_a_code_redeemed_with_another_verifier_gets_nothing(
    client: TestClient, fake: FakeOidc, provider: Any, services: Any
) -> None:
    sent = begin(client, provider.id, fake)
    fake.request = {**sent, "code_challenge": s256("an attacker's verifier")}
    response = finish(client, sent)
    assert response.status_code == 400
    assert nothing_created(services)


def test_an_iss_from_another_issuer_is_refused_rfc_9207(
    client: TestClient, fake: FakeOidc, provider: Any, services: Any
) -> None:
    response = finish(client, begin(client, provider.id, fake), iss="https://evil.example")
    assert response.status_code == 400
    assert "Acme SSO could not sign you in" in response.text
    assert fake.token_requests == []
    assert nothing_created(services)


def test_a_provider_that_promised_iss_must_send_it(
    client: TestClient, fake: FakeOidc, services: Any
) -> None:
    fake.sends_iss = True
    provider = add_provider(services, jit=True)
    assert finish(client, begin(client, provider.id, fake)).status_code == 400
    assert fake.token_requests == []
    response = finish(client, begin(client, provider.id, fake), iss=UPSTREAM)
    assert response.status_code == 303


# -- the ID token -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "misbehave",
    [
        pytest.param({"claims": {"aud": "someone-else"}}, id="wrong aud"),
        pytest.param({"claims": {"iss": "https://evil.example"}}, id="wrong iss"),
        pytest.param({"claims": {"exp": int(time.time()) - 3600}}, id="expired"),
        pytest.param({"claims": {"azp": "someone-else"}}, id="wrong azp"),
        pytest.param({"claims": {"aud": [CLIENT_ID, "other"]}}, id="azp missing for two audiences"),
        pytest.param({"claims": {"nonce": "not-the-one-we-sent"}}, id="wrong nonce"),
        pytest.param({"claims": {"nonce": None}}, id="no nonce"),
        pytest.param({"key": OTHER_KEY}, id="bad signature"),
        pytest.param({"alg": "none"}, id="alg none"),
        pytest.param({"alg": "HS256"}, id="alg HS256 keyed with the client secret"),
    ],
)
def test_a_bad_id_token_is_refused_and_nothing_is_created(
    client: TestClient, fake: FakeOidc, provider: Any, services: Any, misbehave: dict[str, Any]
) -> None:
    for name, value in misbehave.items():
        setattr(fake, name, value)
    response = finish(client, begin(client, provider.id, fake))
    assert response.status_code == 400, response.text
    assert "The sign-in answer from Acme SSO could not be verified." in response.text
    assert nothing_created(services)
    [failure] = audit_events(services, "login.failed")
    assert failure.details["reason"] == "upstream_refused"


def test_an_id_token_from_an_earlier_sign_in_is_refused_nonce_replay(
    client: TestClient, fake: FakeOidc, provider: Any, services: Any
) -> None:
    first = begin(client, provider.id, fake)
    earlier = fake.make_id_token(first["nonce"])
    assert finish(client, first).status_code == 303
    client.cookies.clear()
    fake.id_token = earlier
    response = finish(client, begin(client, provider.id, fake))
    assert response.status_code == 400
    assert "could not be verified" in response.text
    assert len(sessions_of(services, links(services)[0].user_id)) == 1


def test_the_jwks_is_cached_and_fetched_again_when_an_unknown_kid_appears(
    client: TestClient, fake: FakeOidc, provider: Any, services: Any, monkeypatch: Any
) -> None:
    from authserver import fetch

    monkeypatch.setattr(fetch, "REFRESH_FLOOR", 0)
    for _ in range(2):
        client.cookies.clear()
        assert finish(client, begin(client, provider.id, fake)).status_code == 303
    assert fake.jwks_fetches == 1
    client.cookies.clear()
    fake.key, fake.published = ROTATED_KEY, [SIGNING_KEY, ROTATED_KEY]
    assert finish(client, begin(client, provider.id, fake)).status_code == 303
    assert fake.jwks_fetches == 2


def test_max_age_is_sent_upstream_and_an_old_upstream_sign_in_is_refused(
    client: TestClient, fake: FakeOidc, provider: Any, services: Any
) -> None:
    sent = begin(client, provider.id, fake, max_age="60")
    assert sent["max_age"] == "60"
    fake.claims = {"auth_time": int(time.time()) - 3600}
    response = finish(client, sent)
    assert response.status_code == 400
    assert "did not confirm a fresh sign-in" in response.text
    assert nothing_created(services)


def test_a_disabled_provider_is_neither_shown_nor_started(
    client: TestClient, fake: FakeOidc, provider: Any, services: Any
) -> None:
    assert "Continue with Acme SSO" in client.get("/login").text
    services.db.call(
        lambda: setattr(current_session().get(type(provider), provider.id), "enabled", False)
    )
    services.federation.forget()
    assert "Continue with Acme SSO" not in client.get("/login").text
    response = client.get(f"/login/federated/{provider.id}")
    assert response.status_code == 404
    assert "not available" in response.text


def test_the_provider_for_the_login_hint_domain_is_preselected_and_idp_hint_goes_straight_there(
    client: TestClient, fake: FakeOidc, services: Any
) -> None:
    add_provider(services, name="Other SSO")
    acme = add_provider(services, domains=["acme.example"])
    page = client.get("/login", params={"login_hint": "bob@acme.example"}).text
    assert page.index("Continue with Acme SSO") < page.index("Continue with Other SSO")
    response = client.get("/login", params={"idp_hint": "Acme SSO"})
    assert response.status_code == 303
    assert response.headers["location"].startswith(f"/login/federated/{acme.id}")


def test_auth_time_from_upstream_never_lies_in_the_future(
    client: TestClient, fake: FakeOidc, provider: Any, services: Any
) -> None:
    fake.claims = {"auth_time": int(time.time()) + 30, "iat": int(time.time())}
    assert finish(client, begin(client, provider.id, fake)).status_code == 303
    user = services.db.call(users.find_by_email, "ann@acme.example")
    [session] = sessions_of(services, user.id)
    assert session.auth_time <= datetime.now(UTC)


def test_an_authorization_request_with_max_age_asks_the_upstream_for_it_too(
    client: TestClient, fake: FakeOidc, provider: Any, make: Any
) -> None:
    app, _ = make.client(redirect_uris=["https://app.example.com/cb"])
    authorize = client.get(
        "/authorize",
        params={"response_type": "code", "client_id": app.id, "scope": "openid",
                "redirect_uri": "https://app.example.com/cb", "max_age": "120",
                "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                "code_challenge_method": "S256"},
    )  # fmt: skip
    login = client.get(authorize.headers["location"])
    [href] = re.findall(r'href="(/login/federated/[^"]+)"', login.text)
    start = client.get(html.unescape(href))
    sent = parse_qs(urlsplit(start.headers["location"]).query)
    assert sent["max_age"] == ["120"]
    assert "prompt" not in sent


def test_a_signed_in_person_asked_to_sign_in_again_is_sent_upstream_with_prompt_login(
    client: TestClient, fake: FakeOidc, provider: Any, make: Any
) -> None:
    assert finish(client, begin(client, provider.id, fake)).status_code == 303
    app, _ = make.client(redirect_uris=["https://app.example.com/cb"])
    authorize = client.get(
        "/authorize",
        params={"response_type": "code", "client_id": app.id, "scope": "openid",
                "redirect_uri": "https://app.example.com/cb", "prompt": "login",
                "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                "code_challenge_method": "S256"},
    )  # fmt: skip
    login = client.get(authorize.headers["location"])
    [href] = re.findall(r'href="(/login/federated/[^"]+)"', login.text)
    sent = begin_at(client, html.unescape(href), fake)
    assert sent["prompt"] == "login"
    resumed = finish(client, sent)
    assert resumed.headers["location"].startswith("/authorize?")
    assert client.get(resumed.headers["location"]).headers["location"].startswith("/consent?")


def test_an_upstream_that_ignores_prompt_login_does_not_count_as_a_fresh_sign_in(
    client: TestClient, fake: FakeOidc, provider: Any, make: Any, services: Any
) -> None:
    assert finish(client, begin(client, provider.id, fake)).status_code == 303
    app, _ = make.client(redirect_uris=["https://app.example.com/cb"])
    authorize = client.get(
        "/authorize",
        params={"response_type": "code", "client_id": app.id, "scope": "openid",
                "redirect_uri": "https://app.example.com/cb", "prompt": "login",
                "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                "code_challenge_method": "S256"},
    )  # fmt: skip
    login = client.get(authorize.headers["location"])
    [href] = re.findall(r'href="(/login/federated/[^"]+)"', login.text)
    sent = begin_at(client, html.unescape(href), fake)
    fake.claims = {"auth_time": int(time.time()) - 3600}
    refused = finish(client, sent)
    assert refused.status_code == 400
    assert "Acme SSO did not confirm a fresh sign-in." in refused.text


def begin_at(client: TestClient, href: str, fake: FakeOidc) -> dict[str, str]:
    start = client.get(href)
    sent = {k: v[0] for k, v in parse_qs(urlsplit(start.headers["location"]).query).items()}
    fake.request = sent
    return sent
