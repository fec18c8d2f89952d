"""Protected resources (RFC 8707 resource indicators): which APIs a token may be for.

An operator registers each API by its URI, with the scopes it accepts and, optionally, the
resource-server client that introspects its tokens. This server's own API
(`settings.api_audience`) is one implicitly: it accepts the API scopes and the scopes of
OpenID Connect, because /userinfo belongs to it, and it is the audience of a person's
token when the client names no resource.

What a token for a resource carries: `aud` is that resource (a list when a grant's
resources are all asked for at once), and `scope` only the requested scopes that resource
accepts. The OpenID Connect scopes (`openid profile email offline_access`) need no resource:
they are answered by the ID token and /userinfo, so they stay in the grant, in the token
response's `scope` and in the ID token, but a token for another resource does not carry
them; a client that wants /userinfo too asks for the API (no `resource`, or
`resource=<issuer>/api/v1`) as well.

Errors are `invalid_target` (RFC 8707 §2): a malformed or unknown resource, more than one
at the token endpoint, one outside the grant, a scope no requested resource accepts, or a
resource none of the requested scopes is for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.base import OAuth2Error
from sqlalchemy import ForeignKey, String, select, tuple_
from sqlalchemy.orm import Mapped, mapped_column

from authserver.db import Base, Position, current_session, new_id, utcnow
from authserver.errors import Conflict, Invalid
from authserver.oauth import clients
from authserver.resource_server import API_SCOPES
from authserver.settings import Settings

#: Answered by the ID token and /userinfo, never by another resource (see the docstring).
OPENID_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
#: What this server's own API accepts: its scopes, OpenID Connect's, and `organization`
#: (whose claims /userinfo and the API read from the token).
OWN_API_SCOPES = frozenset({*API_SCOPES, *OPENID_SCOPES, "organization"})
URI_MAX = 2000
NAME_MAX = 200
#: RFC 6749 §3.3 scope-token.
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,100}")
LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}


class InvalidTargetError(OAuth2Error):
    """RFC 8707 §2: the requested resource is invalid, unknown, or not for this request."""

    error = "invalid_target"
    status_code = 400


class Resource(Base):
    __tablename__ = "resources"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    uri: Mapped[str] = mapped_column(String(URI_MAX), unique=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    #: The scopes it accepts, space-separated.
    scope: Mapped[str] = mapped_column(String(1000))
    #: The resource-server client that introspects its tokens (RFC 7662): it is told about
    #: tokens for this resource and no other.
    client_id: Mapped[str | None] = mapped_column(
        ForeignKey("clients.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


@dataclass(frozen=True)
class Target:
    """A resource a token may be for: its URI and the scopes it accepts."""

    uri: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class Audience:
    """What an access token is issued for: `aud`, and the scope it carries."""

    aud: str | list[str]
    scope: str


# -- at the authorization and token endpoints ---------------------------------------------


def own_api(settings: Settings) -> Target:
    return Target(settings.api_audience, OWN_API_SCOPES)


def parse(values: Sequence[str]) -> list[str]:
    """The `resource` values, each an absolute URI without a fragment (RFC 8707 §2),
    without repeats."""
    for value in values:
        try:
            parts = urlsplit(value)
        except ValueError:  # an unbalanced IPv6 bracket, say
            raise InvalidTargetError("The resource must be an absolute URI.") from None
        if (
            len(value) > URI_MAX
            or not parts.scheme
            or not parts.netloc
            or "#" in value
            or any(ch.isspace() or not ch.isprintable() for ch in value)
        ):
            raise InvalidTargetError("The resource must be an absolute URI without a fragment.")
    return list(dict.fromkeys(values))


def targets(settings: Settings, uris: Sequence[str]) -> list[Target]:
    """The registered resources behind `uris`; an unknown one is `invalid_target`."""
    found = []
    for uri in uris:
        if uri == settings.api_audience:
            found.append(own_api(settings))
            continue
        row = current_session().scalar(select(Resource).where(Resource.uri == uri))
        if row is None:
            raise InvalidTargetError("The resource is not known to this server.")
        found.append(Target(row.uri, frozenset(row.scope.split())))
    return found


def check_scope(chosen: Sequence[Target], scope: str) -> None:
    """Every requested scope but OpenID Connect's is accepted by one of the resources, and
    every resource accepts one of the requested scopes: what the person consented to is
    scopes, so a token for an API they were never asked about is not on offer."""
    values = scope.split()
    for value in values:
        if value not in OPENID_SCOPES and not any(value in t.scopes for t in chosen):
            raise InvalidTargetError(f"No requested resource accepts the scope {value}.")
    for target in chosen:
        if not target.scopes & set(values):
            raise InvalidTargetError(f"No requested scope is for the resource {target.uri}.")


def check_authorization_request(settings: Settings, sent: Sequence[str], scope: str) -> list[str]:
    """The resources of an authorization request (stored with the code and then the
    grant); [] when none was named, which means this server's API."""
    uris = parse(sent)
    if uris:
        check_scope(targets(settings, uris), scope)
    return uris


def for_token(
    settings: Settings,
    granted: Sequence[str],
    sent: Sequence[str],
    scope: str,
    *,
    scope_sent: bool,
) -> Audience | None:
    """The audience of an access token from a grant whose resources are `granted` ([]: the
    API alone), for the one resource `sent` at /token or, without one, for all of them.
    None: neither the grant nor the request named a resource (the token is as it always
    was). An explicitly requested `scope` must suit the resource."""
    uris = parse(sent)
    if len(uris) > 1:
        raise InvalidTargetError("Ask for one resource per access token.")
    if not uris and not granted:
        return None
    allowed = list(granted) or [settings.api_audience]
    if any(uri not in allowed for uri in uris):
        raise InvalidTargetError("The resource was not part of this grant.")
    chosen = targets(settings, uris or allowed)
    if scope_sent:
        check_scope(chosen, scope)
    return audience_of(chosen, scope)


def for_client(settings: Settings, sent: Sequence[str], scope: str) -> Audience | None:
    """client_credentials: the one resource named, whose scopes the request must suit."""
    uris = parse(sent)
    if not uris:
        return None
    if len(uris) > 1:
        raise InvalidTargetError("Ask for one resource per access token.")
    chosen = targets(settings, uris)
    check_scope(chosen, scope)
    return audience_of(chosen, scope)


def audience_of(chosen: Sequence[Target], scope: str) -> Audience:
    accepted = [s for s in scope.split() if any(s in t.scopes for t in chosen)]
    uris = [t.uri for t in chosen]
    return Audience(uris[0] if len(uris) == 1 else uris, " ".join(accepted))


def response_scope(audience: Audience | None, scope: str) -> str:
    """The token response's `scope`: the access token's, plus the OpenID Connect scopes
    answered by the ID token and /userinfo."""
    if audience is None:
        return scope
    carried = set(audience.scope.split())
    return " ".join(s for s in scope.split() if s in carried or s in OPENID_SCOPES)


# -- at the introspection endpoint ----------------------------------------------------------


def served_by(client_id: str) -> set[str]:
    """The URIs of the resources a resource-server client introspects for."""
    rows = current_session().scalars(select(Resource.uri).where(Resource.client_id == client_id))
    return set(rows)


# -- registration ---------------------------------------------------------------------------


def validate_uri(uri: str, settings: Settings) -> str:
    """A resource identifier an operator may register: https (http only on loopback, for
    development), a host, no user info, query or fragment (RFC 8707 §2)."""
    parts = urlsplit(uri)
    if not uri or len(uri) > URI_MAX or any(ch.isspace() or not ch.isprintable() for ch in uri):
        raise Invalid("The resource URI must be 1 to 2000 printable characters.")
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise Invalid("The resource URI must be an absolute https URI.")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise Invalid("Plain http is only for loopback resources (127.0.0.1, [::1], localhost).")
    if parts.username is not None or "@" in parts.netloc or "#" in uri or parts.query:
        raise Invalid("The resource URI must not carry user info, a query or a fragment.")
    if uri == settings.api_audience:
        raise Conflict("This server's own API is a resource already.")
    return uri


def validate_scopes(scopes: Sequence[str]) -> str:
    values = list(dict.fromkeys(scopes))
    if not values:
        raise Invalid("A resource accepts at least one scope.")
    for value in values:
        if not SCOPE_TOKEN.fullmatch(value):
            raise Invalid(f"Invalid scope {value!r}: one scope token per value (RFC 6749 §3.3).")
        if value in OPENID_SCOPES:
            raise Invalid(f"{value} belongs to OpenID Connect (the ID token and /userinfo).")
    scope = " ".join(values)
    if len(scope) > 1000:
        raise Invalid("The scopes must be at most 1000 characters together.")
    return scope


def create(
    settings: Settings,
    *,
    uri: str,
    scopes: Sequence[str],
    name: str | None = None,
    client_id: str | None = None,
) -> Resource:
    uri = validate_uri(uri, settings)
    scope = validate_scopes(scopes)
    name = (name or uri).strip()
    if not name or len(name) > NAME_MAX or not name.isprintable():
        raise Invalid(f"The name must be 1 to {NAME_MAX} printable characters.")
    if client_id is not None:
        client = clients.get(client_id) if clients.plausible_client_id(client_id) else None
        if client is None or not client.resource_server:
            raise Invalid("client_id must name a client registered as a resource server.")
    if current_session().scalar(select(Resource.id).where(Resource.uri == uri)) is not None:
        raise Conflict("A resource with this URI exists already.")
    resource = Resource(uri=uri, name=name, scope=scope, client_id=client_id)
    current_session().add(resource)
    current_session().flush()
    return resource


def get(resource_id: str) -> Resource | None:
    return current_session().get(Resource, resource_id)


def find(id_or_uri: str) -> Resource | None:
    """A resource by id or by URI (what an operator types)."""
    return get(id_or_uri) or current_session().scalar(
        select(Resource).where(Resource.uri == id_or_uri)
    )


def registered_scopes() -> set[str]:
    """Every scope some registered resource accepts: what a client may register for so that
    it can ask for tokens to those APIs (RFC 8707, the MCP authorization flow)."""
    return {
        scope
        for text in current_session().scalars(select(Resource.scope))
        for scope in text.split()
    }


def listing(*, after: Position | None, limit: int) -> list[Resource]:
    query = select(Resource)
    if after is not None:
        query = query.where(tuple_(Resource.created_at, Resource.id) > after)
    query = query.order_by(Resource.created_at, Resource.id).limit(limit)
    return list(current_session().scalars(query))


def delete(resource: Resource) -> None:
    """Tokens already issued for it keep their `aud`; new ones cannot be asked for."""
    current_session().delete(resource)
    current_session().flush()


def as_dict(resource: Resource) -> dict[str, Any]:
    return {
        "id": resource.id,
        "uri": resource.uri,
        "name": resource.name,
        "scopes": resource.scope.split(),
        "client_id": resource.client_id,
        "created_at": resource.created_at.isoformat(),
    }
