"""Test data builders: one call makes a valid user, client, organization or access token."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from authserver import db, dpop
from authserver.oauth import clients, resources, token_format, tokens
from authserver.oauth.clients import Client
from authserver.organizations import models as orgs
from authserver.organizations.models import Organization
from authserver.security import new_token
from authserver.services import Services
from authserver.sessions import models as sessions
from authserver.users import models as users
from authserver.users.models import User

PASSWORD = "correct horse battery staple"
_counter = itertools.count(1)


class Factory:
    def __init__(self, services: Services) -> None:
        self.services = services

    def user(self, email: str | None = None, password: str = PASSWORD, **fields: Any) -> User:
        email = email or f"user{next(_counter)}@example.com"
        password_hash = self.services.passwords.hash(password)
        return self.services.db.call(
            users.create, email=email, password_hash=password_hash, **fields
        )

    def client(self, **fields: Any) -> tuple[Client, str | None]:
        fields.setdefault("name", "Example App")
        fields.setdefault("redirect_uris", ["https://app.example.com/cb"])
        return self.services.db.call(clients.create, self.services.digester, **fields)

    def resource_server(
        self, uri: str, scopes: list[str], name: str = "Photos API"
    ) -> tuple[Client, str | None]:
        """An API registered as a resource (RFC 8707) with the client that introspects for it."""
        client, secret = self.client(
            name=name,
            redirect_uris=[],
            grant_types=["client_credentials"],
            scope="",
            resource_server=True,
        )
        services = self.services
        services.db.call(
            resources.create, services.settings, uri=uri, scopes=scopes, client_id=client.id
        )
        return client, secret

    def organization(self, owner: User, name: str = "Acme") -> Organization:
        return self.services.db.call(orgs.create, name=name, owner_id=owner.id)


@dataclass(frozen=True)
class IssuedToken:
    """An access token minted for a test, with the rows that make it live."""

    token: str
    jti: str
    family_id: str | None
    session_id: str | None
    client_id: str


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Person:
    """A user with a live API token of theirs."""

    user: User
    issued: IssuedToken

    @property
    def token(self) -> str:
        return self.issued.token

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.issued.token)


class TokenFactory:
    """Access tokens as `/token` would issue them, without a browser round trip."""

    def __init__(self, factory: Factory) -> None:
        self.factory = factory

    def access_token(
        self,
        user: User | None,
        scope: str,
        *,
        client: Client | None = None,
        audience: str | None = None,
        offline: bool = False,
        typ: str = "at+jwt",
        ttl: int = 600,
        jkt: str | None = None,
    ) -> IssuedToken:
        """`jkt`: bound to that DPoP key (RFC 9449 §6.1)."""
        services = self.factory.services
        settings = services.settings
        if client is None:
            client, _ = self.factory.client(
                grant_types=["authorization_code", "refresh_token", "client_credentials"],
                scope=scope,
            )
        now = db.utcnow()

        def mint() -> IssuedToken:
            session_id = family_id = None
            if user is not None:
                login, _ = sessions.start(services.digester, settings, user_id=user.id)
                session_id = login.id
                end_user = token_format.EndUser(user, login.id, now)
                family = tokens.open_family(
                    client_id=client.id,
                    end_user=end_user,
                    code_id=None,
                    scope=scope + (" offline_access" if offline else ""),
                    now=now,
                    ttl=settings.refresh_token_ttl,
                )
                family_id = family.id
            jti = new_token(16)
            claims = {
                "iss": settings.issuer,
                "sub": user.id if user is not None else client.id,
                "aud": audience or settings.api_audience,
                "exp": int(now.timestamp()) + ttl,
                "iat": int(now.timestamp()),
                "jti": jti,
                "client_id": client.id,
                "scope": scope,
                **({"cnf": {"jkt": jkt}} if jkt is not None else {}),
            }
            db.current_session().add(
                tokens.AccessToken(
                    jti=jti,
                    family_id=family_id,
                    client_id=client.id,
                    user_id=user.id if user is not None else None,
                    expires_at=now + timedelta(seconds=ttl),
                )
            )
            token = services.keystore.sign(claims, typ=typ)
            return IssuedToken(token, jti, family_id, session_id, client.id)

        return services.db.call(mint)


class DPoPKey:
    """A client's DPoP key pair (RFC 9449), making proofs by hand; `claims` and `header`
    override or remove (None) what a correct proof would say."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))

    @property
    def jkt(self) -> str:
        return dpop.thumbprint(self.jwk)

    def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        claims: dict[str, Any] | None = None,
        header: dict[str, Any] | None = None,
    ) -> str:
        body: dict[str, Any] = {
            "jti": new_token(12),
            "htm": method,
            "htu": url,
            "iat": int(time.time()),
        }
        if access_token is not None:
            body["ath"] = dpop.token_hash(access_token)
        body.update(claims or {})
        head: dict[str, Any] = {"typ": "dpop+jwt", "jwk": self.jwk, **(header or {})}
        return jwt.encode(
            {k: v for k, v in body.items() if v is not None},
            self.private,
            algorithm="ES256",
            headers={k: v for k, v in head.items() if v is not None},
        )

    def headers(self, method: str, url: str, access_token: str, **changes: Any) -> dict[str, str]:
        """A resource request's `Authorization: DPoP` and `DPoP` headers."""
        proof = self.proof(method, url, access_token=access_token, **changes)
        return {"Authorization": f"DPoP {access_token}", "DPoP": proof}
