"""`/api/v1/resources`: registering RFC 8707 resources (the CLI: tests/test_cli.py)."""

from __future__ import annotations

from typing import Any

import pytest

from authserver import api as api_table
from authserver.services import Services
from tests import factories
from tests.conftest import API, Api, Schemas, audit_events, is_problem
from tests.factories import Person

RESOURCES = API + "/resources"
SCHEMAS = Schemas(api_table.OPERATIONS)
NEW = {"uri": "https://photos.example.com", "scopes": ["photos:read", "photos:write"]}


def test_an_administrator_registers_reads_lists_and_deletes_a_resource(
    api: Api, admin: Person, services: Services, make: factories.Factory
) -> None:
    rs, _ = make.resource_server("https://other.example.com", ["other:read"])
    body = {**NEW, "name": "Photos", "client_id": rs.id}
    created = SCHEMAS.call(api, "POST", RESOURCES, admin.token, body)
    assert (created["uri"], created["name"], created["client_id"]) == (NEW["uri"], "Photos", rs.id)
    assert created["scopes"] == ["photos:read", "photos:write"]
    path = RESOURCES + "/{resource_id}"
    assert SCHEMAS.call(api, "GET", path, admin.token, resource_id=created["id"]) == created
    listed = SCHEMAS.call(api, "GET", RESOURCES, admin.token)
    assert [item["uri"] for item in listed["items"]] == ["https://other.example.com", NEW["uri"]]
    SCHEMAS.call(api, "DELETE", path, admin.token, resource_id=created["id"])
    assert api.call("GET", f"{RESOURCES}/{created['id']}", admin.token).status_code == 404
    events = [
        event.event
        for event in audit_events(services, prefix="resource.")
        if event.actor_id == admin.user.id
    ]
    assert events == ["resource.created", "resource.deleted"]


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"uri": "http://photos.example.com"}, 400),
        ({"uri": "https://photos.example.com/#x"}, 400),
        ({"uri": "https://photos.example.com/?q=1"}, 400),
        ({"uri": "/photos"}, 400),
        ({"uri": "https://user@photos.example.com"}, 400),
        ({"scopes": []}, 400),
        ({"scopes": ["openid"]}, 400),
        ({"scopes": ["two words"]}, 400),
        ({"client_id": "no-such-client"}, 400),
        ({"uri": "http://127.0.0.1:8000/api/v1"}, 409),
        ({"extra": True}, 400),
    ],
)
def test_bad_registrations_are_refused(
    api: Api, admin: Person, changes: dict[str, Any], status: int
) -> None:
    response = api.call("POST", RESOURCES, admin.token, {**NEW, **changes})
    assert is_problem(response, status), response.text
    assert api.call("GET", RESOURCES, admin.token).json()["items"] == []


def test_a_duplicate_uri_is_409_and_loopback_http_is_fine(api: Api, admin: Person) -> None:
    dev = {**NEW, "uri": "http://127.0.0.1:9000/photos"}
    assert api.call("POST", RESOURCES, admin.token, dev).status_code == 201
    assert is_problem(api.call("POST", RESOURCES, admin.token, dev), 409)


def test_only_administrators(api: Api, person: Any, admin: Person) -> None:
    someone = person("someone@example.com")
    response = api.call("POST", RESOURCES, someone.token, NEW)
    assert is_problem(response, 403)
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert is_problem(api.call("POST", RESOURCES, None, NEW), 401)
    assert is_problem(api.call("GET", RESOURCES), 401)
    assert api.call("GET", RESOURCES, admin.token).json()["items"] == []
