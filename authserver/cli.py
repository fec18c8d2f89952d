"""The `authserver` command: serve, migrate, keys, users, clients, resources, orgs,
registration-tokens, purge.

Every failure the operator can fix ends as one line on stderr and a non-zero exit: 2 for bad
configuration or usage, 1 for a refused operation (duplicate email, bad redirect URI, ...).

Each command imports the features it needs inside its function, on purpose: `authserver
migrate` or `--help` should not load the app, Authlib and every endpoint to do its job.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from authserver import __version__
from authserver.errors import AppError
from authserver.keystore import KeyStoreError
from authserver.settings import ConfigError, Settings

EXIT_REFUSED = 1
EXIT_CONFIG = 2
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class CliError(Exception):
    def __init__(self, message: str, status: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.status = status


def alembic_config(database_url: str) -> Any:
    from alembic.config import Config

    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    return config


def migrate(database_url: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(database_url), "head")


def schema_revisions(database_url: str) -> tuple[set[str], set[str]]:
    """(the revisions the database is at, the latest revisions of the code)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    script = ScriptDirectory.from_config(alembic_config(database_url))
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_heads()
    finally:
        engine.dispose()
    return set(current), set(script.get_heads())


def schema_is_current(database_url: str) -> bool:
    current, latest = schema_revisions(database_url)
    return current == latest


def _safe_url(database_url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(database_url).render_as_string(hide_password=True)


#: Bind addresses that mean "every interface"; the issuer then names the loopback one.
ALL_INTERFACES = {"0.0.0.0", "::"}  # noqa: S104


def _issuer_configured() -> bool:
    """Whether AUTHSERVER_ISSUER is set, in the environment or in .env (as Settings reads)."""
    from dotenv import dotenv_values

    if os.environ.get("AUTHSERVER_ISSUER"):
        return True
    return Path(".env").is_file() and bool(dotenv_values(".env").get("AUTHSERVER_ISSUER"))


def default_issuer(host: str, port: int) -> str:
    """The issuer of a server nobody configured one for: where it listens, so discovery
    points at this server and not at a port where nothing answers."""
    from authserver.settings import LOOPBACK_HOSTS

    if host in ALL_INTERFACES:
        host = "127.0.0.1"
    if host not in LOOPBACK_HOSTS:
        raise CliError(
            f"set AUTHSERVER_ISSUER to the https URL clients reach when serving on {host}",
            EXIT_CONFIG,
        )
    return f"http://{'[::1]' if host == '::1' else host}:{port}"


def _emit(args: argparse.Namespace, record: dict[str, Any], summary: str) -> None:
    if args.json:
        print(json.dumps(record, indent=2, default=str))
    else:
        print(summary)


def _services(settings: Settings) -> Any:
    from authserver.app import build_services

    return build_services(settings)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    from authserver import serving
    from authserver.app import open_keystore
    from authserver.keystore import MANIFEST

    derive_issuer = not _issuer_configured()
    if derive_issuer:
        settings = settings.replace(issuer=default_issuer(args.host, args.port))
    first_start = not (settings.keys_dir / MANIFEST).exists()
    store = open_keystore(settings)
    if first_start:
        made = ", ".join(f"{info.alg} {info.kid}" for info in store.keys())
        print(f"created signing keys in {settings.keys_dir}/: {made}")
    store.close()
    if not schema_is_current(settings.database_url):
        raise CliError("the database schema is not current: run `authserver migrate` first")
    print(f"authserver {__version__} serving issuer {settings.issuer}")
    print(f"  listening on http://{args.host}:{args.port}")
    print("  next: authserver users create --email you@example.com --password-stdin")
    print("        authserver clients create --name 'My app' --redirect-uri https://app/cb")
    sys.stdout.flush()
    if derive_issuer:
        # The app factory (in every worker) reads the issuer from the environment.
        os.environ["AUTHSERVER_ISSUER"] = settings.issuer
    serving.run(settings, host=args.host, port=args.port, workers=args.workers, reload=args.reload)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    before, _ = schema_revisions(settings.database_url)
    migrate(settings.database_url)
    after, _ = schema_revisions(settings.database_url)
    where = _safe_url(settings.database_url)
    if before == after:
        print(f"{where}: already at revision {', '.join(sorted(after))}, nothing to do")
    else:
        start = ", ".join(sorted(before)) or "an empty database"
        print(f"{where}: migrated from {start} to revision {', '.join(sorted(after))}")


def cmd_keys(args: argparse.Namespace, settings: Settings) -> None:
    from authserver.app import open_keystore

    store = open_keystore(settings)
    try:
        _keys_command(args, store)
    finally:
        store.close()


def _keys_command(args: argparse.Namespace, store: Any) -> None:
    if args.keys_command == "rotate":
        info = store.rotate(args.alg)
        _emit(args, asdict(info), f"added {info.alg} key {info.kid}")
    elif args.keys_command == "retire":
        info = store.retire(args.kid)
        _emit(args, asdict(info), f"retired {info.alg} key {info.kid}")
    else:
        ring = store.keys()
        keys = [asdict(info) for info in ring]
        if args.json:
            print(json.dumps(keys, indent=2))
        else:
            for key in keys:
                print(f"{key['kid']}  {key['alg']:<6} {key['status']}")


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise CliError("give the password on standard input with --password-stdin", EXIT_CONFIG)
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat password: "):
        raise CliError("the passwords do not match")
    return first


def cmd_users_create(args: argparse.Namespace, settings: Settings) -> None:
    from authserver import audit
    from authserver.users import models as users

    password = users.validate_password(_read_password(args), email=args.email, name=args.name)
    services = _services(settings)

    def create() -> dict[str, Any]:
        user = users.create(
            email=args.email,
            name=args.name,
            password_hash=services.passwords.hash(password),
            is_admin=args.admin,
        )
        if args.verified:
            users.mark_email_verified(user)
        audit.record("user.created", actor_type="cli", target_type="user", target_id=user.id)
        return users.as_dict(user)

    record = services.db.call(create)
    _emit(args, record, f"created user {record['email']} ({record['id']})")


def cmd_clients_create(args: argparse.Namespace, settings: Settings) -> None:
    from authserver import audit
    from authserver.oauth import backchannel, clients, token_exchange

    auth_method = args.auth_method or ("none" if args.public else "client_secret_basic")
    if args.public and auth_method != "none":
        raise CliError("a --public client authenticates with --auth-method none")
    if auth_method == "none" and not args.public:
        raise CliError("--auth-method none is for public clients: add --public")
    jwks = _read_jwks(args.jwks_file) if args.jwks_file else None
    services = _services(settings)

    def create() -> dict[str, Any]:
        token_exchange.check_policy(settings, args.token_exchange_audience)
        client, secret = clients.create(
            services.digester,
            name=args.name,
            redirect_uris=args.redirect_uri,
            grant_types=args.grant_type,
            scope=args.scope,
            auth_method=auth_method,
            post_logout_redirect_uris=args.post_logout_redirect_uri,
            skip_consent=args.skip_consent,
            resource_server=args.resource_server,
            jwks=jwks,
            jwks_uri=args.jwks_uri,
            require_pushed_authorization_requests=args.require_par,
            introspection_signed_response_alg=args.introspection_signed_response_alg,
            token_exchange_audiences=args.token_exchange_audience,
        )
        backchannel.register(
            client,
            services.fetcher,
            args.backchannel_logout_uri,
            args.backchannel_logout_session_required,
        )
        audit.record("client.created", actor_type="cli", target_type="client", target_id=client.id)
        record = clients.as_dict(client)
        if secret:
            record["client_secret"] = secret
        return record

    record = services.db.call(create)
    summary = f"created client {record['client_name']}\n  client_id:     {record['client_id']}"
    if "client_secret" in record:
        summary += f"\n  client_secret: {record['client_secret']}  (shown once; store it now)"
    _emit(args, record, summary)


def _read_jwks(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read a JSON key set from {path}: {exc}") from None


def cmd_orgs_create(args: argparse.Namespace, settings: Settings) -> None:
    from authserver import audit
    from authserver.organizations import models as orgs
    from authserver.users import models as users

    services = _services(settings)

    def create() -> dict[str, Any]:
        owner = users.find_by_email(args.owner)
        if owner is None:
            raise CliError(f"no user with email {args.owner}")
        organization = orgs.create(name=args.name, owner_id=owner.id)
        audit.record(
            "organization.created",
            actor_type="cli",
            target_type="organization",
            target_id=organization.id,
        )
        return {**orgs.as_dict(organization), "owner": owner.email}

    record = services.db.call(create)
    _emit(args, record, f"created organization {record['name']} ({record['id']})")


def cmd_resources(args: argparse.Namespace, settings: Settings) -> None:
    from authserver import audit
    from authserver.oauth import resources

    services = _services(settings)

    def create() -> dict[str, Any]:
        resource = resources.create(
            settings, uri=args.uri, scopes=args.scope, name=args.name, client_id=args.client_id
        )
        audit.record(
            "resource.created", actor_type="cli", target_type="resource", target_id=resource.id
        )
        return resources.as_dict(resource)

    def listing() -> list[dict[str, Any]]:
        found = resources.listing(after=None, limit=10_000)
        return [resources.as_dict(resource) for resource in found]

    def delete() -> dict[str, Any]:
        resource = resources.find(args.resource)
        if resource is None:
            raise CliError(f"no resource {args.resource}")
        record = resources.as_dict(resource)
        resources.delete(resource)
        audit.record(
            "resource.deleted", actor_type="cli", target_type="resource", target_id=record["id"]
        )
        return record

    if args.resources_command == "create":
        record = services.db.call(create)
        _emit(args, record, f"created resource {record['uri']} ({record['id']})")
    elif args.resources_command == "delete":
        record = services.db.call(delete)
        _emit(args, record, f"deleted resource {record['uri']}")
    else:
        records = services.db.call(listing)
        if args.json:
            print(json.dumps(records, indent=2))
        for record in [] if args.json else records:
            print(f"{record['uri']}  {' '.join(record['scopes'])}  ({record['id']})")


def cmd_registration_tokens_create(args: argparse.Namespace, settings: Settings) -> None:
    from authserver import audit
    from authserver.oauth import registration

    services = _services(settings)

    def create() -> dict[str, Any]:
        row, token = registration.create_initial_access_token(
            services.digester, expires_in=args.expires_in, max_uses=args.max_uses
        )
        audit.record(
            "registration_token.created",
            actor_type="cli",
            target_type="initial_access_token",
            target_id=row.id,
        )
        return {**registration.initial_access_token_as_dict(row), "token": token}

    record = services.db.call(create)
    summary = (
        f"created initial access token {record['id']}\n"
        f"  token:   {record['token']}  (shown once; store it now)\n"
        f"  expires: {record['expires_at'] or 'never'}\n"
        f"  uses:    {record['max_uses'] or 'unlimited'}"
    )
    if settings.registration != "token":
        summary += (
            f"\n  note: AUTHSERVER_REGISTRATION is {settings.registration!r}; /register asks "
            "for this token only when it is 'token'"
        )
    _emit(args, record, summary)


def cmd_providers(args: argparse.Namespace, settings: Settings) -> None:
    """Upstream identity providers: the same validation and storage as /api/v1/providers."""
    from authserver import audit
    from authserver.federation import providers

    services = _services(settings)
    federation = services.federation
    action = args.providers_command

    def changes() -> providers.Changes:
        secret = None
        if getattr(args, "client_secret_stdin", False):
            secret = sys.stdin.readline().rstrip("\r\n")
        enabled = {"enable": True, "disable": False}.get(action, getattr(args, "enabled", None))
        return providers.Changes(
            name=getattr(args, "name", None),
            client_id=getattr(args, "client_id", None),
            client_secret=secret,
            domains=getattr(args, "domain", None),
            jit=getattr(args, "jit", None),
            trust_verified_emails=getattr(args, "trust_verified_emails", None),
            organization_id=getattr(args, "organization", None),
            default_role=getattr(args, "default_role", None),
            enabled=enabled,
            scopes=getattr(args, "scopes", None),
        )

    def found() -> Any:
        provider = providers.find(args.provider)
        if provider is None:
            raise CliError(f"no provider {args.provider}")
        return provider

    def record(event: str, provider_id: str) -> None:
        audit.record(event, actor_type="cli", target_type="provider", target_id=provider_id)

    if action == "create":
        if not args.client_secret_stdin:
            raise CliError("give the client secret on standard input with --client-secret-stdin")
        endpoints = providers.endpoints_for(services.fetcher, args.kind, args.issuer)
        given = changes()

        def create() -> dict[str, Any]:
            provider = providers.create(federation.box, args.kind, endpoints, given)
            record("provider.created", provider.id)
            return providers.as_dict(provider)

        created = services.db.call(create)
        _emit(args, created, f"created provider {created['name']} ({created['id']})")
    elif action == "list":
        rows = services.db.call(
            lambda: [providers.as_dict(p) for p in providers.listing(after=None, limit=10_000)]
        )
        if args.json:
            print(json.dumps(rows, indent=2))
        for row in [] if args.json else rows:
            state = "enabled" if row["enabled"] else "disabled"
            print(f"{row['name']}  {row['kind']}  {state}  ({row['id']})")
    elif action == "delete":

        def delete() -> dict[str, Any]:
            provider = found()
            shown = providers.as_dict(provider)
            providers.delete(provider)
            record("provider.deleted", shown["id"])
            return shown

        deleted = services.db.call(delete)
        _emit(args, deleted, f"deleted provider {deleted['name']}")
    else:
        given = changes()

        def update() -> dict[str, Any]:
            provider = providers.update(federation.box, found(), given)
            record("provider.updated", provider.id)
            return providers.as_dict(provider)

        updated = services.db.call(update)
        state = "enabled" if updated["enabled"] else "disabled"
        _emit(args, updated, f"updated provider {updated['name']} ({state})")


def cmd_purge(args: argparse.Namespace, settings: Settings) -> None:
    from authserver.maintenance import purge_expired

    services = _services(settings)
    counts = services.db.call(purge_expired)
    if args.json:
        print(json.dumps(counts))
    else:
        print(", ".join(f"{name}: {count}" for name, count in counts.items()) or "nothing to purge")


def _positive_int(value: str) -> int:
    if not (value.isascii() and value.isdigit() and 0 < int(value) <= 10**9):
        raise argparse.ArgumentTypeError("must be a whole number from 1 to 1000000000")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="authserver", description="OAuth 2.1 / OpenID Connect authorization server."
    )
    parser.add_argument("--version", action="version", version=f"authserver {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        group: Any, name: str, handler: Callable[..., None], help_text: str
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    def create_command(
        group: Any, noun: str, noun_help: str, handler: Callable[..., None], help_text: str
    ) -> argparse.ArgumentParser:
        parent = group.add_parser(noun, help=noun_help, description=noun_help)
        actions = parent.add_subparsers(dest=f"{noun}_command", required=True, metavar="ACTION")
        sub = command(actions, "create", handler, help_text)
        sub.add_argument("--json", action="store_true", help="print the record as JSON")
        return sub

    serve = command(commands, "serve", cmd_serve, "Serve the issuer over HTTP.")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--reload", action="store_true", help="restart on code changes (dev)")

    command(commands, "migrate", cmd_migrate, "Apply database migrations (alembic upgrade head).")

    keys = commands.add_parser("keys", help="Manage signing keys.", description="Signing keys.")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    for name, help_text in (
        ("list", "List the keys."),
        ("rotate", "Add a new signing key."),
        ("retire", "Stop signing with a key."),
    ):
        sub = command(key_commands, name, cmd_keys, help_text)
        sub.add_argument("--json", action="store_true", help="print JSON")
        if name == "rotate":
            sub.add_argument("--alg", choices=["RS256", "ES256", "EdDSA"], default="RS256")
        if name == "retire":
            sub.add_argument("kid")

    users_create = create_command(
        commands, "users", "Manage users.", cmd_users_create, "Create a user."
    )
    users_create.add_argument("--email", required=True)
    users_create.add_argument("--name", default="")
    users_create.add_argument("--admin", action="store_true", help="may hold the admin scope")
    users_create.add_argument(
        "--verified",
        action="store_true",
        help="mark the email address as verified (you vouch for it; no link is sent)",
    )
    users_create.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )

    clients_create = create_command(
        commands,
        "clients",
        "Manage OAuth clients.",
        cmd_clients_create,
        "Register an OAuth client; prints its secret once.",
    )
    clients_create.add_argument("--name", required=True)
    clients_create.add_argument("--redirect-uri", action="append", default=[])
    clients_create.add_argument("--public", action="store_true", help="no secret (SPA, native)")
    clients_create.add_argument("--grant-type", action="append", default=None)
    clients_create.add_argument("--scope", default="openid profile email offline_access")
    clients_create.add_argument("--auth-method", default=None)
    clients_create.add_argument("--post-logout-redirect-uri", action="append", default=[])
    clients_create.add_argument(
        "--skip-consent", action="store_true", help="first-party: never show consent"
    )
    clients_create.add_argument(
        "--resource-server",
        action="store_true",
        help="an API: may introspect access tokens issued to any client",
    )
    clients_create.add_argument(
        "--require-par",
        action="store_true",
        help="every authorization request must be pushed to /par first (RFC 9126)",
    )
    clients_create.add_argument(
        "--introspection-signed-response-alg",
        default=None,
        help="answer this client's introspection requests as signed JWTs (RFC 9701), e.g. RS256",
    )
    clients_create.add_argument(
        "--backchannel-logout-uri",
        default=None,
        help="OIDC Back-Channel Logout: where ended sessions are POSTed as logout tokens",
    )
    clients_create.add_argument(
        "--backchannel-logout-session-required",
        action="store_true",
        help="the client needs sid in logout tokens (always sent)",
    )
    clients_create.add_argument(
        "--token-exchange-audience",
        action="append",
        default=[],
        help="a registered resource this client may exchange a person's token for (RFC 8693)",
    )
    key_source = clients_create.add_mutually_exclusive_group()
    key_source.add_argument(
        "--jwks-uri", help="private_key_jwt: https URL of the client's public keys"
    )
    key_source.add_argument("--jwks-file", help="private_key_jwt: a JSON file with the public keys")

    resources_group = commands.add_parser(
        "resources",
        help="Manage protected resources (RFC 8707).",
        description="APIs that access tokens may be issued for.",
    )
    resource_commands = resources_group.add_subparsers(
        dest="resources_command", required=True, metavar="ACTION"
    )
    resources_create = command(
        resource_commands, "create", cmd_resources, "Register a protected resource."
    )
    resources_create.add_argument("--uri", required=True, help="the resource indicator")
    resources_create.add_argument(
        "--scope", action="append", required=True, help="a scope it accepts (repeat for more)"
    )
    resources_create.add_argument("--name", default=None)
    resources_create.add_argument(
        "--client-id", default=None, help="the resource-server client that introspects for it"
    )
    resources_list = command(resource_commands, "list", cmd_resources, "List the resources.")
    resources_delete = command(
        resource_commands, "delete", cmd_resources, "Delete a resource (by id or URI)."
    )
    resources_delete.add_argument("resource", metavar="ID_OR_URI")
    for sub in (resources_create, resources_list, resources_delete):
        sub.add_argument("--json", action="store_true", help="print JSON")

    providers_group = commands.add_parser(
        "providers",
        help="Manage upstream identity providers (sign in with OpenID Connect or GitHub).",
        description="Upstream identity providers people may sign in with.",
    )
    provider_commands = providers_group.add_subparsers(
        dest="providers_command", required=True, metavar="ACTION"
    )
    providers_create = command(
        provider_commands, "create", cmd_providers, "Add a provider (OIDC: discovered)."
    )
    providers_create.add_argument("--kind", choices=["oidc", "github"], required=True)
    providers_create.add_argument("--issuer", default=None, help="OpenID Connect issuer URL")
    providers_update = command(
        provider_commands, "update", cmd_providers, "Change a provider (by id or name)."
    )
    providers_update.add_argument("provider", metavar="ID_OR_NAME")
    for sub in (providers_create, providers_update):
        sub.add_argument("--name", required=sub is providers_create)
        sub.add_argument("--client-id", required=sub is providers_create)
        sub.add_argument(
            "--client-secret-stdin",
            action="store_true",
            help="read the client secret from standard input (stored encrypted)",
        )
        sub.add_argument(
            "--domain",
            action="append",
            default=None,
            help="an email domain it is authoritative for (repeat for more)",
        )
        sub.add_argument(
            "--jit",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="create accounts just in time",
        )
        sub.add_argument(
            "--trust-verified-emails",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="link any verified address to the account that has it",
        )
        sub.add_argument("--organization", default=None, help="organization id its people join")
        sub.add_argument("--default-role", choices=["member", "admin"], default=None)
        sub.add_argument("--scopes", default=None, help="scopes to ask the provider for")
    providers_list = command(provider_commands, "list", cmd_providers, "List the providers.")
    extra = []
    for name, help_text in (
        ("enable", "Show a provider on the sign-in page again."),
        ("disable", "Stop signing in with a provider (links are kept)."),
        ("delete", "Delete a provider and its links (accounts stay)."),
    ):
        sub = command(provider_commands, name, cmd_providers, help_text)
        sub.add_argument("provider", metavar="ID_OR_NAME")
        extra.append(sub)
    for sub in (providers_create, providers_update, providers_list, *extra):
        sub.add_argument("--json", action="store_true", help="print JSON")

    orgs_create = create_command(
        commands, "orgs", "Manage organizations.", cmd_orgs_create, "Create an organization."
    )
    orgs_create.add_argument("--name", required=True)
    orgs_create.add_argument("--owner", required=True, metavar="EMAIL")

    tokens_create = create_command(
        commands,
        "registration-tokens",
        "Manage initial access tokens for dynamic client registration.",
        cmd_registration_tokens_create,
        "Make an initial access token for POST /register; prints it once.",
    )
    tokens_create.add_argument(
        "--expires-in", type=_positive_int, metavar="SECONDS", help="lifetime (default: none)"
    )
    tokens_create.add_argument(
        "--max-uses", type=_positive_int, metavar="N", help="registrations it allows (default: any)"
    )

    purge = command(commands, "purge", cmd_purge, "Delete expired codes, tokens and sessions.")
    purge.add_argument("--json", action="store_true", help="print the counts as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        args.handler(args, settings)
    except ConfigError as exc:
        print(f"authserver: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyStoreError as exc:
        print(f"authserver: key store error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (CliError, AppError) as exc:
        print(f"authserver: {exc}", file=sys.stderr)
        return exc.status if isinstance(exc, CliError) else EXIT_REFUSED
    except OperationalError as exc:
        reason = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
        print(f"authserver: database error: {reason}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
