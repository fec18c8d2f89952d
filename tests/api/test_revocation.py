"""What ends a person's sign-in ends the application tokens that came from it, at once.

For each way (an admin deactivating the account, the person ending the session, changing
the password, revoking the consent), an application holding a refresh token and an access
token from a grant made in another browser session finds the refresh refused at /token, the
access token inactive at /introspect, and both the API's verifier and the family check say
no (docs/security.md J78, J79; ASVS 7.4.5, 10.4.9).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from authserver.services import Services
from tests import factories
from tests.api.conftest import Grant, introspect, refresh, token_is_live
from tests.conftest import Api
from tests.factories import Person

ACTIONS = {
    "deactivate": lambda api, who, admin, given: api.call(
        "POST", f"/users/{who.user.id}/deactivate", admin.token
    ),
    "end_session": lambda api, who, admin, given: api.call(
        "DELETE", f"/sessions/{given.issued.session_id}", who.token
    ),
    "change_password": lambda api, who, admin, given: api.call(
        "POST",
        "/users/me/password",
        who.token,
        {"current_password": factories.PASSWORD, "new_password": "a different passphrase"},
    ),
    "revoke_consent": lambda api, who, admin, given: api.call(
        "DELETE", f"/consents/{given.consent_id}", who.token
    ),
}


@pytest.mark.parametrize("action", ACTIONS)
def test_the_grants_tokens_die(
    api: Api,
    alice: Person,
    admin: Person,
    grant: Callable[..., Grant],
    services: Services,
    action: str,
) -> None:
    given = grant(alice.user, "openid profile")
    assert refresh(api.client, given).status_code == 200
    assert introspect(api.client, given, given.issued.token)
    response = ACTIONS[action](api, alice, admin, given)
    assert response.status_code in {200, 204}
    denied = refresh(api.client, given)
    assert denied.status_code == 400
    assert denied.json()["error"] == "invalid_grant"
    assert not introspect(api.client, given, given.issued.token)
    assert not token_is_live(services, given.issued)


def test_without_any_of_them_the_grant_lives(
    api: Api, alice: Person, grant: Callable[..., Grant], services: Services
) -> None:
    """The control: the checks above fail because of the action, not because of the setup."""
    given = grant(alice.user, "openid profile")
    assert refresh(api.client, given).status_code == 200
    assert refresh(api.client, given).status_code == 200
    assert introspect(api.client, given, given.issued.token)
    assert token_is_live(services, given.issued)
