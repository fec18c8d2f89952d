"""The `organization` scope (issue 4): the user picks one of their organizations at consent,
and the access token, ID token and /userinfo carry `org_id` and `org_role`; refresh keeps
the organization and reads the role afresh; the posted choice is never trusted."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from starlette.testclient import TestClient

from authserver.organizations import models as orgs
from authserver.organizations.models import Organization
from authserver.services import Services
from authserver.sessions.models import LoginSession
from authserver.users.models import User
from tests import factories
from tests.conftest import count_rows
from tests.oauth.conftest import CALLBACK, RP, SCOPE, Flow, authorization_params, location_params
from tests.oauth.test_consent import answer, csrf_token, form_action, form_fields, to_consent
from tests.oauth.test_token import assert_oauth_error

ORG_SCOPE = "openid profile email organization"
CHOOSER = re.compile(r'<label for="organization">Organization</label>\s*<select id="organization"')
ALLOW = re.compile(r"<button[^>]*>Allow</button>")
DENY = re.compile(r"<button[^>]*>Deny</button>")


@dataclass
class Orgs:
    """The user is Acme's owner and Beta's admin; Gamma is only Olga's, as Beta is too."""

    services: Services
    acme: Organization
    beta: Organization
    gamma: Organization
    olga: User

    def in_beta(self, change: Any, *args: Any, **kwargs: Any) -> Any:
        """Change Beta's members as its owner, Olga, does through the REST API."""
        return self.services.db.call(
            lambda: change(orgs.access(self.beta.id, self.olga.id), *args, **kwargs)
        )


@pytest.fixture
def org_rp(make: factories.Factory) -> RP:
    client, secret = make.client(
        name="Team Board",
        redirect_uris=[CALLBACK],
        scope=f"{SCOPE} organization",
        grant_types=["authorization_code", "refresh_token"],
    )
    return RP(client, secret)


@pytest.fixture
def memberships(make: factories.Factory, services: Services, user: User) -> Orgs:
    olga = make.user(email="olga@example.com")
    found = Orgs(
        services,
        acme=make.organization(user, name="Acme"),
        beta=make.organization(olga, name="Beta Labs"),
        gamma=make.organization(olga, name="Gamma Corp"),
        olga=olga,
    )
    found.in_beta(orgs.add_member, email=user.email, role="admin")
    return found


def verified(client: TestClient, token: str, audience: str) -> dict[str, Any]:
    """Claims checked the way a resource server does: signature against /jwks.json."""
    keys = jwt.PyJWKSet.from_dict(client.get("/jwks.json").json())
    key = keys[jwt.get_unverified_header(token)["kid"]]
    return jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience=audience)


def consent_and_redeem(flow: Flow, rp: RP, organization: str, **overrides: str) -> dict[str, Any]:
    page = to_consent(flow.client, rp, scope=ORG_SCOPE, **overrides)
    response = answer(flow.client, page, "allow", organization=organization)
    assert response.status_code == 303, response.text
    token = flow.exchange(rp, location_params(response)["code"])
    assert token.status_code == 200, token.text
    return token.json()


def org_claims(claims: dict[str, Any]) -> tuple[Any, Any]:
    return claims.get("org_id"), claims.get("org_role")


def assert_carries(
    flow: Flow, services: Services, rp: RP, body: dict[str, Any], expected: tuple[Any, Any]
) -> None:
    """The access token, the ID token and /userinfo all name the same organization and role."""
    access = verified(flow.client, body["access_token"], services.settings.api_audience)
    assert org_claims(access) == expected
    assert org_claims(verified(flow.client, body["id_token"], rp.id)) == expected
    info = flow.userinfo(body["access_token"])
    assert info.status_code == 200, info.text
    assert org_claims(info.json()) == expected


def test_chooser_lists_the_users_organizations_with_their_roles(
    client: TestClient, org_rp: RP, memberships: Orgs, signed_in: LoginSession
) -> None:
    page = to_consent(client, org_rp, scope=ORG_SCOPE)
    assert CHOOSER.search(page.text)
    options = re.findall(r'<option value="([^"]+)">([^<]+)</option>', page.text)
    assert options == [
        (memberships.acme.id, "Acme (Owner)"),
        (memberships.beta.id, "Beta Labs (Admin)"),
    ]
    assert "Gamma Corp" not in page.text
    assert "See the organization you choose and your role in it" in page.text
    assert ALLOW.search(page.text)
    assert DENY.search(page.text)


def test_the_chosen_organization_is_in_every_token_and_userinfo(
    flow: Flow, services: Services, org_rp: RP, memberships: Orgs, signed_in: LoginSession
) -> None:
    body = consent_and_redeem(flow, org_rp, memberships.beta.id)
    assert_carries(flow, services, org_rp, body, (memberships.beta.id, "admin"))
    assert "organization" in body["scope"].split()


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(lambda found: found.gamma.id, id="another-users-organization"),
        pytest.param(lambda found: "no-such-organization", id="unknown-id"),
        pytest.param(lambda found: "x" * 5000, id="huge"),
        pytest.param(lambda found: "\x00\n", id="control-characters"),
        pytest.param(lambda found: "", id="empty"),
        pytest.param(lambda found: None, id="missing"),
    ],
)
def test_a_forged_choice_is_a_400_and_issues_nothing(
    client: TestClient,
    services: Services,
    org_rp: RP,
    memberships: Orgs,
    signed_in: LoginSession,
    forged: Callable[[Orgs], str | None],
) -> None:
    """The posted id is checked against the user's memberships, never taken as sent."""
    page = to_consent(client, org_rp, scope=ORG_SCOPE)
    value = forged(memberships)
    extra = {} if value is None else {"organization": value}
    response = answer(client, page, "allow", **extra)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert "Choose one of your organizations" in response.text
    assert count_rows(services.db, "authorization_codes") == 0
    assert count_rows(services.db, "consents") == 0


def test_a_user_in_no_organization_is_told_why_and_can_only_deny(
    client: TestClient, services: Services, org_rp: RP, signed_in: LoginSession
) -> None:
    page = to_consent(client, org_rp, scope=ORG_SCOPE)
    assert "You are not a member of any organization." in page.text
    assert 'role="alert"' in page.text
    assert not ALLOW.search(page.text)
    assert 'name="organization"' not in page.text
    assert DENY.search(page.text)

    assert answer(client, page, "allow").status_code == 400
    assert count_rows(services.db, "authorization_codes") == 0
    denied = location_params(answer(client, page, "deny"))
    assert denied["error"] == "access_denied"
    assert count_rows(services.db, "authorization_codes") == 0


def test_refresh_keeps_the_organization_and_shows_a_role_change(
    flow: Flow,
    services: Services,
    org_rp: RP,
    user: User,
    memberships: Orgs,
    signed_in: LoginSession,
) -> None:
    body = consent_and_redeem(flow, org_rp, memberships.beta.id)
    memberships.in_beta(orgs.change_role, user.id, "member")

    refreshed = flow.refresh(org_rp, body["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert_carries(flow, services, org_rp, refreshed.json(), (memberships.beta.id, "member"))

    narrowed = flow.refresh(org_rp, refreshed.json()["refresh_token"], scope="openid profile")
    assert narrowed.status_code == 200, narrowed.text
    assert_carries(flow, services, org_rp, narrowed.json(), (None, None))


def test_a_member_removed_from_the_organization_gets_invalid_grant(
    flow: Flow, org_rp: RP, user: User, memberships: Orgs, signed_in: LoginSession
) -> None:
    """The family is bound to the organization by reference: leaving it ends the grant,
    its access tokens included."""
    body = consent_and_redeem(flow, org_rp, memberships.beta.id)
    memberships.in_beta(orgs.remove_member, user.id, actor_id=memberships.olga.id)

    assert_oauth_error(flow.refresh(org_rp, body["refresh_token"]), "invalid_grant")
    assert flow.introspect(org_rp, body["access_token"]) == {"active": False}
    assert flow.userinfo(body["access_token"]).status_code == 401


def test_a_code_for_an_organization_the_user_left_is_refused(
    flow: Flow, org_rp: RP, user: User, memberships: Orgs, signed_in: LoginSession
) -> None:
    page = to_consent(flow.client, org_rp, scope=ORG_SCOPE)
    code = location_params(answer(flow.client, page, "allow", organization=memberships.beta.id))
    memberships.in_beta(orgs.remove_member, user.id, actor_id=memberships.olga.id)
    assert_oauth_error(flow.exchange(org_rp, code["code"]), "invalid_grant")


def test_a_deleted_organization_ends_its_grants(
    flow: Flow,
    services: Services,
    org_rp: RP,
    user: User,
    memberships: Orgs,
    signed_in: LoginSession,
) -> None:
    """Deleting the organization empties the family's column: no token may then come
    out of the family with no organization in it."""
    body = consent_and_redeem(flow, org_rp, memberships.acme.id)
    services.db.call(lambda: orgs.delete(orgs.access(memberships.acme.id, user.id)))
    assert_oauth_error(flow.refresh(org_rp, body["refresh_token"]), "invalid_grant")
    assert flow.introspect(org_rp, body["access_token"]) == {"active": False}


def test_without_the_organization_scope_there_are_no_org_claims(
    flow: Flow, services: Services, org_rp: RP, memberships: Orgs, signed_in: LoginSession
) -> None:
    page = to_consent(flow.client, org_rp, scope="openid profile")
    assert 'name="organization"' not in page.text
    response = answer(flow.client, page, "allow", organization=memberships.beta.id)
    body = flow.exchange(org_rp, location_params(response)["code"]).json()
    assert_carries(flow, services, org_rp, body, (None, None))
    refreshed = flow.refresh(org_rp, body["refresh_token"]).json()
    assert_carries(flow, services, org_rp, refreshed, (None, None))


def test_remembered_consent_still_asks_which_organization(
    flow: Flow,
    services: Services,
    org_rp: RP,
    user: User,
    memberships: Orgs,
    signed_in: LoginSession,
) -> None:
    """The choice belongs to each authorization: with two organizations the page asks
    again, without the scopes, even though consent itself is remembered."""
    flow.allow(user, org_rp, ORG_SCOPE)
    page = to_consent(flow.client, org_rp, scope=ORG_SCOPE)
    assert "Choose an organization for Team Board" in page.text
    assert "asks to:" not in page.text
    assert CHOOSER.search(page.text)
    response = answer(flow.client, page, "allow", organization=memberships.acme.id)
    body = flow.exchange(org_rp, location_params(response)["code"]).json()
    assert_carries(flow, services, org_rp, body, (memberships.acme.id, "owner"))

    silent = flow.client.get(
        "/authorize", params=authorization_params(org_rp, scope=ORG_SCOPE, prompt="none")
    )
    assert location_params(silent)["error"] == "interaction_required"


def test_remembered_consent_picks_the_only_organization(
    flow: Flow, services: Services, org_rp: RP, user: User, signed_in: LoginSession
) -> None:
    solo = factories.Factory(services).organization(user, name="Solo")
    flow.allow(user, org_rp, ORG_SCOPE)
    body = flow.exchange(org_rp, flow.code(org_rp, scope=ORG_SCOPE)).json()
    assert_carries(flow, services, org_rp, body, (solo.id, "owner"))


def test_first_party_clients_skip_consent_but_not_the_choice(
    make: factories.Factory, client: TestClient, memberships: Orgs, signed_in: LoginSession
) -> None:
    trusted, secret = make.client(
        name="Console", redirect_uris=[CALLBACK], scope=ORG_SCOPE, skip_consent=True
    )
    response = client.get(
        "/authorize", params=authorization_params(RP(trusted, secret), scope=ORG_SCOPE)
    )
    assert response.status_code == 303
    assert urlsplit(response.headers["location"]).path == "/consent"
    page = client.get(response.headers["location"])
    assert "Choose an organization for Console" in page.text
    assert csrf_token(page)
    chosen = client.post(
        form_action(page),
        data=form_fields(page, "allow", organization=memberships.beta.id),
    )
    assert "code" in location_params(chosen)


def test_no_organization_with_remembered_consent_shows_the_message(
    flow: Flow, org_rp: RP, user: User, signed_in: LoginSession
) -> None:
    flow.allow(user, org_rp, ORG_SCOPE)
    page: httpx.Response = to_consent(flow.client, org_rp, scope=ORG_SCOPE)
    assert "You are not a member of any organization." in page.text
    assert not ALLOW.search(page.text)
    assert location_params(answer(flow.client, page, "deny"))["error"] == "access_denied"
