"""Upstream providers as data: validation, OIDC discovery, encrypted client secrets, storage.

The CLI and `/api/v1/providers` both go through `create` and `update` here. Discovery (a
fetch through the one outbound client) runs before the unit of work that stores the result.
"""

from __future__ import annotations

import base64
import os
import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select, tuple_

from authserver.db import current_session, new_id, utcnow
from authserver.errors import Invalid, NotFound
from authserver.federation.models import KINDS, IdentityProvider
from authserver.fetch import Fetcher, FetchError
from authserver.organizations import models as orgs

NAME_MAX = 100
CLIENT_ID_MAX = 255
SECRET_MAX = 1000
DOMAINS_MAX = 50
NOT_FOUND = "No such identity provider."
#: GitHub's documented endpoints (docs.github.com, "Authorizing OAuth apps").
GITHUB = {
    "authorization_endpoint": "https://github.com/login/oauth/authorize",
    "token_endpoint": "https://github.com/login/oauth/access_token",
    "userinfo_endpoint": "https://api.github.com/user",
}
GITHUB_EMAILS = "https://api.github.com/user/emails"
GITHUB_SCOPES = "read:user user:email"
#: The roles a provider's users get in its organization; an owner is made by people only.
ROLES = ("member", "admin")
SECRET_VERSION = "v1."
PURPOSE = b"authserver/federation/secrets"


class SecretBox:
    """AES-256-GCM under a key derived from the root secret with HKDF-SHA256; the provider
    id is the associated data, so a ciphertext copied onto another provider's row does not
    decrypt. A fresh random 96-bit nonce per encryption."""

    def __init__(
        self, root_secret: bytes, purpose: bytes = b"authserver/federation/secrets"
    ) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(
            root_secret
        )
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, associated: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext, associated.encode())
        return SECRET_VERSION + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, token: str, associated: str) -> bytes | None:
        """The plaintext, or None when the token is malformed, foreign or tampered with."""
        if not token.startswith(SECRET_VERSION):
            return None
        try:
            raw = base64.urlsafe_b64decode(token[len(SECRET_VERSION) :].encode())
            return self._aead.decrypt(raw[:12], raw[12:], associated.encode())
        except (InvalidTag, ValueError):
            return None


@dataclass
class Changes:
    """What an operator sets; None leaves a field as it is (update) or at its default."""

    name: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    domains: list[str] | None = None
    jit: bool | None = None
    trust_verified_emails: bool | None = None
    organization_id: str | None = None
    default_role: str | None = None
    enabled: bool | None = None
    scopes: str | None = None


def validate_name(name: str) -> str:
    name = name.strip()
    if (
        not name
        or len(name) > NAME_MAX
        or any(unicodedata.category(c) in ("Cc", "Cs") for c in name)
    ):
        raise Invalid(f"The provider name must be 1 to {NAME_MAX} printable characters.")
    return name


def _printable(value: str, what: str, limit: int) -> str:
    if not value or len(value) > limit or not value.isascii() or not value.isprintable():
        raise Invalid(f"The {what} must be 1 to {limit} printable ASCII characters.")
    return value


def validate_domains(domains: list[str]) -> list[str]:
    if len(domains) > DOMAINS_MAX:
        raise Invalid(f"At most {DOMAINS_MAX} domains.")
    cleaned = []
    for domain in domains:
        value = unicodedata.normalize("NFKC", domain.strip()).lower().lstrip("@")
        if (
            not value
            or "." not in value.strip(".")
            or len(value) > 253
            or any(ch.isspace() or ch in "@/:" or ord(ch) < 32 for ch in value)
        ):
            raise Invalid(f"{domain!r} is not an email domain.")
        cleaned.append(value)
    return sorted(set(cleaned))


def check_endpoint(fetcher: Fetcher, url: Any, what: str) -> str:
    """An endpoint the server or the browser will be sent to: https (plain http only for a
    trusted loopback host), no user info or fragment, within the outbound client's rules."""
    if not isinstance(url, str):
        raise Invalid(f"The provider's {what} is missing.")
    try:
        fetcher.check_url(url)
    except FetchError as error:
        raise Invalid(f"The provider's {what}: {error.reason}") from None
    return url


def discover(fetcher: Fetcher, issuer: str) -> dict[str, Any]:
    """OIDC Discovery 1.0 §4: the provider's metadata, whose `issuer` must be exactly the
    one configured (§4.3), with the endpoints a code flow needs checked like any URL."""
    issuer = issuer.strip().rstrip("/")
    check_endpoint(fetcher, issuer, "issuer")
    if urlsplit(issuer).query:
        raise Invalid("The issuer must not have a query.")
    try:
        metadata = fetcher.json(issuer + "/.well-known/openid-configuration")
    except FetchError as error:
        raise Invalid(f"The provider's discovery document: {error.reason}") from None
    if not isinstance(metadata, dict) or metadata.get("issuer") != issuer:
        raise Invalid("The discovery document names another issuer.")
    if "code" not in metadata.get("response_types_supported", ["code"]):
        raise Invalid("The provider does not support the authorization code flow.")
    methods = metadata.get("token_endpoint_auth_methods_supported", ["client_secret_basic"])
    if not isinstance(methods, list):
        methods = ["client_secret_basic"]
    if "client_secret_basic" in methods:
        method = "client_secret_basic"
    elif "client_secret_post" in methods:
        method = "client_secret_post"
    else:
        raise Invalid("The provider accepts neither client_secret_basic nor client_secret_post.")
    userinfo = metadata.get("userinfo_endpoint")
    return {
        "issuer": issuer,
        "authorization_endpoint": check_endpoint(
            fetcher, metadata.get("authorization_endpoint"), "authorization_endpoint"
        ),
        "token_endpoint": check_endpoint(fetcher, metadata.get("token_endpoint"), "token_endpoint"),
        "jwks_uri": check_endpoint(fetcher, metadata.get("jwks_uri"), "jwks_uri"),
        "userinfo_endpoint": check_endpoint(fetcher, userinfo, "userinfo_endpoint")
        if userinfo is not None
        else None,
        "sends_iss": metadata.get("authorization_response_iss_parameter_supported") is True,
        "token_auth_method": method,
    }


def endpoints_for(fetcher: Fetcher, kind: str, issuer: str | None) -> dict[str, Any]:
    """What a new provider of `kind` needs besides its name and client: discovered (OIDC) or
    GitHub's fixed endpoints. Call outside any unit of work: it may fetch."""
    if kind not in KINDS:
        raise Invalid(f"The kind must be one of {', '.join(KINDS)}.")
    if kind == "github":
        if issuer:
            raise Invalid("A GitHub provider has no issuer.")
        return {
            **GITHUB,
            "issuer": None,
            "jwks_uri": None,
            "sends_iss": False,
            "token_auth_method": "client_secret_post",
            "scopes": GITHUB_SCOPES,
        }
    if not issuer:
        raise Invalid("An OpenID Connect provider needs its issuer.")
    return discover(fetcher, issuer)


def create(
    box: SecretBox, kind: str, endpoints: dict[str, Any], changes: Changes
) -> IdentityProvider:
    if changes.name is None or changes.client_id is None or not changes.client_secret:
        raise Invalid("A provider needs a name, a client_id and a client_secret.")
    provider = IdentityProvider(id=new_id(), kind=kind, client_secret="", **endpoints)
    _apply(box, provider, changes)
    current_session().add(provider)
    current_session().flush()
    return provider


def update(box: SecretBox, provider: IdentityProvider, changes: Changes) -> IdentityProvider:
    _apply(box, provider, changes)
    provider.updated_at = utcnow()
    current_session().flush()
    return provider


def _apply(box: SecretBox, provider: IdentityProvider, changes: Changes) -> None:
    if changes.name is not None:
        provider.name = validate_name(changes.name)
    if changes.client_id is not None:
        provider.client_id = _printable(changes.client_id, "client_id", CLIENT_ID_MAX)
    if changes.client_secret is not None:
        secret = _printable(changes.client_secret, "client_secret", SECRET_MAX)
        provider.client_secret = box.seal(secret.encode(), provider.id)
    if changes.domains is not None:
        provider.domains = validate_domains(changes.domains)
    for flag in ("jit", "trust_verified_emails", "enabled"):
        value = getattr(changes, flag)
        if value is not None:
            setattr(provider, flag, bool(value))
    if changes.scopes is not None:
        scopes = _printable(changes.scopes, "scopes", 500).split()
        if provider.kind == "oidc" and "openid" not in scopes:
            raise Invalid("The scopes of an OpenID Connect provider must include openid.")
        provider.scopes = " ".join(scopes)
    if changes.default_role is not None:
        if changes.default_role not in ROLES:
            raise Invalid(f"The default role must be one of {', '.join(ROLES)}.")
        provider.default_role = changes.default_role
    if changes.organization_id is not None:
        if changes.organization_id == "":
            provider.organization_id = None
        elif current_session().get(orgs.Organization, changes.organization_id) is None:
            raise Invalid("No such organization.")
        else:
            provider.organization_id = changes.organization_id
    if provider.enabled is None:
        provider.enabled = True


def client_secret(box: SecretBox, provider: IdentityProvider) -> str:
    opened = box.open(provider.client_secret, provider.id)
    if opened is None:
        raise Invalid(
            "The provider's client secret cannot be decrypted (was the root secret changed?)."
        )
    return opened.decode()


def get(provider_id: str) -> IdentityProvider | None:
    if not provider_id or len(provider_id) > 36:
        return None
    return current_session().get(IdentityProvider, provider_id)


def existing(provider_id: str) -> IdentityProvider:
    provider = get(provider_id)
    if provider is None:
        raise NotFound(NOT_FOUND)
    return provider


def find(id_or_name: str) -> IdentityProvider | None:
    """By id, else by exact name (the CLI's convenience)."""
    return get(id_or_name) or current_session().scalar(
        select(IdentityProvider).where(IdentityProvider.name == id_or_name).limit(1)
    )


def enabled() -> list[IdentityProvider]:
    return list(
        current_session().scalars(
            select(IdentityProvider)
            .where(IdentityProvider.enabled.is_(True))
            .order_by(IdentityProvider.name, IdentityProvider.id)
        )
    )


def listing(*, after: Any, limit: int) -> list[IdentityProvider]:
    query = (
        select(IdentityProvider)
        .order_by(IdentityProvider.created_at, IdentityProvider.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(tuple_(IdentityProvider.created_at, IdentityProvider.id) > after)
    return list(current_session().scalars(query))


def delete(provider: IdentityProvider) -> None:
    """Its links go with it (ON DELETE CASCADE); people keep their accounts."""
    current_session().delete(provider)
    current_session().flush()


def as_dict(provider: IdentityProvider) -> dict[str, Any]:
    """Everything but the secret, which is never shown again."""
    return {
        "id": provider.id,
        "kind": provider.kind,
        "name": provider.name,
        "issuer": provider.issuer,
        "client_id": provider.client_id,
        "authorization_endpoint": provider.authorization_endpoint,
        "token_endpoint": provider.token_endpoint,
        "userinfo_endpoint": provider.userinfo_endpoint,
        "jwks_uri": provider.jwks_uri,
        "scopes": provider.scopes,
        "domains": list(provider.domains or []),
        "jit": provider.jit,
        "trust_verified_emails": provider.trust_verified_emails,
        "organization_id": provider.organization_id,
        "default_role": provider.default_role,
        "enabled": provider.enabled,
        "created_at": provider.created_at.isoformat(),
    }
