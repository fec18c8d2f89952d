"""What request handlers need, built once per app by `app.build_services`.

This module only names the parts: features find them with `services(request)` and import this
module, never `authserver.app` (which imports every feature to list the routes). The OAuth and
federation parts are named for type checking only, so that importing `Services` pulls in no
feature at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request

from authserver import fetch, outbound, web
from authserver.app_access import AppAccess
from authserver.db import Database
from authserver.dpop import ProofVerifier
from authserver.keystore import KeyStore
from authserver.ratelimit import RateLimiter
from authserver.resource_server import TokenVerifier
from authserver.security import Digester, Passwords
from authserver.settings import Settings

if TYPE_CHECKING:
    from authserver.federation.service import Federation
    from authserver.oauth.metadata_documents import ClientLookup
    from authserver.oauth.server import AuthorizationServer


@dataclass(frozen=True)
class Services:
    """What request handlers need, built once per app (no import-time globals)."""

    settings: Settings
    db: Database
    keystore: KeyStore
    digester: Digester
    passwords: Passwords
    csrf: web.Csrf
    limiter: RateLimiter
    verify_access_token: TokenVerifier
    app_access: AppAccess
    mailer: outbound.Mailer
    fetcher: fetch.Fetcher
    clients: ClientLookup
    oauth: AuthorizationServer
    federation: Federation
    #: DPoP proofs (RFC 9449); None while `settings.dpop` is off.
    dpop: ProofVerifier | None = None


def services(request: Request) -> Services:
    """The services of the app serving `request`."""
    found: Services = request.app.state.services
    return found
