"""Settings: parsed from the environment and .env, frozen, one clear error per bad value."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from authserver.settings import ConfigError, Settings, documented_settings


def test_defaults_are_the_laptop_setup() -> None:
    settings = Settings.from_env({}, env_file=None)
    assert settings.issuer == "http://127.0.0.1:8000"
    assert settings.database_url == "sqlite:///authserver.db"
    assert settings.keys_dir == Path("keys")
    assert settings.secret_key is None
    assert settings.code_ttl == 60
    assert settings.registration == "open"
    assert settings.registration_rate_per_ip == 20


def test_client_metadata_settings() -> None:
    settings = Settings.from_env(
        {
            "AUTHSERVER_CLIENT_METADATA_DOCUMENTS": "off",
            "AUTHSERVER_CLIENT_METADATA_HOSTS": "mcp.example.org, 127.0.0.1:8443,[::1]:9443",
        },
        env_file=None,
    )
    assert settings.client_metadata_documents is False
    assert settings.client_metadata_hosts == ("mcp.example.org", "127.0.0.1:8443", "[::1]:9443")
    assert Settings.from_env({}, env_file=None).client_metadata_documents is True


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({}, env_file=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.issuer = "https://evil.example"  # type: ignore[misc]


def test_environment_overrides_dotenv(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("AUTHSERVER_ISSUER=https://from-file.example\nAUTHSERVER_CODE_TTL=30\n")
    settings = Settings.from_env({"AUTHSERVER_CODE_TTL": "45"}, env_file=env_file)
    assert settings.issuer == "https://from-file.example"
    assert settings.code_ttl == 45


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("AUTHSERVER_ISSUER", "ftp://x", "https"),
        ("AUTHSERVER_ISSUER", "http://id.example.com", "https"),
        ("AUTHSERVER_ISSUER", "https://id.example.com/?q=1", "query"),
        ("AUTHSERVER_DATABASE_URL", "not a url", "SQLAlchemy"),
        ("AUTHSERVER_DATABASE_URL", "mysql://x/y", "sqlite"),
        ("AUTHSERVER_SECRET_KEY", "short", "32 bytes"),
        ("AUTHSERVER_REDIS_URL", "http://x", "redis"),
        ("AUTHSERVER_CODE_TTL", "soon", "whole number"),
        ("AUTHSERVER_CODE_TTL", "-5", "greater than zero"),
        ("AUTHSERVER_SIGNUP_ENABLED", "perhaps", "true or false"),
        ("AUTHSERVER_LOG_FORMAT", "xml", "one of"),
        ("AUTHSERVER_CLIENT_METADATA_HOSTS", "https://a.example", "host"),
        ("AUTHSERVER_CLIENT_METADATA_HOSTS", "a.example,b.example:99999", "host:port"),
        ("AUTHSERVER_CLIENT_METADATA_DOCUMENTS", "maybe", "true or false"),
        ("AUTHSERVER_REGISTRATION", "true", "open, token, closed"),
        ("AUTHSERVER_REGISTRATION_RATE_PER_IP", "0", "greater than zero"),
    ],
)
def test_invalid_value_names_the_variable(variable: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value}, env_file=None)
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: ")
    assert problem in str(caught.value)


def test_loopback_issuers_may_use_http() -> None:
    for issuer in ("http://localhost:8000", "http://127.0.0.1:9000", "http://[::1]:8000"):
        assert Settings.from_env({"AUTHSERVER_ISSUER": issuer}, env_file=None).issuer == issuer


def test_every_setting_is_documented() -> None:
    rows = documented_settings()
    assert {name for name, _, _ in rows} >= {"AUTHSERVER_ISSUER", "AUTHSERVER_DATABASE_URL"}
    assert all(doc for _, _, doc in rows)


def test_serve_with_a_bad_issuer_exits_2_with_one_line(tmp_path: Path) -> None:
    """The issue's check: `AUTHSERVER_ISSUER=ftp://x authserver serve` exits 2, one line."""
    result = subprocess.run(
        [sys.executable, "-m", "authserver.cli", "serve"],
        env={"AUTHSERVER_ISSUER": "ftp://x", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "AUTHSERVER_ISSUER" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "keys").exists()


def test_the_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [name for name, _, _ in documented_settings() if f"`{name}`" not in readme]
    assert missing == []


def test_the_old_registration_switch_is_gone() -> None:
    """AUTHSERVER_REGISTRATION replaced AUTHSERVER_REGISTRATION_OPEN."""
    names = {name for name, _, _ in documented_settings()}
    assert "AUTHSERVER_REGISTRATION" in names
    assert "AUTHSERVER_REGISTRATION_OPEN" not in names
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "AUTHSERVER_REGISTRATION_OPEN" not in readme
