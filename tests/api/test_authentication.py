"""Every identity operation refuses callers without the right token (docs/security.md J74, §0).

The cases come from the operation table itself, so an operation added later is covered
without anyone remembering to list it here.
"""

from __future__ import annotations

from typing import Any

import pytest

from authserver import api as api_table
from authserver import audit, rest
from authserver.oauth import consents_api
from authserver.services import Services
from authserver.sessions import api as sessions_api
from authserver.users import api as users_api
from tests import factories
from tests.api.conftest import rows
from tests.conftest import API_CHALLENGE, SELF_SCOPES, Api, is_problem
from tests.factories import Person

MINE = [
    op
    for op in api_table.OPERATIONS
    if op in (*users_api.OPERATIONS, *sessions_api.OPERATIONS, *consents_api.OPERATIONS)
    or op in audit.OPERATIONS
]
BODIES: dict[str, dict[str, Any]] = {
    "update_me": {"name": "Eve"},
    "change_my_password": {"current_password": factories.PASSWORD, "new_password": "x" * 20},
    "create_user": {"email": "new@example.com"},
    "update_user": {"name": "Eve"},
}


def case_id(op: rest.Operation) -> str:
    return f"{op.method} {op.path}"


def send(api: Api, op: rest.Operation, token: str | None, target: Person, query: str = "") -> Any:
    """Call `op` on `target`'s resources (their user id and session id in the path)."""
    path = (
        op.path.replace("{user_id}", target.user.id)
        .replace("{session_id}", target.issued.session_id or "x")
        .replace("{consent_id}", "x")
    )
    return api.call(op.method, path + query, token, BODIES.get(op.handler.__name__))


def test_the_table_covers_every_identity_module() -> None:
    assert {op.handler.__module__ for op in MINE} == {
        "authserver.users.api",
        "authserver.sessions.api",
        "authserver.oauth.consents_api",
        "authserver.audit",
    }


@pytest.mark.parametrize("op", MINE, ids=case_id)
def test_no_token_is_401_with_a_bare_challenge(
    api: Api, op: rest.Operation, bob: Person, services: Services
) -> None:
    """RFC 6750 §3.1: no credentials → 401 and a challenge without an error code; nothing
    changed."""
    before = rows(services)
    response = send(api, op, None, bob)
    assert is_problem(response, 401)
    assert response.headers["www-authenticate"] == API_CHALLENGE
    assert rows(services) == before


@pytest.mark.parametrize("op", MINE, ids=case_id)
@pytest.mark.parametrize(
    "variant", ["id_token", "other_audience", "expired", "garbage", "query_string"]
)
def test_unusable_tokens_are_401_invalid_token(
    api: Api,
    op: rest.Operation,
    variant: str,
    make: factories.Factory,
    tokens: factories.TokenFactory,
    bob: Person,
    services: Services,
) -> None:
    """J74: an ID token (typ JWT), a token for another resource, an expired one or garbage
    → 401 invalid_token, whatever scopes it claims; a token in the query string is not read.
    Either way nothing changed."""
    root = make.user(is_admin=True)
    everything = "admin " + " ".join(sorted({s for o in MINE for s in o.scopes}))
    kwargs: dict[str, Any] = {
        "id_token": {"typ": "JWT"},
        "other_audience": {"audience": "https://other.example.com"},
        "expired": {"ttl": -30},
    }.get(variant, {})
    token = tokens.access_token(root, everything, **kwargs).token
    if variant == "garbage":
        token = "eyJhbGciOiJub25lIn0.e30."
    before = rows(services)
    if variant == "query_string":
        response = send(api, op, None, bob, query=f"?access_token={token}")
        assert is_problem(response, 401)
    else:
        response = send(api, op, token, bob)
        assert is_problem(response, 401)
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert rows(services) == before


def wrong_scopes(op: rest.Operation) -> list[str]:
    """Scope sets that must not reach `op`: a person's every self-service scope for an admin
    operation; the other features' scopes; and the read scope for a write."""
    if "admin" in op.scopes:
        return [SELF_SCOPES + " openid"]
    feature = op.scopes[0].split(":")[0]
    other = "sessions" if feature == "users" else "users"
    wrong = [f"openid {other}:read {other}:write"]
    if all(scope.endswith(":write") for scope in op.scopes):
        wrong.append(f"{feature}:read")
    return wrong


CASES = [(op, scope) for op in MINE for scope in wrong_scopes(op)]


@pytest.mark.parametrize(("op", "scope"), CASES, ids=[f"{case_id(o)} [{s}]" for o, s in CASES])
def test_a_token_without_the_scope_is_403_insufficient_scope(
    api: Api,
    op: rest.Operation,
    scope: str,
    tokens: factories.TokenFactory,
    alice: Person,
    bob: Person,
    services: Services,
) -> None:
    """J74: the wrong scopes → 403 `insufficient_scope` naming what was needed, and nothing
    changed. A person's token for every self-service scope is still not `admin`."""
    token = tokens.access_token(alice.user, scope).token
    before = rows(services)
    response = send(api, op, token, bob)
    assert is_problem(response, 403)
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert rows(services) == before


@pytest.mark.parametrize("op", MINE, ids=case_id)
def test_a_clients_own_token_acts_for_nobody(
    api: Api,
    op: rest.Operation,
    tokens: factories.TokenFactory,
    bob: Person,
    services: Services,
) -> None:
    """J74/J78: a token that speaks for a client alone (no user) is refused by every identity
    operation with 403, even claiming `admin` with the right audience, and changes nothing,
    unless an operator registered the client for `admin` (tests/api/test_automation.py)."""
    scopes = "admin " + " ".join(op.scopes)
    unregistered, _ = tokens.factory.client(
        grant_types=["client_credentials"], redirect_uris=[], scope="users:read"
    )
    token = tokens.access_token(None, scopes, client=unregistered).token
    before = rows(services)
    response = send(api, op, token, bob)
    assert is_problem(response, 403)
    assert rows(services) == before


def test_a_malformed_authorization_header_is_400(api: Api, alice: Person) -> None:
    """docs/security.md §0: malformed → 400 `invalid_request`, never a 500; another scheme is a
    request without a token (RFC 6750 §3.1: an unsupported method), a bare 401."""
    for header in ("Bearer", "Bearer a b"):
        response = api.call("GET", "/users/me", headers={"Authorization": header})
        assert is_problem(response, 400), header
        assert 'error="invalid_request"' in response.headers["www-authenticate"]
    for header in ("Basic abc", f"Token {alice.token}"):
        response = api.call("GET", "/users/me", headers={"Authorization": header})
        assert is_problem(response, 401), header
        assert response.headers["www-authenticate"] == API_CHALLENGE
