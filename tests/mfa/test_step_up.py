"""Step-up at /authorize: `acr_values` asking for multi-factor, the policies (the person,
AUTHSERVER_MFA_REQUIRED, an organization), and `acr`/`amr` in the ID and access tokens."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from starlette.testclient import TestClient

from authserver.mfa import models as mfa_models
from authserver.mfa.policy import ACR_MFA, ACR_PWD
from authserver.services import Services
from authserver.users.models import User
from tests.conftest import sessions_of, sign_in_by_form
from tests.mfa.conftest import code_now, enrol_totp, submit_factor
from tests.oauth.conftest import RP, Flow, authorization_params, location_params


def _claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def _tokens(flow: Flow, rp: RP, location: str) -> dict[str, Any]:
    code = parse_qs(urlsplit(location).query)["code"][0]
    response = flow.exchange(rp, code)
    assert response.status_code == 200, response.text
    return response.json()


def test_acr_values_asking_for_mfa_prompts_a_password_session_for_the_factor(
    client: TestClient,
    services: Services,
    user: User,
    rp: RP,
    flow: Flow,
) -> None:
    secret = enrol_totp(services, user, required=False)
    assert sign_in_by_form(client, user.email).status_code == 303
    [login] = sessions_of(services, user.id)
    assert login.amr == "pwd", "not required: password only"
    assert not login.awaiting_factor
    flow.allow(user, rp)

    plain = client.get("/authorize", params=authorization_params(rp))
    id_claims = _claims(_tokens(flow, rp, plain.headers["location"])["id_token"])
    assert id_claims["acr"] == ACR_PWD
    assert id_claims["amr"] == ["pwd"]

    params = authorization_params(rp, acr_values=f"{ACR_MFA} {ACR_PWD}")
    asked = client.get("/authorize", params=params)
    assert asked.status_code == 303
    assert asked.headers["location"].startswith("/login/factor?next=%2Fauthorize%3F")
    next_url = parse_qs(urlsplit(asked.headers["location"]).query)["next"][0]
    done = submit_factor(client, "otp", code_now(secret), next_url)
    assert done.headers["location"] == next_url
    answer = client.get(next_url)
    assert "code" in location_params(answer)
    tokens = _tokens(flow, rp, answer.headers["location"])
    id_claims = _claims(tokens["id_token"])
    assert id_claims["acr"] == ACR_MFA
    assert id_claims["amr"] == ["pwd", "otp", "mfa"]
    access = _claims(tokens["access_token"])
    assert access["acr"] == ACR_MFA
    assert access["amr"] == ["pwd", "otp", "mfa"]
    [login] = sessions_of(services, user.id)
    assert login.auth_time == login.password_at, "a step-up keeps the sign-in time"


def test_prompt_none_with_a_missing_factor_is_interaction_required(
    client: TestClient, services: Services, user: User, rp: RP, flow: Flow
) -> None:
    enrol_totp(services, user, required=False)
    flow.sign_in_directly(user)
    flow.allow(user, rp)
    params = authorization_params(rp, acr_values=ACR_MFA, prompt="none")
    answer = location_params(client.get("/authorize", params=params))
    assert answer["error"] == "interaction_required"


def test_acr_values_for_someone_without_a_factor_says_pwd(
    client: TestClient, services: Services, user: User, rp: RP, flow: Flow
) -> None:
    """`acr_values` is voluntary (OIDC Core §3.1.2.1): the token says what was done."""
    flow.sign_in_directly(user)
    flow.allow(user, rp)
    answer = client.get("/authorize", params=authorization_params(rp, acr_values=ACR_MFA))
    assert _claims(_tokens(flow, rp, answer.headers["location"])["id_token"])["acr"] == ACR_PWD


def test_a_password_sign_in_for_an_mfa_request_asks_for_the_factor_at_once(
    client: TestClient, services: Services, user: User, rp: RP
) -> None:
    enrol_totp(services, user, required=False)
    next_url = "/authorize?" + urlencode(authorization_params(rp, acr_values=ACR_MFA))
    answer = sign_in_by_form(client, user.email, next=next_url)
    assert answer.headers["location"].startswith("/login/factor?")
    [pending] = sessions_of(services, user.id)
    assert pending.awaiting_factor


def test_the_administrator_requires_a_factor_of_everyone(
    app_with, services: Services, user: User, rp: RP, make, allow
) -> None:
    client = app_with(mfa_required=True)
    enrol_totp(services, user, required=False)

    def lands_on(email: str) -> str:
        """Where a fresh sign-in of `email` leads."""
        client.cookies.clear()
        return str(sign_in_by_form(client, email).headers["location"])

    assert lands_on(user.email).startswith("/login/factor?")
    without = make.user(email="nofactor@example.com")
    assert lands_on(without.email) == "/login"
    allow(without, rp)
    refused = client.get("/authorize", params=authorization_params(rp))
    assert refused.status_code == 400
    assert "must use a second factor" in refused.text


def test_an_organization_requires_a_factor_of_its_members(
    client: TestClient, services: Services, user: User, make
) -> None:
    enrol_totp(services, user, required=False)
    organization = make.organization(user)
    assert sign_in_by_form(client, user.email, next="/account").headers["location"] == "/account"
    services.db.call(mfa_models.set_organization_requires, organization.id, True)
    client.cookies.clear()
    answer = sign_in_by_form(client, user.email, next="/account")
    assert answer.headers["location"].startswith("/login/factor?")
