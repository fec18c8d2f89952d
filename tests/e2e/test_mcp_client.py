"""The path an MCP client takes to a protected API it has never met (MCP authorization,
2025-06-18 and later), in a real browser against real servers: the API's 401 names its
RFC 9728 metadata, which names the authorization server, whose RFC 8414 metadata offers
RFC 7591 registration; the client registers anonymously (or identifies itself by a client
ID metadata document) and runs code + PKCE with an RFC 8707 `resource`; the token it gets
opens that API and no other (docs/security.md G55, F52).

The APIs are Starlette apps protected by `authserver.resource_server.ResourceServer`, each
served by uvicorn in a thread; the metadata document comes from an https server on
127.0.0.1 that the authorization server trusts by name (AUTHSERVER_CLIENT_METADATA_HOSTS).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
import uvicorn
from authlib.common.security import generate_token
from playwright.sync_api import Page
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from authserver.resource_server import ResourceServer
from tests.e2e.conftest import (
    LiveServer,
    RelyingParty,
    running_server,
    sign_in_with_browser,
)
from tests.servers import free_port
from tests.tls_server import Answer, TlsServer, tls_server

pytestmark = pytest.mark.e2e
SCOPE = "mcp:tools"


@dataclass(frozen=True)
class Api:
    """A protected API on its own port: its resource URI is where its tools live."""

    resource: str
    guard: ResourceServer


@dataclass(frozen=True)
class World:
    server: LiveServer
    documents: TlsServer
    tools: Api
    other: Api


def _serve_api(issuer: str, name: str) -> tuple[Api, uvicorn.Server, threading.Thread]:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/{name}"
    guard = ResourceServer(issuer=issuer, resource=resource, scopes_supported=[SCOPE])

    @guard.protect(SCOPE)
    async def tools(request: Request) -> JSONResponse:
        claims = request.state.access_token
        return JSONResponse({"api": name, "sub": claims["sub"], "client_id": claims["client_id"]})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await guard.aclose()

    app = Starlette(routes=[Route(f"/{name}", tools), *guard.routes()], lifespan=lifespan)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", loop="asyncio")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {name} API did not start")
        time.sleep(0.05)
    return Api(resource, guard), server, thread


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, keys_template: Path, database_url: str, schema: Any
) -> Iterator[World]:
    with tls_server(tmp_path_factory.mktemp("documents")) as documents:
        folder = tmp_path_factory.mktemp("mcp")
        with running_server(
            folder,
            keys_template,
            database_url,
            AUTHSERVER_CLIENT_METADATA_HOSTS=f"127.0.0.1:{documents.port}",
            SSL_CERT_FILE=str(documents.ca_file),
        ) as server:
            tools, tools_server, tools_thread = _serve_api(server.url, "tools")
            other, other_server, other_thread = _serve_api(server.url, "other")
            try:
                yield World(server, documents, tools, other)
            finally:
                for running, thread in ((tools_server, tools_thread), (other_server, other_thread)):
                    running.should_exit = True
                    thread.join(10)


def _register_resources(world: World) -> None:
    for api in (world.tools, world.other):
        world.server.make.resource_server(api.resource, [SCOPE], name=api.resource)


def _discover(api: Api) -> dict[str, Any]:
    """What an MCP client learns from nothing but the API's URL."""
    refused = httpx.get(api.resource)
    assert refused.status_code == 401
    challenge = refused.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    metadata_url = re.search(r'resource_metadata="([^"]+)"', challenge)
    assert metadata_url is not None, challenge
    resource_metadata = httpx.get(metadata_url.group(1)).json()
    assert resource_metadata["resource"] == api.resource
    assert SCOPE in resource_metadata["scopes_supported"]
    issuer = resource_metadata["authorization_servers"][0]
    server_metadata = httpx.get(f"{issuer}/.well-known/oauth-authorization-server").json()
    assert server_metadata["issuer"] == issuer
    assert server_metadata["code_challenge_methods_supported"] == ["S256"]
    return server_metadata


def _authorize_in_browser(
    page: Page,
    metadata: dict[str, Any],
    client_id: str,
    redirect_uri: str,
    resource: str,
    email: str,
) -> tuple[str, str]:
    """Code + PKCE with `resource`, the person signing in and allowing in Chromium; the code
    and its verifier."""
    verifier = generate_token(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": f"openid {SCOPE}",
        "state": "mcp-state",
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
        "resource": resource,
    }
    page.goto(f"{metadata['authorization_endpoint']}?{urlencode(query)}")
    sign_in_with_browser(page, email)
    assert page.get_by_role("alert").first.is_visible()
    assert "not verified by the operator" in page.content().lower()
    with page.expect_response(lambda r: "/consent" in r.url and r.request.method == "POST") as got:
        page.get_by_role("button", name="Allow").click()
    location = got.value.headers["location"]
    assert location.startswith(redirect_uri)
    params = parse_qs(urlsplit(location).query)
    assert params["state"] == ["mcp-state"]
    assert params["iss"] == [metadata["issuer"]]
    return params["code"][0], verifier


def _redeem(
    metadata: dict[str, Any],
    client_id: str,
    redirect_uri: str,
    code: str,
    verifier: str,
    resource: str,
) -> dict[str, Any]:
    answer = httpx.post(
        metadata["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "client_id": client_id,
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": redirect_uri,
            "resource": resource,
        },
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def _claims(token: str) -> dict[str, Any]:
    """The access token as a stranger sees it: unverified here, verified by the APIs."""
    return jwt.decode(token, options={"verify_signature": False})


def _assert_token_opens_only(world: World, token: str, client_id: str) -> None:
    bearer = {"Authorization": f"Bearer {token}"}
    opened = httpx.get(world.tools.resource, headers=bearer)
    assert opened.status_code == 200, opened.text
    assert opened.json()["api"] == "tools"
    assert opened.json()["client_id"] == client_id
    refused = httpx.get(world.other.resource, headers=bearer)
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]


def test_an_mcp_client_registers_itself_and_calls_the_api(
    world: World, page: Page, relying_party: RelyingParty
) -> None:
    _register_resources(world)
    person = world.server.make.user(email="mcp-dcr@example.com")
    metadata = _discover(world.tools)
    redirect_uri = f"{relying_party.url}/callback"
    registered = httpx.post(
        metadata["registration_endpoint"],
        json={
            "client_name": "An MCP client",
            "redirect_uris": [redirect_uri],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "scope": f"openid {SCOPE}",
        },
    )
    assert registered.status_code == 201, registered.text
    client_id = registered.json()["client_id"]
    code, verifier = _authorize_in_browser(
        page, metadata, client_id, redirect_uri, world.tools.resource, person.email
    )
    tokens = _redeem(metadata, client_id, redirect_uri, code, verifier, world.tools.resource)
    claims = _claims(tokens["access_token"])
    assert claims["aud"] == world.tools.resource
    assert claims["scope"] == SCOPE
    assert claims["sub"] == person.id
    _assert_token_opens_only(world, tokens["access_token"], client_id)


def test_an_mcp_client_identified_by_its_metadata_document(
    world: World, page: Page, relying_party: RelyingParty
) -> None:
    _register_resources(world)
    person = world.server.make.user(email="mcp-cimd@example.com")
    metadata = _discover(world.tools)
    assert metadata["client_id_metadata_document_supported"] is True
    client_id = f"{world.documents.origin}/mcp-client.json"
    redirect_uri = f"{relying_party.url}/callback"
    world.documents.answers["/mcp-client.json"] = Answer(
        body=json.dumps(
            {
                "client_id": client_id,
                "client_name": "A document-described MCP client",
                "redirect_uris": [redirect_uri],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "scope": f"openid {SCOPE}",
            }
        ).encode()
    )
    code, verifier = _authorize_in_browser(
        page, metadata, client_id, redirect_uri, world.tools.resource, person.email
    )
    tokens = _redeem(metadata, client_id, redirect_uri, code, verifier, world.tools.resource)
    claims = _claims(tokens["access_token"])
    assert claims["aud"] == world.tools.resource
    assert claims["client_id"] == client_id
    _assert_token_opens_only(world, tokens["access_token"], client_id)
    assert any(hit.endswith(" /mcp-client.json") for hit in world.documents.hits)
