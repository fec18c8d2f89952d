"""OAuth clients: registration data, hashed secrets, and redirect URI matching."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import JSON, Boolean, String
from sqlalchemy.orm import Mapped, mapped_column

from authserver.db import Base, current_session, utcnow
from authserver.errors import Invalid
from authserver.security import Digester, new_token

GRANT_TYPES = (
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "urn:ietf:params:oauth:grant-type:device_code",
)
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")


class Client(Base):
    __tablename__ = "clients"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret_digest: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    post_logout_redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    grant_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    response_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    scope: Mapped[str] = mapped_column(String(1000), default="")
    token_endpoint_auth_method: Mapped[str] = mapped_column(String(40))
    id_token_signed_response_alg: Mapped[str] = mapped_column(String(10), default="RS256")
    jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    jwks_uri: Mapped[str | None] = mapped_column(String(2000))
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    skip_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    refresh_rotation: Mapped[bool] = mapped_column(Boolean, default=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    dynamically_registered: Mapped[bool] = mapped_column(Boolean, default=False)
    registration_token_digest: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def is_public(self) -> bool:
        return self.token_endpoint_auth_method == "none"


def get(client_id: str) -> Client | None:
    return current_session().get(Client, client_id)


LOOPBACK_REDIRECT_HOSTS = {"127.0.0.1", "[::1]"}
DEFAULT_SCOPE = "openid profile email offline_access"
SECRET_PURPOSE = "client_secret"


def validate_redirect_uri(uri: str) -> str:
    """RFC 9700 §2.1 / RFC 8252: absolute, no fragment, https, loopback http, or a private-use
    scheme for native apps; never script-bearing schemes, wildcards or userinfo."""
    if not uri or len(uri) > 2000 or any(ch.isspace() or ord(ch) < 32 for ch in uri):
        raise Invalid(f"Invalid redirect URI {uri!r}: empty, too long or contains spaces.")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if not scheme or "*" in uri or parts.fragment or "#" in uri:
        raise Invalid(f"Invalid redirect URI {uri!r}: must be absolute, without '*' or '#'.")
    if scheme in {"javascript", "data", "vbscript", "file", "blob", "about"}:
        raise Invalid(f"Invalid redirect URI {uri!r}: scheme {scheme!r} is not allowed.")
    if scheme in {"http", "https"}:
        if not parts.hostname or parts.username is not None or "@" in parts.netloc:
            raise Invalid(f"Invalid redirect URI {uri!r}: needs a host and no user info.")
        if scheme == "http" and parts.netloc.rsplit(":", 1)[0] not in LOOPBACK_REDIRECT_HOSTS:
            raise Invalid(
                f"Invalid redirect URI {uri!r}: plain http is only for loopback "
                "(http://127.0.0.1 or http://[::1])."
            )
    elif "." not in scheme:
        raise Invalid(
            f"Invalid redirect URI {uri!r}: a native app's private-use scheme must be a "
            "reversed domain name (RFC 8252 §7.1), e.g. com.example.app:/callback."
        )
    return uri


def validate_registration(
    *, redirect_uris: list[str], grant_types: list[str], auth_method: str
) -> None:
    for grant_type in grant_types:
        if grant_type not in GRANT_TYPES:
            raise Invalid(
                f"Unknown grant type {grant_type!r}: choose from {', '.join(GRANT_TYPES)}."
            )
    if auth_method not in AUTH_METHODS:
        raise Invalid(
            f"Unknown auth method {auth_method!r}: choose from {', '.join(AUTH_METHODS)}."
        )
    if auth_method == "none" and "client_credentials" in grant_types:
        raise Invalid("A public client cannot use the client_credentials grant.")
    if "authorization_code" in grant_types and not redirect_uris:
        raise Invalid("The authorization_code grant needs at least one redirect URI.")
    for uri in redirect_uris:
        validate_redirect_uri(uri)


def create(
    digester: Digester,
    *,
    name: str,
    redirect_uris: list[str] | None = None,
    grant_types: list[str] | None = None,
    scope: str = DEFAULT_SCOPE,
    auth_method: str = "client_secret_basic",
    post_logout_redirect_uris: list[str] | None = None,
    skip_consent: bool = False,
) -> tuple[Client, str | None]:
    """Register a client; returns it with its secret, which exists only in this return value."""
    name = name.strip()
    if not name or len(name) > 200:
        raise Invalid("The client name must be 1 to 200 characters.")
    redirect_uris = list(dict.fromkeys(redirect_uris or []))
    grant_types = list(dict.fromkeys(grant_types or ["authorization_code", "refresh_token"]))
    post_logout_redirect_uris = list(dict.fromkeys(post_logout_redirect_uris or []))
    validate_registration(
        redirect_uris=redirect_uris, grant_types=grant_types, auth_method=auth_method
    )
    for uri in post_logout_redirect_uris:
        validate_redirect_uri(uri)
    secret = None if auth_method in {"none", "private_key_jwt"} else new_token()
    client = Client(
        id=new_token(16),
        secret_digest=digester.digest(SECRET_PURPOSE, secret) if secret else None,
        name=name,
        redirect_uris=redirect_uris,
        post_logout_redirect_uris=post_logout_redirect_uris,
        grant_types=grant_types,
        response_types=["code"] if "authorization_code" in grant_types else [],
        scope=" ".join(dict.fromkeys(scope.split())),
        token_endpoint_auth_method=auth_method,
        skip_consent=skip_consent,
    )
    current_session().add(client)
    current_session().flush()
    return client, secret


def as_dict(client: Client) -> dict[str, Any]:
    return {
        "client_id": client.id,
        "client_name": client.name,
        "redirect_uris": client.redirect_uris,
        "post_logout_redirect_uris": client.post_logout_redirect_uris,
        "grant_types": client.grant_types,
        "response_types": client.response_types,
        "scope": client.scope,
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "skip_consent": client.skip_consent,
        "is_active": client.is_active,
        "created_at": client.created_at.isoformat(),
    }
