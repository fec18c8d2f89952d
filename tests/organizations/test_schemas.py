"""The OpenAPI schemas of the organization operations describe exactly what is sent and
answered: every body a test sends is valid for the request schema, and every success body
fits the response schema (which forbids members it does not name)."""

from __future__ import annotations

import jsonschema_rs

from authserver.organizations.api import OPERATIONS
from authserver.services import Services
from tests.conftest import API, Api, Schemas
from tests.factories import Person
from tests.organizations.conftest import Tenant

SCHEMAS = Schemas(OPERATIONS)
call = SCHEMAS.call
ORGS = API + "/organizations"
ORG = ORGS + "/{organization_id}"
MEMBERS = ORG + "/members"
MEMBER = MEMBERS + "/{user_id}"


def test_every_success_body_fits_its_schema(
    api: Api, alice: Tenant, bob: Tenant, admin: Person, services: Services
) -> None:
    created = call(api, "POST", ORGS, alice.token, {"name": "Zeta 🧑‍💻 Ltd"})
    org = {"organization_id": created["id"]}
    call(api, "GET", ORGS, alice.token)
    call(api, "GET", ORG, alice.token, **org)
    call(api, "GET", ORG, admin.token, **org)
    call(api, "PATCH", ORG, alice.token, {"name": "Zeta"}, **org)
    call(api, "POST", MEMBERS, alice.token, {"email": "bob@example.com", "role": "admin"}, **org)
    call(api, "GET", MEMBERS, alice.token, **org)
    member = {**org, "user_id": bob.user.id}
    call(api, "PATCH", MEMBER, alice.token, {"role": "member"}, **member)
    call(api, "DELETE", MEMBER, alice.token, **member)
    call(api, "DELETE", ORG, alice.token, **org)


def test_the_name_schema_refuses_what_the_server_refuses() -> None:
    """A schema-valid name is accepted (schemathesis's positive-data check) and the names
    the server refuses are schema-invalid."""
    name = SCHEMAS.operation("POST", ORGS).request
    assert name is not None
    validator = jsonschema_rs.validator_for(name)
    for good in ("Acme", " Acme ", "Café ☕", "a b"):
        assert validator.is_valid({"name": good}), good
    for bad in ("", "   ", "a\x00b", "a\nb", "\x85", "x" * 201):
        assert not validator.is_valid({"name": bad}), bad
