"""The OAuth 2.1 / OpenID Connect protocol: the only package that imports authlib's server.

`build_server` is the one wiring place (fosite's `compose`): which grants, extensions and
endpoints the server has, and which storage functions Authlib's hooks call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from authserver.fetch import Fetcher
from authserver.keystore import KeyStore
from authserver.ratelimit import RateLimiter
from authserver.security import Digester
from authserver.settings import Settings

if TYPE_CHECKING:
    from authserver.oauth.metadata_documents import ClientLookup
    from authserver.oauth.server import AuthorizationServer


def build_server(
    settings: Settings,
    keystore: KeyStore,
    digester: Digester,
    limiter: RateLimiter,
    fetcher: Fetcher,
    lookup: ClientLookup,
) -> AuthorizationServer:
    """Authlib's server with our grants (code + PKCE + OIDC, refresh, client_credentials,
    the device grant when `settings.device_flow` is on, token exchange when
    `settings.token_exchange` is), revocation and introspection
    (signed per RFC 9701 for clients registered for it), and storage through `clients`
    and `tokens`.

    It takes the services it needs rather than `Services`, so that `Services` can
    hold the server it builds. The protocol modules are imported here, not at the top:
    `authserver.models` reaches the tables through this package, and loading the tables
    should not load Authlib's server and every endpoint with them.
    """
    from authserver.oauth import (
        clients,
        endpoints,
        grants,
        introspection_jwt,
        oidc,
        token_format,
        tokens,
    )
    from authserver.oauth.assertions import AssertionVerifier
    from authserver.oauth.server import AuthorizationServer

    server = AuthorizationServer(
        query_client=lookup,
        save_token=tokens.save_token,
        authenticate_client=clients.ClientAuthentication(
            digester,
            settings.issuer,
            limiter=limiter,
            per_minute=settings.token_rate_per_client,
            assertions=AssertionVerifier(fetcher, limiter.kv, settings.issuer),
            lookup=lookup,
        ),
    )
    generator = token_format.AccessTokenGenerator(keystore, settings)
    server.register_token_generator("default", generator)
    server.register_grant(
        grants.bind(grants.AuthorizationCodeGrant, settings, digester, generator),
        [grants.PKCE(), oidc.OpenIDCode(keystore, settings)],
    )
    server.register_grant(
        grants.bind(grants.RefreshTokenGrant, settings, digester, generator),
        [oidc.IDTokens(keystore, settings)],
    )
    server.register_grant(grants.bind(grants.ClientCredentialsGrant, settings, digester, generator))
    if settings.device_flow:
        from authserver.oauth import device

        server.register_grant(
            grants.bind(device.DeviceCodeGrant, settings, digester, generator),
            [oidc.IDTokens(keystore, settings)],
        )
    if settings.token_exchange:
        from authserver.oauth import token_exchange

        server.register_grant(
            grants.bind(token_exchange.TokenExchangeGrant, settings, digester, generator)
        )
    server.register_endpoint(endpoints.Revocation(keystore, settings, digester))
    server.register_endpoint(introspection_jwt.SignedIntrospection(keystore, settings, digester))
    return server
