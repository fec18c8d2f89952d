"""The OpenAPI document: well-formed 3.1, complete, and true to what the server answers.

The property-based run (schemathesis, through the ASGI app with an administrator's token)
generates requests from the document and checks every answer: no 5xx, a documented status
and content type, and a body that fits the documented schema.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import positive_data_acceptance
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from authserver import api as api_table
from authserver import rest
from tests import factories
from tests.api.conftest import Grant
from tests.factories import bearer

EXAMPLES = 40
#: A well-typed request may still be refused for what it means (an address without a dot,
#: a whitespace-only name); the document promises shapes, not acceptance.
LENIENT = [positive_data_acceptance]


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    return response.json()


def test_the_document_is_openapi_3_1(document: dict[str, Any]) -> None:
    """Validated against the OpenAPI 3.1 meta-schema; operation ids are unique and every
    path parameter is declared."""
    schemathesis.openapi.from_dict(document).validate()
    assert document["openapi"] == "3.1.0"
    operations = [op for item in document["paths"].values() for op in item.values()]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids))
    for path, item in document["paths"].items():
        for operation in item.values():
            declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert declared == set(rest._path_params(path.removeprefix(rest.API_PREFIX)))
            assert "401" in operation["responses"]
            assert operation["security"] == [{"bearer": operation["security"][0]["bearer"]}]


def test_every_api_route_is_documented(app: Starlette, document: dict[str, Any]) -> None:
    """The app's routes under /api/v1 and the document's paths and methods are the same set
    (HEAD, which Starlette adds to GET routes, aside; the document does not describe itself)."""
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route) and route.path.startswith(rest.API_PREFIX + "/")
        for method in route.methods or ()
        if method != "HEAD" and route.path != api_table.DOCUMENT_PATH
    }
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert served == documented


def test_the_document_needs_no_token(client: TestClient) -> None:
    """Like the discovery document, it describes; it reveals nothing about anyone."""
    assert client.get("/api/v1/openapi.json").status_code == 200
    assert client.post("/api/v1/openapi.json").status_code == 405


@dataclass
class Fuzz:
    schema: Any
    headers: dict[str, str]
    #: Real ids for path parameters, so that generated requests also reach existing rows.
    ids: dict[str, list[str]]


@pytest.fixture
def fuzz(
    app: Starlette,
    make: factories.Factory,
    tokens: factories.TokenFactory,
    grant: Callable[..., Grant],
) -> Fuzz:
    """The served document, loaded through the ASGI app, an administrator's token, and a
    person with a session, a consent and an organization for the requests to land on.

    Deleting one's own account or changing one's password would spend the token in the
    middle of the run; those two are exercised by their own tests instead."""
    root = make.user(email="root@example.com", is_admin=True)
    token = tokens.access_token(root, "admin").token
    someone = make.user(email="someone@example.com")
    given_grant = grant(someone)
    organization = make.organization(someone)
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    schema = schema.exclude(path="/api/v1/users/me", method="DELETE").exclude(
        path="/api/v1/users/me/password"
    )
    ids = {
        "user_id": [someone.id, root.id],
        "session_id": [given_grant.issued.session_id or ""],
        "consent_id": [given_grant.consent_id],
        "organization_id": [organization.id],
        "client_id": [given_grant.client.id],
    }
    return Fuzz(schema, bearer(token), ids)


def test_answers_match_the_document(fuzz: Fuzz) -> None:
    """No 5xx, and no answer that breaks the schema the document gives for it.

    Each operation gets its own Hypothesis run (schemathesis's pytest plugin does not load
    under pytest 9, so its strategies are driven directly); half the cases use real ids."""
    statuses: Counter[int] = Counter()
    for result in fuzz.schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(), real=st.booleans(), data=st.data())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any, real: bool, data: st.DataObject) -> None:
            for name in case.path_parameters or {}:
                if real and name in fuzz.ids:
                    case.path_parameters[name] = data.draw(st.sampled_from(fuzz.ids[name]))
            response = case.call_and_validate(headers=fuzz.headers, excluded_checks=LENIENT)
            statuses[response.status_code] += 1

        check()
    assert statuses[200] + statuses[201] + statuses[204] > 0, statuses


OPENERS = ["[", '{"a":', '["[{",', '{"\\"}":']


def nested_document(depth: int, openers: list[str], cut: int | None) -> bytes:
    """JSON nested past any sane depth (arrays, objects, strings full of brackets between),
    well-formed or cut short: bodies schemathesis does not generate on its own."""
    opened = [openers[i % len(openers)] for i in range(depth)]
    closers = ["]" if o.startswith("[") else "}" for o in reversed(opened)]
    body = "".join(opened) + "1" + "".join(closers)
    return body[: depth + (cut or len(body))].encode()


def test_deeply_nested_bodies_are_a_400_for_every_operation(fuzz: Fuzz, client: TestClient) -> None:
    """docs/security.md §0: every operation that reads a JSON body refuses deep nesting
    with a problem, never a 500 (they all read it through `rest.read_json`). Depths stay
    under the body size limit, which answers 413 before any of this."""
    with_body = [op for op in api_table.OPERATIONS if op.request is not None]
    assert with_body

    @given(
        op=st.sampled_from(with_body),
        depth=st.integers(min_value=33, max_value=7_000),
        openers=st.lists(st.sampled_from(OPENERS), min_size=1, max_size=4),
        cut=st.none() | st.integers(min_value=0, max_value=50_000),
    )
    @settings(max_examples=EXAMPLES, deadline=None, database=None)
    def check(op: rest.Operation, depth: int, openers: list[str], cut: int | None) -> None:
        body = nested_document(depth, openers, cut)
        names = [name for _, name, _, _ in string.Formatter().parse(op.path) if name]
        ids = {name: fuzz.ids.get(name, ["no-such-row"])[0] for name in names}
        path = rest.API_PREFIX + op.path.format(**ids)
        headers = {**fuzz.headers, "content-type": "application/json"}
        response = client.request(op.method, path, content=body, headers=headers)
        assert response.status_code == 400, (op.path, response.status_code, response.text)
        assert response.headers["content-type"] == "application/problem+json"

    check()
