"""The application factory: the one place where settings, storage, keys and routes meet.

Reading `routes()` top to bottom lists every URL the server answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from authserver import api, dpop, fetch, kv, observability, outbound, rendering, serving, web
from authserver.db import Database
from authserver.errors import UnexpectedErrorMiddleware, exception_handlers
from authserver.federation import pages as federation_pages
from authserver.federation.service import Federation
from authserver.keystore import DatabaseKeys, KeyStore
from authserver.maintenance import purge_periodically, rotate_periodically
from authserver.mfa import pages as mfa_pages
from authserver.oauth import (
    authorize,
    backchannel,
    bearer,
    build_server,
    cors,
    device,
    discovery,
    endpoints,
    logout,
    par,
    registration,
)
from authserver.oauth.app_access import OAuthAppAccess
from authserver.oauth.metadata_documents import ClientLookup
from authserver.ratelimit import RateLimiter
from authserver.security import Digester, Passwords
from authserver.services import Services
from authserver.sessions import pages
from authserver.settings import Settings
from authserver.users import account, passwords, signup


def open_keystore(settings: Settings) -> KeyStore:
    """Open (on first start: create) the key store; raises KeyStoreError when unreadable.

    In the database the store keeps a root secret only when `AUTHSERVER_SECRET_KEY` does
    not provide one."""
    retention = max(settings.access_token_ttl, settings.id_token_ttl)
    database = settings.keys_store == "database"
    passphrase = settings.keys_passphrase
    return KeyStore(
        DatabaseKeys(settings.database_url, (passphrase or "").encode())
        if database
        else settings.keys_dir,
        passphrase,
        activation_delay=settings.key_activation_delay,
        retention=retention,
        manage_secret=not (database and settings.secret_key),
    ).open()


def build_services(settings: Settings) -> Services:
    keystore = open_keystore(settings)
    secret = settings.secret_key.encode() if settings.secret_key else keystore.secret()
    digester = Digester(secret)
    limiter = RateLimiter(kv.open_kv(settings.redis_url))
    fetcher = fetch.Fetcher(
        trusted_hosts=settings.client_metadata_hosts, more_trusted_hosts=settings.trusted_hosts
    )
    lookup = ClientLookup(fetcher, settings)
    database = Database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout,
        statement_timeout=settings.db_statement_timeout,
    )
    return Services(
        settings=settings,
        db=database,
        keystore=keystore,
        digester=digester,
        passwords=Passwords(
            settings.password_time_cost,
            settings.password_memory_cost,
            settings.password_parallelism,
        ),
        csrf=web.Csrf(secret, issuer=settings.issuer),
        limiter=limiter,
        verify_access_token=bearer.make_verifier(keystore, settings),
        app_access=OAuthAppAccess(backchannel_logout=settings.backchannel_logout),
        mailer=outbound.build_mailer(settings),
        fetcher=fetcher,
        clients=lookup,
        oauth=build_server(settings, keystore, digester, limiter, fetcher, lookup),
        federation=Federation(database, fetcher, secret, settings.issuer),
        dpop=dpop.verifier(settings, limiter.kv, digester),
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/health", observability.health),
        Route("/ready", observability.ready),
        Route("/metrics", observability.metrics),
        Route("/.well-known/openid-configuration", discovery.openid_configuration),
        Route("/.well-known/oauth-authorization-server", discovery.openid_configuration),
        Route("/jwks.json", discovery.jwks),
        Route(discovery.API_METADATA_PATH, discovery.api_metadata),
        *(
            Route(path, cors.public_preflight, methods=["OPTIONS"])
            for path in (
                "/.well-known/openid-configuration",
                "/.well-known/oauth-authorization-server",
                "/jwks.json",
                discovery.API_METADATA_PATH,
            )
        ),
        Route("/authorize", authorize.authorize, methods=["GET", "POST"]),
        Route("/consent", authorize.consent_page, methods=["GET", "POST"]),
        Route("/token", endpoints.token, methods=["POST"]),
        Route("/token", cors.preflight(["POST"]), methods=["OPTIONS"]),
        Route("/revoke", endpoints.revoke, methods=["POST"]),
        Route("/revoke", cors.preflight(["POST"]), methods=["OPTIONS"]),
        Route("/introspect", endpoints.introspect, methods=["POST"]),
        Route("/device_authorization", device.device_authorization, methods=["POST"]),
        Route(device.PATH, device.device_page, methods=["GET", "POST"]),
        Route("/par", par.push, methods=["POST"]),
        Route("/userinfo", endpoints.userinfo, methods=["GET", "POST"]),
        Route("/userinfo", cors.preflight(["GET", "POST"]), methods=["OPTIONS"]),
        Route("/register", registration.register, methods=["POST"]),
        Route("/register", registration.register_preflight, methods=["OPTIONS"]),
        Route("/register/{client_id}", registration.manage, methods=["GET", "PUT", "DELETE"]),
        Route("/register/{client_id}", registration.manage_preflight, methods=["OPTIONS"]),
        Route("/login", pages.login, methods=["GET", "POST"]),
        Route("/login/federated/callback", federation_pages.callback),
        Route("/login/federated/{provider_id}", federation_pages.start),
        Route("/logout", logout.logout, methods=["GET", "POST"]),
        Route("/signup", signup.signup, methods=["GET", "POST"]),
        Route("/verify-email", signup.verify_email, methods=["GET", "POST"]),
        Route("/verify-email/resend", signup.resend_verification, methods=["GET", "POST"]),
        Route("/reset-password", passwords.reset_password, methods=["GET", "POST"]),
        Route("/reset-password/confirm", passwords.reset_password_confirm, methods=["GET", "POST"]),
        Route("/account/password", passwords.change_password, methods=["GET", "POST"]),
        Route("/login/factor", mfa_pages.second_factor, methods=["GET", "POST"]),
        Route("/login/passkey/options", mfa_pages.passkey_options, methods=["POST"]),
        Route("/login/passkey", mfa_pages.passkey_sign_in, methods=["POST"]),
        Route("/account", account.account),
        Route("/account/totp/start", mfa_pages.totp_start, methods=["POST"]),
        Route("/account/totp/confirm", mfa_pages.totp_confirm, methods=["POST"]),
        Route("/account/totp/remove", mfa_pages.totp_remove, methods=["POST"]),
        Route("/account/recovery-codes", mfa_pages.recovery_codes, methods=["POST"]),
        Route("/account/second-factor-required", mfa_pages.require_factor, methods=["POST"]),
        Route("/account/passkeys/options", mfa_pages.passkey_register_options, methods=["POST"]),
        Route("/account/passkeys", mfa_pages.passkey_register, methods=["POST"]),
        Route("/account/passkeys/{passkey_id}/remove", mfa_pages.passkey_remove, methods=["POST"]),
        Route("/account/sessions/end-others", account.end_other_sessions, methods=["POST"]),
        Route("/account/sessions/{session_id}/end", account.end_session, methods=["POST"]),
        Route("/account/consents/{consent_id}/revoke", account.revoke_consent, methods=["POST"]),
        Route(
            "/account/identities/{provider_id}/link",
            federation_pages.start_link,
            methods=["POST"],
        ),
        Route(
            "/account/identities/{identity_id}/unlink",
            federation_pages.unlink,
            methods=["POST"],
        ),
        *api.routes(),
        Mount("/static", StaticFiles(directory=rendering.STATIC_DIR), name="static"),
    ]


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the ASGI app. With no settings, read them from the environment (uvicorn --factory)."""
    settings = settings or Settings.from_env()
    services = build_services(settings)
    metrics = observability.Metrics()
    documents = discovery.PublicDocuments(settings, services.keystore)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        async with anyio.create_task_group() as tasks:
            if settings.purge_interval:
                tasks.start_soon(purge_periodically, services.db, settings.purge_interval)
            if settings.key_rotation_period:
                tasks.start_soon(
                    rotate_periodically,
                    services.db,
                    services.keystore,
                    settings.key_rotation_period,
                )
            if settings.backchannel_logout:
                tasks.start_soon(backchannel.deliver_periodically, services)
            yield {
                serving.PREPARED: serving.PreparedAnswers(
                    documents,
                    metrics,
                    https=settings.is_https,
                    trusts_proxies=bool(settings.trusted_proxies),
                )
            }
            tasks.cancel_scope.cancel()
        services.db.dispose()
        services.keystore.close()
        services.limiter.close()
        services.fetcher.close()

    app = Starlette(
        routes=routes(),
        middleware=[
            Middleware(observability.RequestLogMiddleware, metrics=metrics),
            Middleware(web.SecurityHeadersMiddleware, https=settings.is_https),
            Middleware(web.BodySizeLimitMiddleware),
            Middleware(UnexpectedErrorMiddleware),
        ],
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.db = services.db
    app.state.keystore = services.keystore
    app.state.public_documents = documents
    app.state.templates = rendering.make_templates()
    return app
