"""Signing in with GitHub (plain OAuth 2 and its REST API), answered by respx with the
shapes GitHub documents: the token endpoint's JSON, `/user`, and `/user/emails` with its
`primary` and `verified` flags."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from starlette.testclient import TestClient

from authserver.users import models as users
from tests.conftest import sessions_of
from tests.federation.upstream import CLIENT_ID, CLIENT_SECRET, add_provider, begin, finish

USER = {
    "login": "octocat",
    "id": 583231,
    "node_id": "MDQ6VXNlcjU4MzIzMQ==",
    "type": "User",
    "name": "The Octocat",
    "email": "public@octocat.example",
}
EMAILS = [
    {"email": "old@octocat.example", "verified": True, "primary": False, "visibility": None},
    {"email": "Octocat@GitHub.example", "verified": True, "primary": True, "visibility": "private"},
]


class GitHub:
    def __init__(self, router: respx.Router) -> None:
        self.emails: list[dict[str, Any]] = list(EMAILS)
        self.token_forms: list[dict[str, list[str]]] = []
        self.api_headers: list[httpx.Headers] = []
        router.post("https://github.com/login/oauth/access_token").mock(side_effect=self.token)
        router.get("https://api.github.com/user").mock(side_effect=self.user)
        router.get("https://api.github.com/user/emails").mock(side_effect=self.user_emails)

    def token(self, request: httpx.Request) -> httpx.Response:
        form = parse_qs(request.content.decode())
        self.token_forms.append(form)
        if form.get("code") != ["good-code"]:
            return httpx.Response(
                200,
                json={
                    "error": "bad_verification_code",
                    "error_description": "The code passed is incorrect or expired.",
                    "error_uri": "https://docs.github.com/apps/troubleshooting",
                },
            )
        return httpx.Response(
            200, json={"access_token": "gho_16C7e42F292c6912E7710c838347Ae178B4a",
                       "scope": "read:user,user:email", "token_type": "bearer"},
        )  # fmt: skip

    def user(self, request: httpx.Request) -> httpx.Response:
        self.api_headers.append(request.headers)
        return httpx.Response(200, json=USER)

    def user_emails(self, request: httpx.Request) -> httpx.Response:
        self.api_headers.append(request.headers)
        return httpx.Response(200, json=self.emails)


@pytest.fixture
def github() -> Iterator[GitHub]:
    with respx.mock(assert_all_called=False) as router:
        yield GitHub(router)


def test_a_github_sign_in_creates_the_person_from_the_primary_verified_email(
    client: TestClient, github: GitHub, services: Any
) -> None:
    provider = add_provider(services, "github", jit=True)
    sent = begin(client, provider.id)
    assert sent["client_id"] == CLIENT_ID
    assert sent["scope"] == "read:user user:email"
    assert sent["code_challenge_method"] == "S256"
    assert "nonce" not in sent
    response = finish(client, sent, code="good-code")
    assert response.status_code == 303, response.text
    [form] = github.token_forms
    assert form["client_secret"] == [CLIENT_SECRET]
    assert form["code_verifier"][0]
    assert all(h["authorization"].startswith("Bearer gho_") for h in github.api_headers)
    user = services.db.call(users.find_by_email, "octocat@github.example")
    assert user is not None
    assert user.email_verified
    assert user.name == "The Octocat"
    [session] = sessions_of(services, user.id)
    assert session.amr == "fed"


def test_an_unverified_primary_github_email_does_not_link_an_existing_account(
    client: TestClient, github: GitHub, services: Any, make: Any
) -> None:
    existing = make.user(email="octocat@github.example")
    github.emails = [{**EMAILS[1], "verified": False}]
    provider = add_provider(services, "github", trust_verified_emails=True, jit=True)
    response = finish(client, begin(client, provider.id), code="good-code")
    assert response.status_code == 403
    assert sessions_of(services, existing.id) == []


def test_githubs_error_answered_with_200_is_still_an_error(
    client: TestClient, github: GitHub, services: Any
) -> None:
    provider = add_provider(services, "github", jit=True)
    response = finish(client, begin(client, provider.id), code="expired-code")
    assert response.status_code == 400
    assert "GitHub refused to complete the sign-in." in response.text
    assert services.db.call(users.find_by_email, "octocat@github.example") is None
