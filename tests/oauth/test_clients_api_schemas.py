"""The OpenAPI schemas of the client operations describe exactly what is sent and answered,
and the redirect URI schema agrees with `clients.validate_redirect_uri` on the cases that
matter (a schema-valid URI must never be refused: schemathesis's positive-data check)."""

from __future__ import annotations

import jsonschema_rs
import pytest

from authserver.errors import Invalid
from authserver.oauth import clients
from authserver.oauth.clients_api import OPERATIONS, REDIRECT_URI
from tests.conftest import Api, Schemas
from tests.factories import Person
from tests.oauth.conftest import CLIENTS

CLIENT = CLIENTS + "/{client_id}"


SCHEMAS = Schemas(OPERATIONS)
call = SCHEMAS.call


def test_every_success_body_fits_its_schema(api: Api, admin: Person) -> None:
    confidential = call(
        api,
        "POST",
        CLIENTS,
        admin.token,
        {"client_name": "Printer", "redirect_uris": ["https://print.example.com/cb"]},
    )
    public = call(
        api,
        "POST",
        CLIENTS,
        admin.token,
        {
            "client_name": "Native",
            "redirect_uris": ["com.example.app:/cb", "http://127.0.0.1/cb"],
            "token_endpoint_auth_method": "none",
        },
    )
    assert "client_secret" not in public
    ids = {"client_id": confidential["client_id"]}
    call(api, "GET", CLIENTS, admin.token)
    call(api, "GET", CLIENT, admin.token, **ids)
    patch = {"client_name": "Printer 2", "is_active": False, "redirect_uris": None}
    call(api, "PATCH", CLIENT, admin.token, patch, **ids)
    call(api, "POST", CLIENT + "/secret", admin.token, **ids)
    call(api, "DELETE", CLIENT, admin.token, **ids)


def accepted(uri: str) -> bool:
    try:
        clients.validate_redirect_uri(uri)
    except Invalid:
        return False
    return True


@pytest.mark.parametrize(
    "uri",
    [
        "https://app.example.com/cb",
        "https://app.example.com:8443/cb?x=1&y=%20",
        "https://app.example.com",
        "http://127.0.0.1/cb",
        "http://127.0.0.1:51004/cb",
        "http://[::1]:8080/cb",
        "com.example.app:/oauth2redirect",
        "com.example.app:cb",
    ],
)
def test_schema_valid_redirect_uris_are_accepted(uri: str) -> None:
    assert jsonschema_rs.validator_for(REDIRECT_URI).is_valid(uri)
    assert accepted(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "javascript:alert(1)",
        "data:text/html,x",
        "http://app.example.com/cb",
        "http://localhost/cb",
        "https://*.example.com/cb",
        "https://app.example.com/cb#frag",
        "https://user@app.example.com/cb",
        "https://app.example.com/c b",
        "https:///cb",
        "myapp:/cb",
        "/relative/cb",
        "",
    ],
)
def test_refused_redirect_uris_are_schema_invalid(uri: str) -> None:
    assert not jsonschema_rs.validator_for(REDIRECT_URI).is_valid(uri)
    assert not accepted(uri)
