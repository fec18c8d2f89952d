"""Client ID metadata documents (draft-ietf-oauth-client-id-metadata-document).

A client may name itself by an https URL (the MCP authorization spec's way): its
`client_id` is the URL of a JSON document describing it, which we fetch through
`authserver.fetch` and accept only when it names that same URL as `client_id`. The
document is public, so it can carry no shared secret: such a client is public
(`token_endpoint_auth_method` `none`) or proves itself with `private_key_jwt`.

Codes, consents and token families reference `clients.id`, so the client gets a `clients`
row keyed by its URL, marked `metadata_document` in `info`; the row follows the document
whenever the cached copy expires and is fetched again. Nobody vouched for such a client:
it always asks for consent, and the consent page shows its host and says it is not
verified (`Client.unverified`). An operator can stop one by deactivating its row.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from authserver.db import current_session
from authserver.errors import Invalid
from authserver.fetch import Fetcher, FetchError
from authserver.oauth import assertions, clients, resources
from authserver.oauth.clients import CLIENT_ID_MAX, Client
from authserver.resource_server import API_SCOPES
from authserver.settings import Settings

log = logging.getLogger("authserver.oauth.metadata_documents")

AUTH_METHODS = ("none", "private_key_jwt")
GRANT_TYPES = ("authorization_code", "refresh_token")
#: What a document may ask for: scopes that speak for the person, and those of the APIs an
#: operator registered as resources (RFC 8707), never this server's own API scopes.
SCOPES = ("openid", "profile", "email", "offline_access", "organization")
SECRET_MEMBERS = ("client_secret", "client_secret_expires_at")
MAX_REDIRECT_URIS = 20
MARKER = "metadata_document"


def is_document_url(client_id: str | None) -> bool:
    """Whether `client_id` is in the form of a metadata document URL (§3 of the draft):
    https, a host, a path, no user info, no fragment, no dot segments."""
    if not client_id or not client_id.startswith("https://") or len(client_id) > CLIENT_ID_MAX:
        return False
    try:
        parts = urlsplit(client_id)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return False
    if not parts.hostname or "@" in parts.netloc or "#" in client_id:
        return False
    segments = parts.path.split("/")
    return parts.path not in ("", "/") and "." not in segments and ".." not in segments


def host_of(client_id: str) -> str:
    """What the consent page names the client by: the host that serves its document."""
    return urlsplit(client_id).netloc


def read_document(client_id: str, document: Any) -> dict[str, Any]:
    """The `clients` row a document describes; `Invalid` when it is not acceptable."""
    if not isinstance(document, dict):
        raise Invalid("The metadata document is not a JSON object.")
    if document.get("client_id") != client_id:
        raise Invalid("The metadata document's client_id is not its own URL.")
    if any(member in document for member in SECRET_MEMBERS):
        raise Invalid("A metadata document is public: it must not carry a client_secret.")
    method = document.get("token_endpoint_auth_method", "none")
    if method not in AUTH_METHODS:
        raise Invalid(f"A metadata document client authenticates with {' or '.join(AUTH_METHODS)}.")
    grant_types = _strings(document, "grant_types", ["authorization_code"])
    if not set(grant_types) <= set(GRANT_TYPES):
        raise Invalid(f"A metadata document client may use only {', '.join(GRANT_TYPES)}.")
    if _strings(document, "response_types", ["code"]) != ["code"]:
        raise Invalid("A metadata document client uses response_type code only.")
    redirect_uris = _strings(document, "redirect_uris", [])
    if len(redirect_uris) > MAX_REDIRECT_URIS:
        raise Invalid("The metadata document lists too many redirect_uris.")
    post_logout = _strings(document, "post_logout_redirect_uris", [])
    jwks, jwks_uri = document.get("jwks"), document.get("jwks_uri")
    if jwks_uri is not None and not isinstance(jwks_uri, str):
        raise Invalid("The jwks_uri must be a string.")
    clients.validate_registration(
        redirect_uris=redirect_uris,
        grant_types=grant_types,
        auth_method=method,
        jwks=jwks,
        jwks_uri=jwks_uri,
    )
    for uri in post_logout:
        clients.validate_redirect_uri(uri)
    scope = document.get("scope", clients.DEFAULT_SCOPE)
    allowed = set(SCOPES) | (resources.registered_scopes() - API_SCOPES.keys())
    if not isinstance(scope, str) or not set(scope.split()) <= allowed:
        raise Invalid(
            f"A metadata document client may ask for {', '.join(SCOPES)} and the scopes of "
            "the registered resources only."
        )
    name = document.get("client_name", host_of(client_id))
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 200:
        raise Invalid("The client_name must be 1 to 200 characters.")
    return {
        "name": name.strip(),
        "redirect_uris": list(dict.fromkeys(redirect_uris)),
        "post_logout_redirect_uris": list(dict.fromkeys(post_logout)),
        "grant_types": list(dict.fromkeys(grant_types)),
        "response_types": ["code"],
        "scope": " ".join(dict.fromkeys(scope.split())),
        "token_endpoint_auth_method": method,
        "jwks": jwks,
        "jwks_uri": jwks_uri,
        "info": {MARKER: True},
    }


def _strings(document: dict[str, Any], member: str, default: list[str]) -> list[str]:
    value = document.get(member, default)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise Invalid(f"The {member} must be an array of strings.")
    return value


class ClientLookup:
    """Authlib's `query_client`: a registered client by id, or a metadata document client
    by URL (fetched, checked, stored). Runs inside a unit of work; `warm` fetches the
    document beforehand, outside it, so the transaction does not wait on the network."""

    def __init__(self, fetcher: Fetcher, settings: Settings) -> None:
        self._fetcher = fetcher
        self._enabled = settings.client_metadata_documents

    def __call__(self, client_id: str | None) -> Client | None:
        if not is_document_url(client_id):
            return clients.query(client_id)
        assert client_id is not None
        if not self._enabled:
            return None
        try:
            fields = read_document(client_id, self._fetcher.json(client_id, trusted_only=True))
        except FetchError as error:
            log.info("metadata document %s: %s", client_id, error.reason)
            return None
        except Invalid as error:
            log.info("metadata document %s refused: %s", client_id, error.detail)
            return None
        return _stored(client_id, fields)

    async def prefetch(self, client_id: str | None) -> None:
        """`warm` in the threadpool, before the unit of work that reads the client; a
        registered client (the usual case) costs no trip to the threadpool."""
        if self._enabled and is_document_url(client_id):
            await run_in_threadpool(self.warm, client_id)

    def warm(self, client_id: str | None) -> None:
        """Fetch a metadata document into the cache, if `client_id` names one."""
        if self._enabled and is_document_url(client_id):
            assert client_id is not None
            with contextlib.suppress(FetchError):
                self._fetcher.json(client_id, trusted_only=True)


def named_client(params: Any) -> str | None:
    """The client a request names: `client_id`, or the `sub` of a client assertion."""
    client_id = params.first("client_id")
    assertion = params.first("client_assertion")
    if client_id is None and assertion is not None:
        try:
            return assertions.unverified_subject(assertion)
        except assertions.AssertionFailed:
            return None
    return client_id if isinstance(client_id, str) else None


def _stored(client_id: str, fields: dict[str, Any]) -> Client | None:
    """The client's row, created on first sight and updated when the document changed;
    None when an operator deactivated it."""
    found = clients.get(client_id)
    if found is None:
        try:
            with current_session().begin_nested():
                found = Client(id=client_id, **fields)
                current_session().add(found)
            return found
        except IntegrityError:
            found = clients.get(client_id)
            if found is None:
                raise
    if not found.metadata_document or not found.is_active:
        return None
    for name, value in fields.items():
        if getattr(found, name) != value:
            setattr(found, name, value)
    return found
