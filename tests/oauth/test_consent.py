"""The consent step: shown when needed, remembered per user and client, forced by
prompt=consent, skipped for first-party clients, re-validated on every submit."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from starlette.testclient import TestClient

from authserver.oauth import clients, consent
from authserver.services import Services
from authserver.sessions import models as sessions
from authserver.sessions.models import LoginSession
from authserver.users.models import User
from tests import factories
from tests.conftest import ISSUER, count_rows, csrf_token
from tests.oauth.conftest import (
    CALLBACK,
    RP,
    SCOPE,
    Flow,
    authorization_params,
    location_params,
)


def to_consent(client: TestClient, rp: RP, **overrides: str | None) -> httpx.Response:
    """GET /authorize, which sends the user on to the consent page; returns that page."""
    response = client.get("/authorize", params=authorization_params(rp, **overrides))
    assert response.status_code == 303, response.text
    assert urlsplit(response.headers["location"]).path == "/consent"
    page = client.get(response.headers["location"])
    assert page.status_code == 200, page.text
    return page


def consent_nonce(page: httpx.Response) -> str:
    match = re.search(r'name="consent_nonce" value="([^"]+)"', page.text)
    assert match is not None
    return match.group(1)


def form_fields(page: httpx.Response, decision: str, **extra: str) -> dict[str, str]:
    """What the browser posts for the page's form: its hidden fields and the decision."""
    return {
        "csrf_token": csrf_token(page),
        "consent_nonce": consent_nonce(page),
        "decision": decision,
        **extra,
    }


def form_action(page: httpx.Response) -> str:
    match = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert match is not None
    return match.group(1).replace("&amp;", "&")


def answer(client: TestClient, page: httpx.Response, decision: str, **extra: str) -> httpx.Response:
    return client.post(form_action(page), data=form_fields(page, decision, **extra))


def remembered(services: Services, user: User, rp: RP) -> str | None:
    found = services.db.call(consent.find, user.id, rp.id)
    return found.scope if found is not None else None


def test_consent_page_names_the_client_and_each_scope(
    client: TestClient, rp: RP, signed_in: LoginSession
) -> None:
    """SPEC §6: the client's name, each scope in words, Allow and Deny, a CSRF token."""
    page = to_consent(client, rp, scope="openid profile email offline_access")
    assert "Photo Printer" in page.text
    for words in (
        "Confirm your identity",
        "See your name",
        "See your email address",
        "Stay signed in to Photo Printer when you are away",
    ):
        assert words in page.text
    assert re.search(r"<button[^>]*>Allow</button>", page.text)
    assert re.search(r"<button[^>]*>Deny</button>", page.text)
    assert csrf_token(page)
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"


def test_allow_issues_a_code_and_remembers_the_scopes(
    client: TestClient, services: Services, rp: RP, user: User, signed_in: LoginSession
) -> None:
    page = to_consent(client, rp, scope="openid profile")
    response = answer(client, page, "allow")
    assert response.status_code == 303
    params = location_params(response)
    assert set(params) == {"code", "state", "iss"}
    assert remembered(services, user, rp) == "openid profile"

    again = client.get("/authorize", params=authorization_params(rp, scope="profile openid"))
    assert "code" in location_params(again)
    fewer = client.get("/authorize", params=authorization_params(rp, scope="openid"))
    assert "code" in location_params(fewer)

    page = to_consent(client, rp, scope="openid email")
    answer(client, page, "allow")
    assert set((remembered(services, user, rp) or "").split()) == {"openid", "profile", "email"}


def test_deny_sends_access_denied_and_stores_nothing(
    client: TestClient, services: Services, rp: RP, user: User, signed_in: LoginSession
) -> None:
    """docs/security.md A18."""
    response = answer(client, to_consent(client, rp), "deny")
    assert response.status_code == 303
    assert response.headers["location"].startswith(CALLBACK + "?")
    params = location_params(response)
    assert params["error"] == "access_denied"
    assert params["state"] == "S"
    assert params["iss"] == ISSUER
    assert count_rows(services.db, "authorization_codes") == 0
    assert remembered(services, user, rp) is None


def test_prompt_consent_forces_the_page(
    flow: Flow, rp: RP, user: User, signed_in: LoginSession
) -> None:
    flow.allow(user, rp)
    page = to_consent(flow.client, rp, prompt="consent")
    assert "code" in location_params(answer(flow.client, page, "allow"))


def test_skip_consent_clients_never_show_the_page(
    make: factories.Factory, client: TestClient, signed_in: LoginSession
) -> None:
    trusted, secret = make.client(redirect_uris=[CALLBACK], skip_consent=True)
    response = client.get(
        "/authorize", params=authorization_params(RP(trusted, secret), prompt="consent")
    )
    assert "code" in location_params(response)


def test_dynamically_registered_clients_always_ask_and_show_where_they_send_you(
    flow: Flow, services: Services, rp: RP, user: User, signed_in: LoginSession
) -> None:
    """docs/security.md §1 consent (ASVS 10.4.7) and A18: unverified clients always ask."""

    def mark_dynamic() -> None:
        found = clients.get(rp.id)
        assert found is not None
        found.dynamically_registered = True

    services.db.call(mark_dynamic)
    flow.allow(user, rp)
    page = to_consent(flow.client, rp)
    assert "app.example.com" in page.text
    assert 'role="alert"' in page.text


def test_csrf_is_required(
    client: TestClient, services: Services, rp: RP, signed_in: LoginSession
) -> None:
    """docs/security.md H64: no token, a foreign Origin → 403, nothing stored."""
    page = to_consent(client, rp)
    action = form_action(page)
    assert client.post(action, data={"decision": "allow"}).status_code == 403
    forged = client.post(
        action,
        data={"csrf_token": csrf_token(page), "decision": "allow"},
        headers={"Origin": "https://evil.example"},
    )
    assert forged.status_code == 403
    assert count_rows(services.db, "authorization_codes") == 0
    assert count_rows(services.db, "consents") == 0


def test_submit_revalidates_the_request_and_ignores_posted_fields(
    client: TestClient, services: Services, rp: RP, user: User, signed_in: LoginSession
) -> None:
    """docs/security.md H65: hidden fields are not read; an edited query is validated again."""
    page = to_consent(client, rp, scope="openid")
    response = answer(client, page, "allow", scope="openid email offline_access", client_id="x")
    assert "code" in location_params(response)
    assert remembered(services, user, rp) == "openid"

    tampered = form_action(page).replace("scope=openid", "scope=openid+admin")
    response = client.post(tampered, data=form_fields(page, "allow"))
    assert location_params(response)["error"] == "invalid_scope"
    evil = form_action(page).replace("app.example.com", "evil.example")
    response = client.post(evil, data=form_fields(page, "allow"))
    assert response.status_code == 400
    assert "location" not in response.headers


def test_each_submit_checks_the_session_again(
    client: TestClient, services: Services, rp: RP, signed_in: LoginSession
) -> None:
    """Double submit: every submit re-validates; after sign-out the second one gets no code."""
    page = to_consent(client, rp)
    assert "code" in location_params(answer(client, page, "allow"))
    services.db.call(sessions.end, services.app_access, signed_in.id)
    second = answer(client, page, "allow")
    assert second.status_code == 303
    assert urlsplit(second.headers["location"]).path == "/login"
    assert count_rows(services.db, "authorization_codes") == 1


def test_consent_page_needs_a_session(client: TestClient, rp: RP) -> None:
    response = client.get("/consent", params=authorization_params(rp))
    assert response.status_code == 303
    assert urlsplit(response.headers["location"]).path == "/login"


def test_consent_page_when_nothing_is_needed_goes_back_to_authorize(
    flow: Flow, rp: RP, user: User, signed_in: LoginSession
) -> None:
    flow.allow(user, rp)
    response = flow.client.get("/consent", params=authorization_params(rp))
    assert response.status_code == 303
    assert urlsplit(response.headers["location"]).path == "/authorize"


def test_client_name_is_escaped(
    make: factories.Factory, client: TestClient, signed_in: LoginSession
) -> None:
    """docs/security.md A12, G59: markup in a client name is shown, not run."""
    hostile, secret = make.client(name='"><svg onload=alert(1)>', redirect_uris=[CALLBACK])
    page = to_consent(client, RP(hostile, secret))
    assert "<svg" not in page.text
    assert "&lt;svg onload=alert(1)&gt;" in page.text


@pytest.mark.parametrize("decision", ["", "maybe"])
def test_unknown_decision_is_refused(
    client: TestClient, rp: RP, signed_in: LoginSession, decision: str
) -> None:
    page = to_consent(client, rp)
    response = answer(client, page, decision)
    assert response.status_code == 400
    assert "location" not in response.headers


def test_query_on_the_consent_page_keeps_the_request_intact(
    client: TestClient, rp: RP, signed_in: LoginSession
) -> None:
    page = to_consent(client, rp, state="a&b=c d")
    query = parse_qs(urlsplit(form_action(page)).query)
    assert query["state"] == ["a&b=c d"]
    assert location_params(answer(client, page, "allow"))["state"] == "a&b=c d"


@pytest.mark.parametrize(
    ("first", "second"), [("allow", "allow"), ("deny", "allow"), ("allow", "deny")]
)
def test_a_consent_form_is_answered_once(
    client: TestClient,
    services: Services,
    rp: RP,
    signed_in: LoginSession,
    first: str,
    second: str,
) -> None:
    """docs/security.md H65, K84: double submit → one code. The second submit of the same
    rendered form is a 400 page saying so, and issues nothing."""
    page = to_consent(client, rp)
    answered = answer(client, page, first)
    assert answered.status_code == 303
    again = answer(client, page, second)
    assert again.status_code == 400
    assert "already answered" in again.text
    assert "location" not in again.headers
    assert count_rows(services.db, "authorization_codes") == (1 if first == "allow" else 0)


@pytest.mark.parametrize("nonce", [None, "", "forged", "x" * 500])
def test_a_consent_answer_needs_the_forms_nonce(
    client: TestClient, services: Services, rp: RP, signed_in: LoginSession, nonce: str | None
) -> None:
    """docs/security.md H65: an answer without the rendered form's nonce gets no code."""
    page = to_consent(client, rp)
    data = form_fields(page, "allow")
    if nonce is None:
        del data["consent_nonce"]
    else:
        data["consent_nonce"] = nonce
    response = client.post(form_action(page), data=data)
    assert response.status_code == 400
    assert count_rows(services.db, "authorization_codes") == 0
    assert "code" in location_params(answer(client, page, "allow"))


def consent_url(rp: RP, **overrides: str | None) -> str:
    return "/consent?" + urlencode(authorization_params(rp, **overrides))


def test_a_nonce_is_bound_to_the_client_it_was_shown_for(
    client: TestClient, services: Services, rp: RP, signed_in: LoginSession, make: factories.Factory
) -> None:
    """docs/security.md H65: the form shown for one client, answered at another client's
    /consent URL with a wider scope (same person, valid CSRF token), issues nothing."""
    other, _ = make.client(
        name="Other App", redirect_uris=["https://other.example.com/cb"], scope=SCOPE
    )
    page = to_consent(client, rp, scope="openid")
    target = consent_url(
        RP(other, None, "https://other.example.com/cb"), scope="openid profile email"
    )
    refused = client.post(target, data=form_fields(page, "allow"))
    assert refused.status_code == 400
    assert "does not belong to the request" in refused.text
    assert "location" not in refused.headers
    assert count_rows(services.db, "authorization_codes") == 0
    assert count_rows(services.db, "consents") == 0
    assert "code" in location_params(answer(client, page, "allow"))


@pytest.mark.parametrize(
    "changes",
    [
        {"scope": "openid profile email offline_access"},
        {"scope": "openid"},
        {"redirect_uri": "https://rp.example.com/other"},
    ],
)
def test_a_nonce_is_bound_to_the_scope_and_redirect_uri(
    client: TestClient,
    services: Services,
    make: factories.Factory,
    signed_in: LoginSession,
    changes: dict[str, str],
) -> None:
    created, secret = make.client(
        name="Two Callbacks",
        redirect_uris=[CALLBACK, "https://rp.example.com/other"],
        scope=SCOPE,
    )
    two = RP(created, secret)
    page = to_consent(client, two)
    refused = client.post(consent_url(two, **changes), data=form_fields(page, "allow"))
    assert refused.status_code == 400
    assert "does not belong to the request" in refused.text
    assert count_rows(services.db, "authorization_codes") == 0
    assert count_rows(services.db, "consents") == 0


def test_a_nonce_is_bound_to_the_person_and_session(
    client: TestClient,
    services: Services,
    rp: RP,
    user: User,
    sign_in_directly: Callable[..., LoginSession],
    make: factories.Factory,
) -> None:
    """Shown to one person (or one session), answered in another: nothing issued."""
    sign_in_directly(user)
    page = to_consent(client, rp)
    sign_in_directly(make.user(email="mallory@example.com"))
    refused = answer(client, page, "allow")
    assert refused.status_code == 400
    sign_in_directly(user)
    refused = answer(client, page, "allow")
    assert refused.status_code == 400
    assert count_rows(services.db, "authorization_codes") == 0


def test_a_nonce_is_bound_to_the_organizations_offered(
    client: TestClient,
    services: Services,
    user: User,
    signed_in: LoginSession,
    make: factories.Factory,
) -> None:
    """The chooser offered one set of organizations; once that set changes the form is
    stale, and an organization that was not offered is never taken."""
    created, secret = make.client(
        name="Org App", redirect_uris=[CALLBACK], scope="openid organization"
    )
    org_rp = RP(created, secret)
    make.organization(user, name="Acme")
    make.organization(user, name="Beta")
    page = to_consent(client, org_rp, scope="openid organization")
    offered = re.findall(r'<option value="([^"]+)"', page.text)
    assert len(offered) == 2
    make.organization(user, name="Gamma")
    refused = answer(client, page, "allow", organization=offered[0])
    assert refused.status_code == 400
    assert count_rows(services.db, "authorization_codes") == 0
