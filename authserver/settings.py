"""Configuration: read once from the environment (and an optional `.env`), validated, frozen.

Every field maps to one `AUTHSERVER_*` variable. A bad value raises `ConfigError` naming the
variable, so start-up can stop with one line instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values

from authserver.fetch import parse_trusted_hosts

PREFIX = "AUTHSERVER_"
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


class ConfigError(ValueError):
    """One invalid setting; `str()` is the line shown to the operator."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


def _issuer(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an absolute https URL")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError("must use https (plain http only for localhost or 127.0.0.1)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must not contain a query, fragment or credentials")
    return value.rstrip("/")


def _database_url(value: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError("is not a SQLAlchemy database URL") from None
    if url.get_backend_name() not in {"sqlite", "postgresql"}:
        raise ValueError("must be a sqlite:// or postgresql+psycopg:// URL")
    return value


def _secret_key(value: str) -> str:
    if len(value.encode()) < 32:
        raise ValueError("must be at least 32 bytes")
    return value


def _redis_url(value: str) -> str:
    if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return value


def _smtp_url(value: str) -> str:
    parts = urlsplit(value)
    try:
        valid = parts.scheme in {"smtp", "smtps"} and bool(parts.hostname) and parts.port != 0
    except ValueError:
        valid = False
    if not valid:
        raise ValueError("must be an smtp://user:pass@host:port or smtps:// URL")
    return value


def _mail_address(value: str) -> str:
    from email.utils import parseaddr

    if any(ord(ch) < 32 for ch in value) or "@" not in parseaddr(value)[1]:
        raise ValueError("must be an address like 'authserver <no-reply@example.com>'")
    return value


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError("must be a whole number") from None
    if number <= 0:
        raise ValueError("must be greater than zero")
    return number


def _non_negative_int(value: str) -> int:
    if value.strip() == "0":
        return 0
    return _positive_int(value)


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _networks(value: str) -> tuple[str, ...]:
    import ipaddress

    entries = tuple(part.strip() for part in value.split(",") if part.strip())
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR range") from None
    return entries


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: str) -> int:
    """Seconds, written as a whole number with an optional unit: `30s`, `15m`, `12h`, `90d`."""
    text = value.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:], 0)
    number = text[:-1] if unit else text
    if not number.isdigit():
        raise ValueError("must be a duration such as 90d, 12h, 30m, 30s or seconds (0: off)")
    return int(number) * (unit or 1)


def _metrics_token(value: str) -> str:
    if len(value) < 16 or not value.isascii() or not value.isprintable() or " " in value:
        raise ValueError("must be at least 16 printable ASCII characters without spaces")
    return value


def _host_list(value: str) -> tuple[str, ...]:
    entries = tuple(entry.strip() for entry in value.split(",") if entry.strip())
    parse_trusted_hosts(entries)
    return entries


def _setting(default: Any, parse: Callable[[str], Any] = str, doc: str = "") -> Any:
    return field(default=default, metadata={"parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """The whole configuration. Defaults are the safe laptop setup (SQLite, keys in `keys/`)."""

    issuer: str = _setting("http://127.0.0.1:8000", _issuer, "issuer identifier")
    database_url: str = _setting("sqlite:///authserver.db", _database_url, "SQLAlchemy URL")
    keys_dir: Path = _setting(Path("keys"), Path, "key store folder")
    keys_store: str = _setting(
        "folder", _choice("folder", "database"), "where signing keys live: folder or database"
    )
    keys_passphrase: str | None = _setting(
        None, str, "encrypts private keys (required with the database key store)"
    )
    secret_key: str | None = _setting(None, _secret_key, "signs cookies; generated if unset")
    redis_url: str | None = _setting(None, _redis_url, "shares rate limits and replay caches")
    log_format: str | None = _setting(None, _choice("text", "json"), "text on a terminal")

    access_token_ttl: int = _setting(600, _positive_int, "access token lifetime, seconds")
    access_token_alg: str = _setting(
        "RS256", _choice("RS256", "ES256"), "signing algorithm of JWT access tokens"
    )
    id_token_ttl: int = _setting(3600, _positive_int, "ID token lifetime, seconds")
    code_ttl: int = _setting(60, _positive_int, "authorization code lifetime, seconds")
    refresh_token_ttl: int = _setting(
        30 * 86400, _positive_int, "refresh token family absolute lifetime, seconds"
    )
    refresh_token_idle_ttl: int = _setting(
        14 * 86400, _positive_int, "a refresh token unused this long expires, seconds"
    )
    refresh_grace_seconds: int = _setting(
        5,
        _non_negative_int,
        "a rotated refresh token presented again within this many "
        "seconds returns the same successor; 0 turns the window off",
    )
    session_idle_ttl: int = _setting(8 * 3600, _positive_int, "browser session idle timeout")
    session_ttl: int = _setting(24 * 3600, _positive_int, "browser session absolute lifetime")
    purge_interval: int = _setting(
        3600, _non_negative_int, "seconds between in-process purges of expired rows; 0 turns it off"
    )
    key_activation_delay: int = _setting(
        0, _non_negative_int, "seconds a rotated key is published before it signs"
    )
    key_rotation_period: int = _setting(
        0, _duration, "automatic key rotation every period (90d, 12h, 30s); 0 turns it off"
    )

    password_time_cost: int = _setting(2, _positive_int, "argon2id iterations")
    password_memory_cost: int = _setting(19456, _positive_int, "argon2id memory, KiB")
    password_parallelism: int = _setting(1, _positive_int, "argon2id lanes")

    signup_enabled: bool = _setting(True, _bool, "self-registration at /signup")
    registration: str = _setting(
        "open",
        _choice("open", "token", "closed"),
        "dynamic client registration at /register: open (anyone), token (an initial "
        "access token from `authserver registration-tokens create`), closed",
    )
    registration_rate_per_ip: int = _setting(
        20, _positive_int, "client registrations per IP per hour at /register"
    )
    login_rate_per_ip: int = _setting(30, _positive_int, "sign-in attempts per IP per minute")
    login_rate_per_account: int = _setting(
        10, _positive_int, "failed sign-ins per account per 15 minutes"
    )
    token_rate_per_client: int = _setting(
        600, _positive_int, "requests per client/min at /token, /revoke, /introspect"
    )

    client_metadata_documents: bool = _setting(
        True, _bool, "clients may identify by the https URL of their metadata document"
    )
    client_metadata_hosts: tuple[str, ...] = _setting(
        (), _host_list, "comma-separated host or host:port; when set, the only metadata hosts"
    )
    trusted_hosts: tuple[str, ...] = _setting(
        (),
        _host_list,
        "comma-separated host or host:port fetched even on a loopback or private address "
        "(upstream identity providers, jwks); plain http only for such a loopback host",
    )

    device_flow: bool = _setting(
        True, _bool, "device authorization grant (RFC 8628) at /device_authorization and /device"
    )
    device_code_ttl: int = _setting(600, _positive_int, "device and user code lifetime, seconds")
    device_poll_interval: int = _setting(
        5, _positive_int, "seconds a device waits between polls of /token"
    )
    device_code_attempts: int = _setting(
        10, _positive_int, "user codes one IP address or person may enter per 15 minutes"
    )
    pushed_authorization_requests: bool = _setting(
        True, _bool, "pushed authorization requests (RFC 9126) at /par"
    )
    par_ttl: int = _setting(60, _positive_int, "lifetime of a pushed request's request_uri, s")
    require_par: bool = _setting(
        False, _bool, "every authorization request must be pushed to /par first"
    )
    dpop: bool = _setting(
        True, _bool, "DPoP (RFC 9449): sender-constrained tokens for clients that send proofs"
    )
    dpop_nonce: bool = _setting(
        False, _bool, "DPoP proofs must carry a server nonce (RFC 9449 section 8)"
    )
    jwt_introspection: bool = _setting(
        True, _bool, "signed introspection responses (RFC 9701) for clients registered for them"
    )
    backchannel_logout: bool = _setting(
        True,
        _bool,
        "OIDC Back-Channel Logout: an ended session is POSTed as a signed logout token to "
        "each client signed in through it that registered a backchannel_logout_uri",
    )
    token_exchange: bool = _setting(
        True,
        _bool,
        "token exchange (RFC 8693) at /token, for clients whose policy names audiences",
    )

    smtp_url: str | None = _setting(None, _smtp_url, "mail server; unset: mail is only logged")
    mail_from: str | None = _setting(None, _mail_address, "From: of mail; no-reply@issuer host")
    email_verify_ttl: int = _setting(86400, _positive_int, "email verification link lifetime, s")
    password_reset_ttl: int = _setting(1800, _positive_int, "password reset link lifetime, s")
    mail_rate_per_ip: int = _setting(
        20, _positive_int, "sign-ups and emailed-link requests per IP per hour"
    )
    mail_rate_per_address: int = _setting(5, _positive_int, "emails to one address per hour")

    trusted_proxies: tuple[str, ...] = _setting(
        (), _networks, "proxies whose X-Forwarded-For is believed; none by default"
    )
    metrics_token: str | None = _setting(
        None, _metrics_token, "when set, /metrics needs Authorization: Bearer <token>"
    )
    require_verified_email: bool = _setting(
        False, _bool, "people sign in only after verifying their email address"
    )
    mfa_required: bool = _setting(
        False, _bool, "everyone with a second factor is asked for it at every sign-in"
    )
    db_pool_size: int = _setting(
        10, _positive_int, "database connections per worker (as many again in overflow)"
    )
    db_pool_timeout: int = _setting(
        5, _positive_int, "seconds a request waits for a database connection before a 503"
    )
    db_statement_timeout: int = _setting(
        10, _non_negative_int, "PostgreSQL cancels a statement running longer (seconds; 0: never)"
    )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
    ) -> Settings:
        """Build settings from `environ` (default `os.environ`) over the values of `env_file`.

        The environment wins over the file, so a deployment can override a checked-in `.env`.
        """
        values: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> Settings:
        kwargs: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            variable = PREFIX + spec.name.upper()
            raw = values.get(variable)
            if raw is None or raw == "":
                continue
            try:
                kwargs[spec.name] = spec.metadata["parse"](raw)
            except ValueError as exc:
                raise ConfigError(variable, str(exc)) from None
        settings = cls(**kwargs)
        if settings.keys_store == "database" and not settings.keys_passphrase:
            raise ConfigError(
                PREFIX + "KEYS_PASSPHRASE", "is required with AUTHSERVER_KEYS_STORE=database"
            )
        period, delay = settings.key_rotation_period, settings.key_activation_delay
        if period and period <= delay:
            raise ConfigError(
                PREFIX + "KEY_ROTATION_PERIOD",
                f"must be longer than AUTHSERVER_KEY_ACTIVATION_DELAY ({delay} s)",
            )
        return settings

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def is_https(self) -> bool:
        return self.issuer.startswith("https://")

    @property
    def api_audience(self) -> str:
        return f"{self.issuer}/api/v1"


def documented_settings() -> list[tuple[str, Any, str]]:
    """(variable, default, meaning) for every setting: the README table is written from this."""
    return [
        (PREFIX + f.name.upper(), f.default, f.metadata["doc"])
        for f in dataclasses.fields(Settings)
    ]
