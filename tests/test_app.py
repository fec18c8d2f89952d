"""The application shell: health, readiness, discovery, JWKS, errors and headers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from authserver.app import create_app
from authserver.observability import Metrics, RequestLogMiddleware
from authserver.settings import ConfigError, Settings
from authserver.web import SecurityHeadersMiddleware
from tests.conftest import ISSUER

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k"}


FORM = "application/x-www-form-urlencoded"


def test_health(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_checks_the_database(client: TestClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"


def test_ready_fails_when_the_database_is_unreachable(settings: Settings) -> None:
    """docs/security.md L88: readiness fails while the database is down."""
    down = settings.replace(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    with TestClient(create_app(down), base_url=ISSUER) as client:
        response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"


def test_both_discovery_documents_carry_the_same_metadata(client: TestClient) -> None:
    """docs/security.md F49: issuer byte-equal, S256 only, code only, no `none` algorithm."""
    oidc = client.get("/.well-known/openid-configuration")
    oauth = client.get("/.well-known/oauth-authorization-server")
    assert oidc.status_code == oauth.status_code == 200
    assert oidc.json() == oauth.json()
    metadata = oidc.json()
    assert metadata["issuer"] == ISSUER
    assert metadata["jwks_uri"] == f"{ISSUER}/jwks.json"
    assert metadata["response_types_supported"] == ["code"]
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert "none" not in metadata["id_token_signing_alg_values_supported"]


def test_jwks_publishes_public_keys_only(client: TestClient) -> None:
    """docs/security.md F50: no private members, unique kids, RSA of at least 2048 bits."""
    response = client.get("/jwks.json")
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert {key["alg"] for key in keys} >= {"RS256", "ES256"}
    assert len({key["kid"] for key in keys}) == len(keys)
    for key in keys:
        assert not PRIVATE_MEMBERS & set(key)
        if key["kty"] == "RSA":
            assert len(jwt.utils.base64url_decode(key["n"])) * 8 >= 2048


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_a_jwt_signed_by_the_key_store_verifies_with_pyjwt_and_the_jwks(
    client: TestClient, services, alg: str
) -> None:
    """What a resource server does: fetch /jwks.json, pick the key by kid, verify."""
    token = services.keystore.sign(
        {"iss": ISSUER, "sub": "someone", "aud": "rs", "exp": 4102444800}, alg=alg
    )
    jwks = jwt.PyJWKSet.from_dict(client.get("/jwks.json").json())
    kid = jwt.get_unverified_header(token)["kid"]
    claims = jwt.decode(token, key=jwks[kid].key, algorithms=[alg], audience="rs", issuer=ISSUER)
    assert claims["sub"] == "someone"


def test_unknown_page_is_an_html_404_without_a_traceback(client: TestClient) -> None:
    response = client.get("/nowhere", headers={"accept": "text/html"})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "Not Found" in response.text
    assert "Traceback" not in response.text


def test_unknown_api_path_is_problem_json(client: TestClient) -> None:
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404


def test_wrong_method_is_405(client: TestClient) -> None:
    response = client.post("/jwks.json")
    assert response.status_code == 405
    assert "Traceback" not in response.text


def test_unexpected_errors_are_a_generic_500(settings: Settings) -> None:
    """docs/security.md §0: a generic body, no stack trace or SQL."""
    app = create_app(settings)

    def explode(request: object) -> Response:
        raise RuntimeError("SELECT secret FROM somewhere")

    app.router.routes.append(Route("/explode", explode))
    with TestClient(app, base_url=ISSUER, raise_server_exceptions=False) as client:
        response = client.get("/explode", headers={"accept": "text/html"})
    assert response.status_code == 500
    assert "SELECT" not in response.text
    assert "Traceback" not in response.text


def test_security_headers_on_every_response(client: TestClient) -> None:
    """docs/security.md H66 (HSTS only under https, see the next test)."""
    response = client.get("/nowhere")
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cross-origin-opener-policy"] == "same-origin"


def test_hsts_under_https(settings: Settings) -> None:
    https = settings.replace(issuer="https://id.example.com")
    with TestClient(create_app(https), base_url="https://id.example.com") as client:
        response = client.get("/health")
    assert "max-age=31536000" in response.headers["strict-transport-security"]


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    assert (
        client.get("/health", headers={"x-request-id": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    made = client.get("/health", headers={"x-request-id": "bad id\twith spaces"})
    assert made.headers["x-request-id"] != "bad id\twith spaces"
    assert len(made.headers["x-request-id"]) >= 12


def test_oversized_bodies_and_urls_are_refused(client: TestClient) -> None:
    """docs/security.md M99: >64 KB body → 413, URL >8 KB → 414."""
    assert client.post("/health", content=b"x" * (65 * 1024)).status_code == 413
    assert client.get("/health?q=" + "a" * 9000).status_code == 414


def test_size_refusals_answer_in_the_format_of_their_endpoint(client: TestClient) -> None:
    """A client reads a 413/414/431 as it reads every other error of the endpoint it
    called: RFC 6749 JSON at the OAuth endpoints, problem+json under /api, a page for
    people; never a bare text body."""
    big = b"x" * (65 * 1024)
    token = client.post("/token", content=big, headers={"content-type": FORM})
    assert token.status_code == 413
    assert token.json()["error"] == "invalid_request"
    assert token.headers["cache-control"] == "no-store"
    register = client.post("/register", content=big, headers={"content-type": "application/json"})
    assert (register.status_code, register.json()["error"]) == (413, "invalid_request")
    api = client.patch("/api/v1/users/me", content=big)
    assert api.status_code == 413
    assert api.headers["content-type"] == "application/problem+json"
    crowded = {f"x-h{i}": "v" for i in range(150)}
    introspect = client.post("/introspect", headers=crowded)
    assert (introspect.status_code, introspect.json()["error"]) == (431, "invalid_request")
    page = client.get("/login?q=" + "a" * 9000)
    assert page.status_code == 414
    assert page.headers["content-type"].startswith("text/html")
    assert "URL is too long" in page.text


def test_metrics_count_requests_by_endpoint(client: TestClient) -> None:
    client.get("/health")
    client.get("/no/such/page/12345")
    body = client.get("/metrics").text
    assert 'authserver_http_requests_total{endpoint="health",method="GET",status="200"}' in body
    assert 'endpoint="unmatched"' in body
    assert "12345" not in body


def test_discovery_advertises_only_algorithms_that_have_a_key(client: TestClient, services) -> None:
    """docs/security.md F49: no algorithm is advertised that nothing can sign with."""
    algs = client.get("/.well-known/openid-configuration").json()[
        "id_token_signing_alg_values_supported"
    ]
    assert algs == ["RS256", "ES256"]
    services.keystore.rotate("EdDSA")
    algs = client.get("/.well-known/openid-configuration").json()[
        "id_token_signing_alg_values_supported"
    ]
    assert algs == ["RS256", "ES256", "EdDSA"]


def test_error_pages_are_not_cached(client: TestClient) -> None:
    assert client.get("/nowhere", headers={"accept": "text/html"}).headers["cache-control"] == (
        "no-store"
    )


METRICS_TOKEN = "m3tr1cs-" + "k" * 24


def test_a_metrics_token_guards_metrics(app_with) -> None:
    """`AUTHSERVER_METRICS_TOKEN`: without the bearer token (or with another) nothing is
    told; with it, the usual text."""
    client = app_with(metrics_token=METRICS_TOKEN)
    for headers in (
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Basic {METRICS_TOKEN}"},
        {"authorization": f"Bearer {METRICS_TOKEN}x"},
        {"authorization": f"Bearer {METRICS_TOKEN[:-1]}"},
    ):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401
        assert "authserver_http_requests" not in refused.text
        assert refused.headers["www-authenticate"].startswith("Bearer")
    answered = client.get("/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"})
    assert answered.status_code == 200
    assert "authserver_http_requests" in answered.text


def test_the_metrics_token_setting_is_checked() -> None:
    with pytest.raises(ConfigError, match="AUTHSERVER_METRICS_TOKEN"):
        Settings.from_mapping({"AUTHSERVER_METRICS_TOKEN": "short"})
    with pytest.raises(ConfigError, match="AUTHSERVER_TRUSTED_PROXIES"):
        Settings.from_mapping({"AUTHSERVER_TRUSTED_PROXIES": "10.0.0.1, proxy.internal"})
    settings = Settings.from_mapping({"AUTHSERVER_TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16,::1"})
    assert settings.trusted_proxies == ("10.0.0.1", "192.168.0.0/16", "::1")
    assert Settings.from_mapping({}).trusted_proxies == ()


def test_security_headers_and_request_id_reach_a_response_with_a_tuple_of_headers() -> None:
    """ASGI lets an app send its headers as any iterable, a tuple included; both middleware
    still add theirs, and keep a header the app set itself."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = ((b"content-length", b"0"), (b"x-frame-options", b"SAMEORIGIN"))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    wrapped = RequestLogMiddleware(SecurityHeadersMiddleware(app, https=False), metrics=Metrics())
    scope = {"type": "http", "method": "GET", "path": "/x", "headers": [], "client": None}
    asyncio.run(wrapped(scope, receive, send))
    names = [name for name, _ in sent[0]["headers"]]
    assert dict(sent[0]["headers"])[b"x-frame-options"] == b"SAMEORIGIN"
    assert names.count(b"x-frame-options") == 1
    assert b"x-content-type-options" in names
    assert b"x-request-id" in names


def test_a_worker_loads_optional_libraries_only_when_used(
    tmp_path: Path, database_url: str, keys_dir: Path
) -> None:
    """zxcvbn's word lists, the QR encoder and the Redis client are 34 MiB a worker that never
    sets a password, enrols a second factor or talks to Redis does not need."""
    probe = (
        "import sys\n"
        "from authserver.app import create_app\n"
        "from authserver.settings import Settings\n"
        "create_app(Settings.from_env())\n"
        "print(' '.join(m for m in ('zxcvbn', 'segno', 'redis') if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSERVER_")}
    env.update(AUTHSERVER_DATABASE_URL=database_url, AUTHSERVER_KEYS_DIR=str(keys_dir))
    loaded = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == ""
