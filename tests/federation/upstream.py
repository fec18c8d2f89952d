"""A fake upstream OpenID provider (and GitHub) behind respx, and the browser's side of the
upstream round trip through the ASGI app: start, then come back to the callback."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import respx
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey
from starlette.testclient import TestClient

from authserver.federation import providers
from authserver.federation.models import IdentityProvider

UPSTREAM = "https://idp.example"
CLIENT_ID = "our-client-at-idp"
CLIENT_SECRET = "upstream-client-secret-value"
SIGNING_KEY = ECKey.generate_key("P-256", parameters={"kid": "k1", "use": "sig"}, private=True)
OTHER_KEY = ECKey.generate_key("P-256", parameters={"kid": "k1", "use": "sig"}, private=True)
ROTATED_KEY = ECKey.generate_key("P-256", parameters={"kid": "k2", "use": "sig"}, private=True)


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@dataclass
class FakeOidc:
    """What the upstream answers; tests change the fields to misbehave."""

    subject: str = "upstream-1"
    email: str = "ann@acme.example"
    email_verified: bool = True
    claims: dict[str, Any] = field(default_factory=dict)
    key: Any = field(default_factory=lambda: SIGNING_KEY)
    published: list[Any] = field(default_factory=lambda: [SIGNING_KEY])
    alg: str = "ES256"
    id_token: str | None = None
    token_status: int = 200
    #: Set by `begin`: what our server sent in the authorization request.
    request: dict[str, str] = field(default_factory=dict)
    token_requests: list[dict[str, list[str]]] = field(default_factory=list)
    sends_iss: bool = False
    jwks_fetches: int = 0

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": UPSTREAM,
            "authorization_endpoint": f"{UPSTREAM}/authorize",
            "token_endpoint": f"{UPSTREAM}/token",
            "userinfo_endpoint": f"{UPSTREAM}/userinfo",
            "jwks_uri": f"{UPSTREAM}/jwks",
            "response_types_supported": ["code"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "authorization_response_iss_parameter_supported": self.sends_iss,
        }

    def make_id_token(self, nonce: str | None) -> str:
        now = int(time.time())
        claims = {
            "iss": UPSTREAM,
            "sub": self.subject,
            "aud": CLIENT_ID,
            "exp": now + 300,
            "iat": now,
            "auth_time": now - 5,
            "amr": ["pwd", "mfa"],
            "email": self.email,
            "email_verified": self.email_verified,
            "name": "Ann Upstream",
            **({"nonce": nonce} if nonce else {}),
            **self.claims,
        }
        claims = {k: v for k, v in claims.items() if v is not None}
        if self.alg == "none":
            return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
        if self.alg == "HS256":
            return jwt.encode(
                {"alg": "HS256", "kid": "k1"}, claims, OctKey.import_key(CLIENT_SECRET)
            )
        return jwt.encode({"alg": self.alg, "kid": self.key.kid}, claims, self.key)

    def token(self, request: httpx.Request) -> httpx.Response:
        form = parse_qs(request.content.decode())
        self.token_requests.append(form)
        if self.token_status != 200:
            return httpx.Response(self.token_status, json={"error": "invalid_grant"})
        verifier = form.get("code_verifier", [""])[0]
        if s256(verifier) != self.request.get("code_challenge"):
            return httpx.Response(400, json={"error": "invalid_grant"})
        id_token = self.id_token or self.make_id_token(self.request.get("nonce"))
        return httpx.Response(
            200, json={"access_token": "upstream-at", "token_type": "Bearer", "id_token": id_token}
        )

    def jwks(self, request: httpx.Request) -> httpx.Response:
        self.jwks_fetches += 1
        return httpx.Response(
            200, json={"keys": [k.as_dict(private=False) for k in self.published]}
        )

    def install(self, router: respx.Router) -> None:
        router.get(f"{UPSTREAM}/.well-known/openid-configuration").mock(
            side_effect=lambda request: httpx.Response(200, json=self.discovery())
        )
        router.get(f"{UPSTREAM}/jwks").mock(side_effect=self.jwks)
        router.post(f"{UPSTREAM}/token").mock(side_effect=self.token)
        router.get(f"{UPSTREAM}/userinfo").mock(
            return_value=httpx.Response(200, json={"sub": self.subject})
        )


def add_provider(services: Any, kind: str = "oidc", **changes: Any) -> IdentityProvider:
    """A provider as the CLI and the API make it (discovery through the fetcher)."""
    box = services.federation.box
    endpoints = providers.endpoints_for(
        services.fetcher, kind, UPSTREAM if kind == "oidc" else None
    )
    fields = {"name": "Acme SSO" if kind == "oidc" else "GitHub", "client_id": CLIENT_ID,
              "client_secret": CLIENT_SECRET, **changes}  # fmt: skip
    provider = services.db.call(providers.create, box, kind, endpoints, providers.Changes(**fields))
    services.federation.forget()
    return provider


def begin(
    client: TestClient, provider_id: str, fake: FakeOidc | None = None, **query: str
) -> dict[str, str]:
    """Press "Continue with": the upstream authorization request's parameters."""
    response = client.get(f"/login/federated/{provider_id}", params=query)
    assert response.status_code == 303, response.text
    sent = {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}
    if fake is not None:
        fake.request = sent
    return sent


def finish(client: TestClient, sent: dict[str, str], **params: str) -> httpx.Response:
    """The upstream sends the browser back with a code (or whatever `params` say)."""
    query = {"code": "upstream-code", "state": sent["state"], **params}
    return client.get("/login/federated/callback", params={k: v for k, v in query.items() if v})
