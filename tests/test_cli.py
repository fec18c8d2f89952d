"""The `authserver` command line, run in-process against a migrated SQLite file."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
from sqlalchemy import create_engine, text

from authserver.cli import main


@pytest.fixture
def env(tmp_path: Path, keys_template: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with its own database and keys; returns the database file."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(keys_template, tmp_path / "keys")
    for name in list(os.environ):
        if name.startswith("AUTHSERVER_"):
            monkeypatch.delenv(name)
    database = tmp_path / "cli.db"
    monkeypatch.setenv("AUTHSERVER_DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setenv("AUTHSERVER_PASSWORD_TIME_COST", "1")
    monkeypatch.setenv("AUTHSERVER_PASSWORD_MEMORY_COST", "8")
    assert main(["migrate"]) == 0
    return database


def run(
    args: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stdin: str = "",
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    status = main(args)
    out, err = capsys.readouterr()
    return status, out, err


def query(database: Path, sql: str) -> list[tuple]:
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as connection:
        rows = [tuple(row) for row in connection.execute(text(sql))]
    engine.dispose()
    return rows


def test_users_create_prints_the_record(env: Path, capsys, monkeypatch) -> None:
    status, out, _ = run(
        [
            "users",
            "create",
            "--email",
            "Ada@Example.com",
            "--name",
            "Ada",
            "--admin",
            "--password-stdin",
            "--json",
        ],
        capsys,
        monkeypatch,
        stdin="a long enough password\n",
    )
    assert status == 0
    record = json.loads(out)
    assert record["email"] == "ada@example.com"
    assert record["is_admin"] is True
    assert "password" not in out
    [(stored,)] = query(env, "SELECT password_hash FROM users")
    assert stored.startswith("$argon2id$")


def test_duplicate_email_is_one_line_and_exit_1(env: Path, capsys, monkeypatch) -> None:
    args = ["users", "create", "--email", "a@example.com", "--password-stdin"]
    assert run(args, capsys, monkeypatch, stdin="amber falcon ledger one\n")[0] == 0
    status, _, err = run(
        ["users", "create", "--email", "A@example.com", "--password-stdin"],
        capsys,
        monkeypatch,
        stdin="amber falcon ledger two\n",
    )
    assert status == 1
    assert err.strip().count("\n") == 0
    assert "already exists" in err


def test_short_password_is_refused(env: Path, capsys, monkeypatch) -> None:
    status, _, err = run(
        ["users", "create", "--email", "a@example.com", "--password-stdin"],
        capsys,
        monkeypatch,
        stdin="short\n",
    )
    assert status == 1
    assert "at least 8" in err


@pytest.mark.parametrize("password", ["password", "12345678", "a@example.com"])
def test_a_common_or_guessable_password_is_refused(
    env: Path, capsys, monkeypatch, password: str
) -> None:
    """The one password policy holds for operators too (no override: an account an operator
    made is guessed the same way as any other)."""
    status, _, err = run(
        ["users", "create", "--email", "a@example.com", "--password-stdin"],
        capsys,
        monkeypatch,
        stdin=password + "\n",
    )
    assert status == 1
    assert "too common or too easy to guess" in err


def test_clients_create_prints_the_secret_once_and_stores_only_a_hash(
    env: Path, capsys, monkeypatch
) -> None:
    status, out, _ = run(
        [
            "clients",
            "create",
            "--name",
            "Web",
            "--redirect-uri",
            "https://app.example.com/cb",
            "--post-logout-redirect-uri",
            "https://app.example.com/",
            "--json",
        ],
        capsys,
        monkeypatch,
    )
    assert status == 0
    record = json.loads(out)
    secret = record["client_secret"]
    assert len(secret) >= 43
    assert record["token_endpoint_auth_method"] == "client_secret_basic"
    rows = query(env, "SELECT * FROM clients")
    assert len(rows) == 1
    flat = json.dumps([list(map(str, row)) for row in rows])
    assert secret not in flat
    [(digest,)] = query(env, "SELECT secret_digest FROM clients")
    assert len(digest) == 64


def test_public_client_has_no_secret(env: Path, capsys, monkeypatch) -> None:
    status, out, _ = run(
        [
            "clients",
            "create",
            "--name",
            "CLI",
            "--public",
            "--redirect-uri",
            "http://127.0.0.1/callback",
            "--json",
        ],
        capsys,
        monkeypatch,
    )
    assert status == 0
    record = json.loads(out)
    assert "client_secret" not in record
    assert record["token_endpoint_auth_method"] == "none"


def test_clients_create_registers_a_resource_server(env: Path, capsys, monkeypatch) -> None:
    args = ["clients", "create", "--name", "Photos API", "--grant-type", "client_credentials"]
    status, out, _ = run([*args, "--resource-server", "--json"], capsys, monkeypatch)
    assert status == 0
    record = json.loads(out)
    assert record["resource_server"] is True
    assert query(env, "SELECT resource_server FROM clients") == [(True,)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--redirect-uri", "https://app.example.com/cb#frag"], "redirect URI"),
        (["--redirect-uri", "javascript:alert(1)"], "redirect URI"),
        (["--redirect-uri", "http://app.example.com/cb"], "loopback"),
        (["--redirect-uri", "https://app/cb", "--grant-type", "password"], "grant type"),
        (["--public", "--grant-type", "client_credentials"], "public client"),
        (
            ["--public", "--redirect-uri", "http://127.0.0.1/cb", "--resource-server"],
            "resource server",
        ),
        (["--redirect-uri", "https://app/cb", "--grant-type", "urn:x:device_code"], "grant type"),
        ([], "at least one redirect URI"),
        (
            ["--redirect-uri", "https://app.example.com/cb", "--auth-method", "private_key_jwt"],
            "not supported yet",
        ),
    ],
)
def test_clients_create_refuses_bad_registrations(
    env: Path, capsys, monkeypatch, extra: list[str], message: str
) -> None:
    status, _, err = run(["clients", "create", "--name", "Bad", *extra], capsys, monkeypatch)
    assert status == 1
    assert message in err
    assert err.strip().count("\n") == 0
    assert query(env, "SELECT COUNT(*) FROM clients") == [(0,)]


def test_orgs_create(env: Path, capsys, monkeypatch) -> None:
    run(
        ["users", "create", "--email", "o@example.com", "--password-stdin"],
        capsys,
        monkeypatch,
        stdin="owner velvet quarry lantern\n",
    )
    status, out, _ = run(
        ["orgs", "create", "--name", "Acme", "--owner", "o@example.com", "--json"],
        capsys,
        monkeypatch,
    )
    assert status == 0
    record = json.loads(out)
    assert record["name"] == "Acme"
    assert query(env, "SELECT role FROM memberships") == [("owner",)]
    assert (
        run(
            ["orgs", "create", "--name", "X", "--owner", "nobody@example.com"], capsys, monkeypatch
        )[0]
        == 1
    )


def test_keys_rotate_adds_a_key_that_the_jwks_lists(env: Path, capsys, monkeypatch) -> None:
    status, out, _ = run(["keys", "list", "--json"], capsys, monkeypatch)
    before = {key["kid"] for key in json.loads(out)}
    status, out, _ = run(["keys", "rotate", "--alg", "RS256", "--json"], capsys, monkeypatch)
    assert status == 0
    new_kid = json.loads(out)["kid"]
    assert new_kid not in before
    from authserver.app import open_keystore
    from authserver.settings import Settings

    published = {key["kid"] for key in open_keystore(Settings.from_env()).public_jwks()["keys"]}
    assert published == before | {new_kid}
    status, _, err = run(["keys", "retire", "no-such-kid"], capsys, monkeypatch)
    assert status == 2
    assert "no-such-kid" in err


def test_purge_reports_counts(env: Path, capsys, monkeypatch) -> None:
    status, out, _ = run(["purge", "--json"], capsys, monkeypatch)
    assert status == 0
    assert set(json.loads(out)) >= {"authorization_codes", "refresh_tokens", "login_sessions"}


def test_help_for_every_command(capsys) -> None:
    for args in (
        ["--help"],
        ["serve", "--help"],
        ["keys", "rotate", "--help"],
        ["users", "create", "--help"],
        ["clients", "create", "--help"],
        ["orgs", "create", "--help"],
        ["purge", "--help"],
        ["migrate", "--help"],
    ):
        with pytest.raises(SystemExit) as exited:
            main(args)
        assert exited.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_serve_refuses_an_unmigrated_database(tmp_path: Path, monkeypatch, capsys) -> None:
    """SECURITY.md L96: a schema that does not match stops start-up."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTHSERVER_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    assert main(["serve"]) == 1
    assert "authserver migrate" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(folder: Path, port: int) -> subprocess.Popen[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUTHSERVER_")},
        "AUTHSERVER_DATABASE_URL": f"sqlite:///{folder / 'serve.db'}",
        "AUTHSERVER_ISSUER": f"http://127.0.0.1:{port}",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "authserver.cli", "serve", "--port", str(port)],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until_up(base: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("server did not start")


def test_a_real_server_restarts_with_the_same_keys(tmp_path: Path) -> None:
    """SECURITY.md L92/L93: first start makes keys; a restart loads them (same kids)."""
    migrate_env = {**os.environ, "AUTHSERVER_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}"}
    subprocess.run(
        [sys.executable, "-m", "authserver.cli", "migrate"],
        cwd=tmp_path,
        env=migrate_env,
        check=True,
        capture_output=True,
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    kids = []
    for _ in range(2):
        process = serve(tmp_path, port)
        try:
            wait_until_up(base, process)
            discovery = httpx.get(f"{base}/.well-known/openid-configuration").json()
            assert discovery["issuer"] == base
            jwks = httpx.get(f"{base}/jwks.json").json()
            jwt.PyJWKSet.from_dict(jwks)
            kids.append(sorted(key["kid"] for key in jwks["keys"]))
        finally:
            process.terminate()
            process.communicate(timeout=20)
    assert kids[0] == kids[1]
    assert len(kids[0]) == 2
    assert (tmp_path / "keys" / "secret.key").stat().st_mode & 0o777 == 0o600


def test_keys_work_the_same_in_the_database_store(env: Path, capsys, monkeypatch) -> None:
    """AUTHSERVER_KEYS_STORE=database: no folder is read or written; a wrong passphrase is
    one line and exit 2, and nothing is made in its place (docs/security.md L92)."""
    shutil.rmtree("keys")
    monkeypatch.setenv("AUTHSERVER_KEYS_STORE", "database")
    status, _, err = run(["keys", "list"], capsys, monkeypatch)
    assert (status, err.strip()) == (
        2,
        "authserver: configuration error: AUTHSERVER_KEYS_PASSPHRASE: is required with "
        "AUTHSERVER_KEYS_STORE=database",
    )
    monkeypatch.setenv("AUTHSERVER_KEYS_PASSPHRASE", "the right passphrase")
    status, out, _ = run(["keys", "list", "--json"], capsys, monkeypatch)
    assert status == 0
    first = json.loads(out)
    assert sorted(key["alg"] for key in first) == ["ES256", "RS256"]
    status, out, _ = run(["keys", "rotate", "--alg", "ES256", "--json"], capsys, monkeypatch)
    assert status == 0
    new = json.loads(out)["kid"]
    status, out, _ = run(["keys", "retire", new, "--json"], capsys, monkeypatch)
    assert (status, json.loads(out)["status"]) == (0, "retired")
    assert not Path("keys").exists()
    assert len(query(env, "SELECT kid FROM signing_keys")) == 3

    monkeypatch.setenv("AUTHSERVER_KEYS_PASSPHRASE", "a wrong passphrase")
    status, _, err = run(["keys", "list"], capsys, monkeypatch)
    assert status == 2
    assert "cannot be decrypted with the configured passphrase" in err
    assert len(err.strip().splitlines()) == 1
    assert len(query(env, "SELECT kid FROM signing_keys")) == 3
