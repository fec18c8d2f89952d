"""/api/v1: my factors, an administrator listing, removing and resetting a person's factors
(audited), and the organization policy; both bodies checked against the OpenAPI schemas."""

from __future__ import annotations

from collections.abc import Callable

from authserver.mfa import api as mfa_api
from authserver.mfa import models as mfa_models
from authserver.services import Services
from tests import factories
from tests.conftest import Api, Schemas, audit_events, is_problem
from tests.mfa.authenticator import SoftAuthenticator
from tests.mfa.conftest import enrol_totp, recovery_codes

SCHEMAS = Schemas(mfa_api.OPERATIONS)
ME = "/api/v1/users/me/factors"
FACTORS = "/api/v1/users/{user_id}/factors"


def _with_everything(services: Services, person: factories.Person) -> str:
    enrol_totp(services, person.user)
    recovery_codes(services, person.user)
    key = SoftAuthenticator("127.0.0.1", "http://127.0.0.1:8000").passkey_for(person.user.id)
    return services.db.call(mfa_models.add_passkey, key).id


def test_i_see_and_remove_my_factors(
    api: Api, services: Services, person: Callable[..., factories.Person]
) -> None:
    me = person("me@example.com")
    passkey_id = _with_everything(services, me)
    mine = SCHEMAS.call(api, "GET", ME, me.token)
    assert mine["totp"] is True
    assert mine["required"] is True
    assert mine["recovery_codes_left"] == 10
    assert [p["id"] for p in mine["passkeys"]] == [passkey_id]
    SCHEMAS.call(api, "DELETE", ME + "/passkeys/{passkey_id}", me.token, passkey_id=passkey_id)
    assert SCHEMAS.call(api, "GET", ME, me.token)["passkeys"] == []
    again = api.call("DELETE", f"{ME}/passkeys/{passkey_id}", me.token)
    assert is_problem(again, 404)


def test_someone_elses_passkey_is_not_mine_to_remove(
    api: Api, services: Services, person: Callable[..., factories.Person]
) -> None:
    me, other = person("me@example.com"), person("other@example.com")
    passkey_id = _with_everything(services, other)
    assert is_problem(api.call("DELETE", f"{ME}/passkeys/{passkey_id}", me.token), 404)
    assert len(services.db.call(mfa_models.passkeys_of, other.user.id)) == 1


def test_an_administrator_lists_removes_and_resets_with_an_audit_record(
    api: Api,
    services: Services,
    admin: factories.Person,
    person: Callable[..., factories.Person],
) -> None:
    someone = person("someone@example.com")
    passkey_id = _with_everything(services, someone)
    ids = {"user_id": someone.user.id}
    listed = SCHEMAS.call(api, "GET", FACTORS, admin.token, **ids)
    assert listed["totp"] is True
    SCHEMAS.call(api, "DELETE", FACTORS + "/totp", admin.token, **ids)
    assert SCHEMAS.call(api, "GET", FACTORS, admin.token, **ids)["totp"] is False
    assert is_problem(api.call("DELETE", FACTORS.format(**ids) + "/totp", admin.token), 404)
    after = SCHEMAS.call(api, "POST", FACTORS + "/reset", admin.token, **ids)
    assert after == {"totp": False, "passkeys": [], "recovery_codes_left": 0, "required": False}
    assert not services.db.call(mfa_models.has_factor, someone.user.id)
    [reset] = audit_events(services, "mfa.reset")
    assert reset.actor_id == admin.user.id
    assert reset.target_id == someone.user.id
    assert passkey_id not in str(SCHEMAS.call(api, "GET", FACTORS, admin.token, **ids))


def test_only_administrators_manage_others(
    api: Api, services: Services, person: Callable[..., factories.Person]
) -> None:
    me, other = person("me@example.com"), person("other@example.com")
    _with_everything(services, other)
    path = FACTORS.format(user_id=other.user.id)
    assert is_problem(api.call("GET", path, me.token), 403)
    assert is_problem(api.call("POST", path + "/reset", me.token), 403)
    assert services.db.call(mfa_models.has_factor, other.user.id)


def test_an_unknown_person_is_not_found(api: Api, admin: factories.Person) -> None:
    assert is_problem(api.call("GET", FACTORS.format(user_id="nobody"), admin.token), 404)


def test_the_organization_policy(
    api: Api, services: Services, admin: factories.Person, make: factories.Factory
) -> None:
    organization = make.organization(admin.user)
    path = "/api/v1/organizations/{organization_id}/mfa-policy"
    ids = {"organization_id": organization.id}
    assert SCHEMAS.call(api, "GET", path, admin.token, **ids)["required"] is False
    body = {"required": True}
    assert SCHEMAS.call(api, "PUT", path, admin.token, body, **ids)["required"] is True
    assert services.db.call(mfa_models.any_organization_requires, admin.user.id)
    assert is_problem(api.call("PUT", path.format(**ids), admin.token, {"required": "yes"}), 400)
    assert is_problem(api.call("PUT", path.format(organization_id="none"), admin.token, body), 404)
    assert len(audit_events(services, "mfa.organization_policy_changed")) == 1
