"""The key store: layout on disk, refusal to regenerate, rotation seen across instances."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import shutil
import stat
import threading
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwt as jose_jwt

from authserver import keystore as keystore_module
from authserver.keystore import JWS_REGISTRY, KeyStore, KeyStoreError

PASSPHRASE = "correct horse battery staple"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def _rfc7638_thumbprint(pem: bytes, passphrase: str | None = None) -> str:
    """RFC 7638 §3 computed from the PEM with cryptography, independently of joserfc."""
    password = passphrase.encode() if passphrase else None
    key = serialization.load_pem_private_key(pem, password=password)
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        members = {"e": _int_b64(numbers.e), "kty": "RSA", "n": _int_b64(numbers.n)}
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        numbers = key.public_key().public_numbers()
        members = {
            "crv": "P-256",
            "kty": "EC",
            "x": _b64(numbers.x.to_bytes(32, "big")),
            "y": _b64(numbers.y.to_bytes(32, "big")),
        }
    else:
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        members = {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _kid(store: KeyStore, alg: str) -> str:
    infos = store.keys()
    return next(info.kid for info in infos if info.alg == alg and info.status == "active")


def _statuses(store: KeyStore) -> dict[str, str]:
    infos = store.keys()
    return {info.kid: info.status for info in infos}


@pytest.fixture(scope="module")
def plain_ring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("plain") / "keys"
    KeyStore(folder).open()
    return folder


@pytest.fixture(scope="module")
def encrypted_ring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("encrypted") / "keys"
    KeyStore(folder, PASSPHRASE).open()
    return folder


@pytest.fixture
def folder(plain_ring: Path, tmp_path: Path) -> Path:
    """A private copy of the module's ring, so tests may change it without generating RSA."""
    copy = tmp_path / "keys"
    shutil.copytree(plain_ring, copy)
    return copy


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The store's notion of now; tests move it by assigning clock[0]."""
    now = [keystore_module._now()]
    monkeypatch.setattr(keystore_module, "_now", lambda: now[0])
    return now


def test_first_open_creates_rs256_and_es256_keys_and_secret(plain_ring: Path) -> None:
    store = KeyStore(plain_ring).open()
    infos = store.keys()
    assert sorted(info.alg for info in infos) == ["ES256", "RS256"]
    for info in infos:
        assert info.status == "active"
        assert info.retired_at is None
        assert info.activates_at == info.created_at

    rsa_pem = (plain_ring / f"{_kid(store, 'RS256')}.pem").read_bytes()
    assert rsa_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    rsa_key = serialization.load_pem_private_key(rsa_pem, password=None)
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    assert rsa_key.key_size == 2048
    ec_key = serialization.load_pem_private_key(
        (plain_ring / f"{_kid(store, 'ES256')}.pem").read_bytes(), password=None
    )
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey)
    assert isinstance(ec_key.curve, ec.SECP256R1)

    secret = store.secret()
    assert len(secret) == 32
    stored = (plain_ring / "secret.key").read_bytes().strip()
    assert base64.urlsafe_b64decode(stored + b"=" * (-len(stored) % 4)) == secret

    assert stat.S_IMODE(plain_ring.stat().st_mode) == 0o700
    names = {p.name for p in plain_ring.iterdir()}
    assert {"keys.json", "secret.key"} <= names
    assert len([n for n in names if n.endswith(".pem")]) == 2
    for path in plain_ring.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    manifest = json.loads((plain_ring / "keys.json").read_text())
    assert {entry["kid"] for entry in manifest} == {info.kid for info in infos}


def test_reopening_keeps_kids_and_secret(plain_ring: Path) -> None:
    first = KeyStore(plain_ring).open()
    before = _snapshot(plain_ring)
    second = KeyStore(plain_ring).open()
    assert second.keys() == first.keys()
    assert second.secret() == first.secret()
    assert _snapshot(plain_ring) == before


@pytest.mark.parametrize(
    ("ring", "passphrase"), [("plain_ring", None), ("encrypted_ring", PASSPHRASE)]
)
def test_kid_is_the_rfc7638_thumbprint(
    ring: str, passphrase: str | None, request: pytest.FixtureRequest
) -> None:
    folder: Path = request.getfixturevalue(ring)
    infos = KeyStore(folder, passphrase).open().keys()
    for info in infos:
        pem = (folder / f"{info.kid}.pem").read_bytes()
        assert info.kid == _rfc7638_thumbprint(pem, passphrase)


def test_passphrase_encrypts_the_private_keys(encrypted_ring: Path) -> None:
    store = KeyStore(encrypted_ring, PASSPHRASE).open()
    infos = store.keys()
    for info in infos:
        pem = (encrypted_ring / f"{info.kid}.pem").read_bytes()
        assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        with pytest.raises(TypeError):
            serialization.load_pem_private_key(pem, password=None)
    token = store.sign({"sub": "alice"})
    assert token.count(".") == 2


@pytest.mark.parametrize(
    ("passphrase", "problem"),
    [(None, "no passphrase is configured"), ("wrong passphrase", "cannot be decrypted")],
)
def test_wrong_or_missing_passphrase_fails_and_leaves_files_untouched(
    encrypted_ring: Path, passphrase: str | None, problem: str
) -> None:
    before = _snapshot(encrypted_ring)
    with pytest.raises(KeyStoreError, match=problem) as raised:
        KeyStore(encrypted_ring, passphrase).open()
    message = str(raised.value)
    assert "\n" not in message
    assert ".pem" in message
    assert str(encrypted_ring) in message
    assert _snapshot(encrypted_ring) == before


def test_passphrase_for_unencrypted_keys_fails(folder: Path) -> None:
    with pytest.raises(KeyStoreError, match="not encrypted but a passphrase is configured"):
        KeyStore(folder, PASSPHRASE).open()


def test_corrupt_pem_fails_without_regenerating(folder: Path) -> None:
    kid = _kid(KeyStore(folder).open(), "RS256")
    pem = folder / f"{kid}.pem"
    pem.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    before = _snapshot(folder)
    with pytest.raises(KeyStoreError, match=rf"{kid}\.pem: is not a readable") as raised:
        KeyStore(folder).open()
    assert "\n" not in str(raised.value)
    assert _snapshot(folder) == before


def test_pem_swapped_for_another_key_fails(folder: Path) -> None:
    store = KeyStore(folder).open()
    rs_kid, es_kid = _kid(store, "RS256"), _kid(store, "ES256")
    shutil.copyfile(folder / f"{es_kid}.pem", folder / f"{rs_kid}.pem")
    with pytest.raises(KeyStoreError, match=rf"{rs_kid}\.pem: does not hold an RSA key"):
        KeyStore(folder).open()


def test_missing_pem_fails(folder: Path) -> None:
    kid = _kid(KeyStore(folder).open(), "ES256")
    (folder / f"{kid}.pem").unlink()
    before = _snapshot(folder)
    with pytest.raises(KeyStoreError, match=rf"{kid}\.pem: missing"):
        KeyStore(folder).open()
    assert _snapshot(folder) == before


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"keys": []}',
        '[{"kid": "abc"}]',
        '[{"kid": "../secret", "alg": "RS256", "status": "active",'
        ' "created_at": 1, "activates_at": 1, "retired_at": null}]',
        '[{"kid": "abc", "alg": "HS256", "status": "active",'
        ' "created_at": 1, "activates_at": 1, "retired_at": null}]',
        '[{"kid": "abc", "alg": "RS256", "status": "retired",'
        ' "created_at": 1, "activates_at": 1, "retired_at": null}]',
        '[{"kid": "abc", "alg": "RS256", "status": "active",'
        ' "created_at": "yesterday", "activates_at": 1, "retired_at": null}]',
    ],
)
def test_malformed_manifest_fails_without_regenerating(folder: Path, content: str) -> None:
    (folder / "keys.json").write_text(content)
    before = _snapshot(folder)
    with pytest.raises(KeyStoreError, match=r"keys\.json") as raised:
        KeyStore(folder).open()
    assert "\n" not in str(raised.value)
    assert _snapshot(folder) == before


def test_missing_manifest_with_key_files_left_fails(folder: Path) -> None:
    (folder / "keys.json").unlink()
    before = _snapshot(folder)
    with pytest.raises(KeyStoreError, match=r"keys\.json: missing or empty but the folder holds"):
        KeyStore(folder).open()
    assert _snapshot(folder) == before


def test_missing_secret_with_existing_ring_is_not_regenerated(folder: Path) -> None:
    (folder / "secret.key").unlink()
    store = KeyStore(folder).open()  # the keys are fine; only the secret is gone
    with pytest.raises(KeyStoreError, match=r"secret\.key: missing"):
        store.secret()
    assert not (folder / "secret.key").exists()


def test_rotate_adds_a_key_and_publishes_both(folder: Path) -> None:
    store = KeyStore(folder).open()
    old = _kid(store, "RS256")
    info = store.rotate()
    assert info.alg == "RS256"
    assert info.status == "active"
    assert info.kid != old
    assert stat.S_IMODE((folder / f"{info.kid}.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "keys.json").stat().st_mode) == 0o600
    assert len(store.keys()) == 3
    published = {key["kid"] for key in store.public_jwks()["keys"]}
    assert {old, info.kid} <= published
    assert store.signing_key().kid == info.kid
    # the manifest replace leaves no temporary files behind
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_second_instance_sees_rotation_and_retirement_without_reopening(folder: Path) -> None:
    first = KeyStore(folder).open()
    second = KeyStore(folder).open()
    old = _kid(second, "ES256")
    assert second.signing_key("ES256").kid == old

    new = first.rotate("ES256")
    assert new.kid in _statuses(second)
    assert new.kid in {key["kid"] for key in second.public_jwks()["keys"]}
    assert second.signing_key("ES256").kid == new.kid
    second.verification_keys().get_by_kid(new.kid)

    first.retire(old)
    assert _statuses(second)[old] == "retired"
    token = second.sign({"sub": "bob"}, alg="ES256")
    assert jwt.get_unverified_header(token)["kid"] == new.kid


def test_activation_delay_publishes_before_signing(folder: Path, clock: list[int]) -> None:
    store = KeyStore(folder, activation_delay=600).open()
    old = _kid(store, "ES256")
    new = store.rotate("ES256")
    assert new.activates_at == clock[0] + 600
    assert new.kid in {key["kid"] for key in store.public_jwks()["keys"]}
    assert store.signing_key("ES256").kid == old

    clock[0] += 599
    assert store.signing_key("ES256").kid == old
    clock[0] += 1
    assert store.signing_key("ES256").kid == new.kid


def test_not_yet_active_key_signs_when_it_is_the_only_one(folder: Path, clock: list[int]) -> None:
    store = KeyStore(folder, activation_delay=600).open()
    old = _kid(store, "ES256")
    new = store.rotate("ES256")
    store.retire(old)
    assert store.signing_key("ES256").kid == new.kid


def test_retire_stops_signing_and_unpublishes_after_retention(
    folder: Path, clock: list[int]
) -> None:
    store = KeyStore(folder, retention=3600).open()
    old = _kid(store, "ES256")
    new = store.rotate("ES256")
    retired = store.retire(old)
    assert retired.status == "retired"
    assert retired.retired_at == clock[0]
    assert store.retire(old) == retired  # retiring again does not extend publication
    assert store.signing_key("ES256").kid == new.kid
    assert old in {key["kid"] for key in store.public_jwks()["keys"]}
    store.verification_keys().get_by_kid(old)

    clock[0] += 3599
    assert old in {key["kid"] for key in store.public_jwks()["keys"]}
    clock[0] += 1
    assert old not in {key["kid"] for key in store.public_jwks()["keys"]}
    assert old not in {key.kid for key in store.verification_keys()}
    assert _statuses(store)[old] == "retired"
    # reopening after the retention window still works: retired keys stay on disk
    assert KeyStore(folder).open().keys() == store.keys()


def test_retiring_the_last_rs256_key_fails(folder: Path) -> None:
    store = KeyStore(folder).open()
    kid = _kid(store, "RS256")
    before = _snapshot(folder)
    with pytest.raises(KeyStoreError, match="last active RS256 key"):
        store.retire(kid)
    with pytest.raises(KeyStoreError, match="no key with kid"):
        store.retire("no-such-kid")
    assert _snapshot(folder) == before
    assert store.signing_key().kid == kid


def test_retiring_the_only_es256_key_is_allowed(folder: Path) -> None:
    store = KeyStore(folder).open()
    store.retire(_kid(store, "ES256"))
    with pytest.raises(KeyStoreError, match="no active ES256 key"):
        store.signing_key("ES256")


def test_rotate_rejects_unknown_algorithms(folder: Path) -> None:
    with pytest.raises(KeyStoreError, match="unsupported signing algorithm"):
        KeyStore(folder).open().rotate("HS256")


def test_eddsa_rotation(folder: Path) -> None:
    store = KeyStore(folder).open()
    info = store.rotate("EdDSA")
    pem = (folder / f"{info.kid}.pem").read_bytes()
    assert info.kid == _rfc7638_thumbprint(pem)
    key = store.signing_key("EdDSA")
    assert key.kid == info.kid
    jwk = next(k for k in store.public_jwks()["keys"] if k["kid"] == info.kid)
    assert jwk["kty"] == "OKP"
    assert jwk["crv"] == "Ed25519"
    assert jwk["alg"] == "EdDSA"


def test_jwks_has_only_public_members_and_unique_kids(folder: Path) -> None:
    store = KeyStore(folder).open()
    store.rotate("ES256")
    store.rotate("EdDSA")
    keys = store.public_jwks()["keys"]
    assert len(keys) == 4
    assert len({key["kid"] for key in keys}) == len(keys)
    for key in keys:
        assert not PRIVATE_MEMBERS & key.keys()
        assert key["use"] == "sig"
        assert key["alg"] in {"RS256", "ES256", "EdDSA"}
    json.dumps(store.public_jwks())  # serialisable as served


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_signed_tokens_verify_with_pyjwt_and_joserfc(folder: Path, alg: str) -> None:
    store = KeyStore(folder).open()
    if alg == "EdDSA":
        store.rotate("EdDSA")
    exp = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
    claims = {"iss": "https://issuer.test", "sub": "alice", "exp": exp}
    token = store.sign(claims, alg=alg, typ="at+jwt")
    assert claims["exp"] is exp  # the caller's dict is not rewritten

    header = jwt.get_unverified_header(token)
    assert header == {"alg": alg, "typ": "at+jwt", "kid": store.signing_key(alg).kid}
    jwkset = jwt.PyJWKSet.from_dict(store.public_jwks())
    decoded = jwt.decode(token, key=jwkset[header["kid"]].key, algorithms=[alg])
    assert decoded == {"iss": "https://issuer.test", "sub": "alice", "exp": int(exp.timestamp())}

    verified = jose_jwt.decode(token, store.verification_keys(), registry=JWS_REGISTRY)
    assert verified.claims["sub"] == "alice"


def test_verification_keys_are_public(folder: Path) -> None:
    store = KeyStore(folder).open()
    keyset = store.verification_keys()
    assert {key.kid for key in keyset} == {key["kid"] for key in store.public_jwks()["keys"]}
    assert not any(key.is_private for key in keyset)


def test_concurrent_first_starts_generate_one_ring(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    workers = 6
    barrier = threading.Barrier(workers)
    results: list[tuple[list[str], bytes]] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            barrier.wait()
            store = KeyStore(folder).open()
            results.append((sorted(_statuses(store)), store.secret()))
        except BaseException as error:  # reported below, not swallowed
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(results) == workers
    assert len({(tuple(kids), secret) for kids, secret in results}) == 1
    infos = KeyStore(folder).open().keys()
    assert sorted(info.alg for info in infos) == ["ES256", "RS256"]
    assert len(list(folder.glob("*.pem"))) == 2


def test_methods_need_open(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    with pytest.raises(RuntimeError, match="open"):
        store.keys()
    assert not (tmp_path / "keys").exists()
