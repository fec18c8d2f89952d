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
from importlib import metadata
from pathlib import Path

import httpx
import jwt
import pytest
import respx
from sqlalchemy import create_engine, text

from authserver.cli import default_issuer, main


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


def test_clients_create_gives_a_service_a_token_exchange_policy(
    env: Path, capsys, monkeypatch
) -> None:
    args = ["clients", "create", "--name", "Albums API", "--grant-type", "client_credentials"]
    policy = ["--token-exchange-audience", "https://printing.example.com"]
    status, _, err = run([*args, *policy], capsys, monkeypatch)
    assert status != 0
    assert "not known" in err
    printing = ["resources", "create", "--uri", "https://printing.example.com", "--scope", "print"]
    assert run(printing, capsys, monkeypatch)[0] == 0
    status, out, _ = run([*args, *policy, "--json"], capsys, monkeypatch)
    assert status == 0, out
    assert json.loads(out)["token_exchange_audiences"] == ["https://printing.example.com"]
    public = ["clients", "create", "--name", "App", "--public", "--redirect-uri"]
    status, _, err = run([*public, "http://127.0.0.1/cb", *policy], capsys, monkeypatch)
    assert status != 0
    assert "authenticates" in err


def test_clients_create_registers_a_device_client(env: Path, capsys, monkeypatch) -> None:
    device_grant = "urn:ietf:params:oauth:grant-type:device_code"
    args = ["clients", "create", "--name", "TV", "--public", "--grant-type", device_grant]
    status, out, _ = run([*args, "--json"], capsys, monkeypatch)
    assert status == 0, out
    assert json.loads(out)["grant_types"] == [device_grant]


def test_clients_create_requires_par_and_signs_introspection(
    env: Path, capsys, monkeypatch
) -> None:
    args = ["clients", "create", "--name", "Strict", "--redirect-uri", "https://a.example/cb"]
    flags = ["--require-par", "--introspection-signed-response-alg", "ES256", "--json"]
    status, out, _ = run([*args, *flags], capsys, monkeypatch)
    assert status == 0, out
    record = json.loads(out)
    assert record["require_pushed_authorization_requests"] is True
    assert record["introspection_signed_response_alg"] == "ES256"
    assert query(
        env,
        "SELECT require_pushed_authorization_requests, introspection_signed_response_alg "
        "FROM clients",
    ) == [(True, "ES256")]


def test_clients_create_registers_a_back_channel_logout_uri(env: Path, capsys, monkeypatch) -> None:
    args = ["clients", "create", "--name", "Listener", "--redirect-uri", "https://a.example/cb"]
    uri = "https://a.example/backchannel-logout"
    flags = ["--backchannel-logout-uri", uri, "--backchannel-logout-session-required"]
    status, out, _ = run([*args, *flags, "--json"], capsys, monkeypatch)
    assert status == 0, out
    record = json.loads(out)
    assert record["backchannel_logout_uri"] == uri
    assert record["backchannel_logout_session_required"] is True
    refused = ["--backchannel-logout-uri", "http://a.example/logout"]
    status, _, err = run([*args, *refused], capsys, monkeypatch)
    assert status != 0
    assert "backchannel_logout_uri" in err
    status, _, err = run([*args, "--backchannel-logout-session-required"], capsys, monkeypatch)
    assert status != 0
    assert "needs a backchannel_logout_uri" in err
    assert query(env, "SELECT COUNT(*) FROM clients") == [(1,)]


PUBLIC_JWK = {
    "kty": "EC",
    "crv": "P-256",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
}


@pytest.mark.parametrize("source", ["--jwks-uri", "--jwks-file"])
def test_clients_create_registers_a_private_key_jwt_client(
    env: Path, capsys, monkeypatch, tmp_path: Path, source: str
) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [PUBLIC_JWK]}))
    value = "https://billing.example.com/jwks.json" if source == "--jwks-uri" else str(keys)
    args = ["clients", "create", "--name", "Billing", "--grant-type", "client_credentials"]
    status, out, _ = run(
        [*args, "--auth-method", "private_key_jwt", source, value, "--json"], capsys, monkeypatch
    )
    assert status == 0
    record = json.loads(out)
    assert "client_secret" not in record
    if source == "--jwks-uri":
        assert record["jwks_uri"] == value
    else:
        assert record["jwks"] == {"keys": [PUBLIC_JWK]}
    assert query(env, "SELECT secret_digest FROM clients") == [(None,)]


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
            "jwks or jwks_uri",
        ),
        (
            [
                "--redirect-uri",
                "https://a.example/cb",
                "--auth-method",
                "private_key_jwt",
                "--jwks-uri",
                "http://a.example/jwks",
            ],
            "https",
        ),
        (
            ["--redirect-uri", "https://a.example/cb", "--jwks-uri", "https://a.example/jwks"],
            "only for the private_key_jwt",
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


def test_registration_tokens_create_prints_the_token_once_and_stores_a_digest(
    env: Path, capsys, monkeypatch
) -> None:
    args = ["registration-tokens", "create", "--expires-in", "3600", "--max-uses", "2", "--json"]
    status, out, _ = run(args, capsys, monkeypatch)
    assert status == 0
    record = json.loads(out)
    assert len(record["token"]) >= 43
    assert record["max_uses"] == 2
    assert record["uses"] == 0
    assert record["expires_at"] is not None
    rows = query(env, "SELECT * FROM initial_access_tokens")
    assert len(rows) == 1
    assert record["token"] not in json.dumps([list(map(str, row)) for row in rows])
    [(digest, max_uses)] = query(env, "SELECT digest, max_uses FROM initial_access_tokens")
    assert (len(digest), max_uses) == (64, 2)

    status, out, _ = run(["registration-tokens", "create"], capsys, monkeypatch)
    assert status == 0
    assert "shown once" in out
    assert "expires: never" in out
    assert "AUTHSERVER_REGISTRATION is 'open'" in out
    assert query(env, "SELECT COUNT(*) FROM initial_access_tokens") == [(2,)]


@pytest.mark.parametrize("value", ["0", "-5", "ten", "1e3", "99999999999"])
def test_registration_tokens_refuse_bad_numbers(env: Path, capsys, monkeypatch, value: str) -> None:
    for option in ("--expires-in", "--max-uses"):
        with pytest.raises(SystemExit) as exited:
            run(["registration-tokens", "create", option, value], capsys, monkeypatch)
        assert exited.value.code == 2
        assert option in capsys.readouterr().err
    assert query(env, "SELECT COUNT(*) FROM initial_access_tokens") == [(0,)]


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
        ["registration-tokens", "create", "--help"],
        ["purge", "--help"],
        ["migrate", "--help"],
    ):
        with pytest.raises(SystemExit) as exited:
            main(args)
        assert exited.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_serve_refuses_an_unmigrated_database(tmp_path: Path, monkeypatch, capsys) -> None:
    """docs/security.md L96: a schema that does not match stops start-up."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTHSERVER_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    assert main(["serve"]) == 1
    assert "authserver migrate" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(folder: Path, port: int, *, issuer: bool = True) -> subprocess.Popen[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUTHSERVER_")},
        "AUTHSERVER_DATABASE_URL": f"sqlite:///{folder / 'serve.db'}",
    }
    if issuer:
        env["AUTHSERVER_ISSUER"] = f"http://127.0.0.1:{port}"
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
    """docs/security.md L92/L93: first start makes keys; a restart loads them (same kids)."""
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


def test_without_a_configured_issuer_discovery_points_where_the_server_listens(
    tmp_path: Path,
) -> None:
    """`tasks.py run --port 9000` without AUTHSERVER_ISSUER: the issuer is the address the
    server listens on, and the first start says which keys it made."""
    migrate_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUTHSERVER_")},
        "AUTHSERVER_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
    }
    subprocess.run(
        [sys.executable, "-m", "authserver.cli", "migrate"],
        cwd=tmp_path, env=migrate_env, check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = serve(tmp_path, port, issuer=False)
    try:
        wait_until_up(base, process)
        discovery = httpx.get(f"{base}/.well-known/openid-configuration").json()
        assert discovery["issuer"] == base
        assert discovery["token_endpoint"] == f"{base}/token"
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
    assert f"serving issuer {base}" in output
    assert "created signing keys in keys/: RS256 " in output


@pytest.mark.parametrize(
    ("host", "issuer"),
    [
        ("127.0.0.1", "http://127.0.0.1:9000"),
        ("localhost", "http://localhost:9000"),
        ("0.0.0.0", "http://127.0.0.1:9000"),  # noqa: S104
        ("::1", "http://[::1]:9000"),
    ],
)
def test_the_default_issuer_follows_host_and_port(host: str, issuer: str) -> None:
    assert default_issuer(host, 9000) == issuer


def test_serving_elsewhere_without_an_issuer_is_one_line_and_exit_2(
    env: Path, capsys, monkeypatch
) -> None:
    status, _, err = run(["serve", "--host", "192.0.2.7"], capsys, monkeypatch)
    assert status == 2
    assert err == (
        "authserver: set AUTHSERVER_ISSUER to the https URL clients reach when serving on "
        "192.0.2.7\n"
    )


def test_migrate_says_what_it_did(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTHSERVER_DATABASE_URL", f"sqlite:///{tmp_path / 'm.db'}")
    status, out, _ = run(["migrate"], capsys, monkeypatch)
    assert status == 0
    assert out.startswith(f"sqlite:///{tmp_path / 'm.db'}: migrated from an empty database to ")
    status, out, _ = run(["migrate"], capsys, monkeypatch)
    assert status == 0
    assert "already at revision" in out
    assert "nothing to do" in out


def test_version_is_the_installed_package_version(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"authserver {metadata.version('authserver')}\n"


def test_users_create_verified_marks_the_address_verified(env: Path, capsys, monkeypatch) -> None:
    for email, extra in (("v@example.com", ["--verified"]), ("u@example.com", [])):
        status, out, _ = run(
            ["users", "create", "--email", email, "--password-stdin", "--json", *extra],
            capsys, monkeypatch, stdin="a long enough password\n",
        )  # fmt: skip
        assert status == 0
        assert json.loads(out)["email_verified"] is bool(extra)
    assert query(env, "SELECT email, email_verified FROM users ORDER BY email") == [
        ("u@example.com", 0),
        ("v@example.com", 1),
    ]


def test_resources_create_list_and_delete(env: Path, capsys, monkeypatch) -> None:
    uri = "https://calendar.example.com"
    args = ["resources", "create", "--uri", uri, "--scope", "cal:read", "--scope", "cal:write"]
    status, out, _ = run([*args, "--json"], capsys, monkeypatch)
    assert status == 0
    record = json.loads(out)
    assert (record["uri"], record["scopes"]) == (uri, ["cal:read", "cal:write"])
    assert query(env, "SELECT uri, scope FROM resources") == [(uri, "cal:read cal:write")]
    status, out, _ = run(["resources", "list"], capsys, monkeypatch)
    assert status == 0
    assert uri in out
    status, _, err = run(["resources", "create", "--uri", uri, "--scope", "x"], capsys, monkeypatch)
    assert status == 1
    assert "exists already" in err
    status, _, err = run(
        ["resources", "create", "--uri", "http://calendar.example.com", "--scope", "x"],
        capsys,
        monkeypatch,
    )
    assert status == 1
    assert "loopback" in err
    assert run(["resources", "delete", uri], capsys, monkeypatch)[0] == 0
    status, out, _ = run(["resources", "list", "--json"], capsys, monkeypatch)
    assert json.loads(out) == []
    assert run(["resources", "delete", uri], capsys, monkeypatch)[0] == 1


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


def test_providers_are_created_listed_disabled_and_deleted(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.federation.upstream import CLIENT_ID, CLIENT_SECRET, UPSTREAM, FakeOidc

    with respx.mock(assert_all_called=False) as router:
        FakeOidc().install(router)
        status, out, _ = run(
            ["providers", "create", "--kind", "oidc", "--name", "Acme SSO", "--issuer", UPSTREAM,
             "--client-id", CLIENT_ID, "--client-secret-stdin", "--domain", "acme.example",
             "--jit", "--json"],
            capsys, monkeypatch, stdin=CLIENT_SECRET + "\n",
        )  # fmt: skip
    assert status == 0
    created = json.loads(out)
    assert created["jwks_uri"] == f"{UPSTREAM}/jwks"
    assert created["jit"] is True
    [(stored,)] = query(env, "SELECT client_secret FROM identity_providers")
    assert CLIENT_SECRET not in stored
    assert run(["providers", "disable", "Acme SSO"], capsys, monkeypatch)[1].endswith(
        "(disabled)\n"
    )
    assert "Acme SSO  oidc  disabled" in run(["providers", "list"], capsys, monkeypatch)[1]
    assert run(["providers", "delete", created["id"]], capsys, monkeypatch)[0] == 0
    status, _, err = run(["providers", "delete", created["id"]], capsys, monkeypatch)
    assert status != 0
    assert "no provider" in err
