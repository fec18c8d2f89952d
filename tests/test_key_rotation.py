"""The database key store and automatic rotation, in one process (tests/test_scale_out.py
runs them across real server processes). docs/security.md L92, L93, K86: keys shared
without a disk, rotated with publication before use."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from starlette.testclient import TestClient

from authserver import keystore as keystore_module
from authserver.db import Database
from authserver.keystore import DatabaseKeys, KeyStore, KeyStoreError, ServerSecret, SigningKey
from authserver.maintenance import rotate_keys, rotation_tick
from authserver.services import Services
from authserver.settings import ConfigError, Settings
from tests.conftest import audit_events

PASSPHRASE = b"correct horse battery staple"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    now = [keystore_module._now()]
    monkeypatch.setattr(keystore_module, "_now", lambda: now[0])
    return now


@pytest.fixture
def database(schema: Database) -> Iterator[str]:
    return schema.url


@pytest.fixture(autouse=True)
def _close_stores(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every store a test opens releases its connections afterwards."""
    opened: list[KeyStore] = []
    original = KeyStore.open

    def open_and_track(self: KeyStore) -> KeyStore:
        opened.append(self)
        return original(self)

    monkeypatch.setattr(KeyStore, "open", open_and_track)
    yield
    for store in opened:
        store.close()


def db_store(url: str, passphrase: bytes = PASSPHRASE, **options: int) -> KeyStore:
    return KeyStore(DatabaseKeys(url, passphrase), passphrase.decode(), **options)


def stored_rows(schema: Database) -> list[SigningKey]:
    with schema.engine.connect() as connection:
        return list(connection.execute(select(SigningKey)).all())


def test_first_start_puts_encrypted_keys_and_sealed_secret_in_the_database(
    database: str, schema: Database
) -> None:
    store = db_store(database).open()

    rows = stored_rows(schema)
    assert sorted(row.alg for row in rows) == ["ES256", "RS256"]
    for row in rows:
        assert b"ENCRYPTED PRIVATE KEY" in row.private_pem
        with pytest.raises(TypeError):
            serialization.load_pem_private_key(row.private_pem, password=None)
    with schema.engine.connect() as connection:
        sealed = connection.execute(select(ServerSecret.sealed)).scalar_one()
    assert store.secret() not in sealed
    assert len(store.secret()) == 32


def test_a_second_instance_reads_the_same_ring_and_secret(database: str) -> None:
    first = db_store(database).open()
    second = db_store(database).open()

    assert second.public_jwks() == first.public_jwks()
    assert second.secret() == first.secret()
    token = first.sign({"sub": "alice"})
    assert jwt.get_unverified_header(token)["kid"] in {
        k["kid"] for k in second.public_jwks()["keys"]
    }


def test_a_rotation_shows_at_other_instances_within_the_refresh_time(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = db_store(database).open()
    second = db_store(database).open()
    before = second.public_jwks()

    new = first.rotate("ES256")
    assert second.public_jwks() == before  # read again only every DB_REFRESH_SECONDS
    monkeypatch.setattr(second, "_checked", 0.0)  # the refresh time has passed
    assert new.kid in {key["kid"] for key in second.public_jwks()["keys"]}
    assert second.signing_key("ES256").kid == new.kid


def test_the_database_store_requires_a_passphrase(database: str) -> None:
    with pytest.raises(KeyStoreError, match="AUTHSERVER_KEYS_PASSPHRASE is required"):
        DatabaseKeys(database, None)
    with pytest.raises(ConfigError, match="AUTHSERVER_KEYS_PASSPHRASE"):
        Settings.from_mapping({"AUTHSERVER_KEYS_STORE": "database"})


def test_a_wrong_passphrase_stops_start_up_and_nothing_is_regenerated(
    database: str, schema: Database
) -> None:
    db_store(database).open()
    before = stored_rows(schema)

    with pytest.raises(KeyStoreError, match="root secret cannot be decrypted"):
        db_store(database, b"another passphrase entirely").open()
    assert stored_rows(schema) == before


def test_a_key_under_another_passphrase_stops_start_up_naming_it(
    database: str, schema: Database
) -> None:
    db_store(database).open()
    stray = ec.generate_private_key(ec.SECP256R1())
    kid = keystore_module._wrap(stray, "ES256", None).thumbprint()
    pem = stray.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"the old passphrase"),
    )
    with schema.engine.begin() as connection:
        connection.execute(
            insert(SigningKey).values(
                kid=kid, position=9, alg="ES256", status="active", created_at=1, activates_at=1,
                retired_at=None, rotation_slot=None, private_pem=pem,
            )
        )  # fmt: skip

    with pytest.raises(KeyStoreError, match=f"key {kid}: cannot be decrypted"):
        db_store(database).open()


def test_the_root_secret_from_the_environment_is_not_stored(
    database: str, schema: Database
) -> None:
    KeyStore(DatabaseKeys(database, PASSPHRASE), "x", manage_secret=False).open()
    with schema.engine.connect() as connection:
        assert connection.execute(select(ServerSecret)).all() == []


def test_one_key_per_algorithm_and_period_is_enforced_by_the_database(
    database: str, schema: Database
) -> None:
    db_store(database).open()
    row = stored_rows(schema)[0]
    values = {**row._mapping, "rotation_slot": 7}
    with schema.engine.begin() as connection:
        connection.execute(insert(SigningKey).values({**values, "kid": "a"}))
    with pytest.raises(IntegrityError), schema.engine.begin() as connection:
        connection.execute(insert(SigningKey).values({**values, "kid": "b"}))


@pytest.fixture(params=["folder", "database"])
def ring(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[KeyStore, KeyStore]]:
    """Two instances of one ring, activation delay 10 s, tokens live 60 s."""
    options = {"activation_delay": 10, "retention": 60}
    if request.param == "folder":
        yield (
            KeyStore(tmp_path / "keys", **options).open(),
            KeyStore(tmp_path / "keys", **options).open(),
        )
        return
    url = request.getfixturevalue("schema").url
    first = db_store(url, **options).open()
    second = db_store(url, **options).open()
    second._backend.poll_interval = 0  # see every change at once
    yield first, second


def test_automatic_rotation_publishes_then_signs_then_retires_then_unpublishes(
    ring: tuple[KeyStore, KeyStore], clock: list[int]
) -> None:
    store, other = ring
    period = 100
    old = store.signing_key("RS256").kid
    signed_before = store.sign({"sub": "alice"})

    clock[0] = (clock[0] // period + 1) * period + 1  # the next period begins
    steps = store.rotate_due(period)
    assert [(step, info.alg) for step, info in steps] == [
        ("rotated", "RS256"),
        ("rotated", "ES256"),
    ]
    new = steps[0][1]
    published = {key["kid"] for key in other.public_jwks()["keys"]}
    assert {old, new.kid} <= published
    assert other.signing_key("RS256").kid == old  # published before it signs
    assert store.rotate_due(period) == []  # nothing more in this period

    clock[0] += 10
    steps = store.rotate_due(period)
    assert next((step, info.kid) for step, info in steps) == ("retired", old)
    assert other.signing_key("RS256").kid == new.kid
    assert old in {key["kid"] for key in other.public_jwks()["keys"]}
    assert other.verification_keys().get_by_kid(old)  # a token it signed still verifies
    assert jwt.get_unverified_header(signed_before)["kid"] == old

    clock[0] += 60  # every token the old key signed has expired
    assert old not in {key["kid"] for key in other.public_jwks()["keys"]}

    clock[0] += period  # a period later the ring forgets it, in every instance
    assert ("removed", old) in [(step, info.kid) for step, info in store.rotate_due(period)]
    assert old not in {info.kid for info in other.keys()}
    assert old not in other._private


def test_two_instances_never_both_rotate_for_one_period(
    ring: tuple[KeyStore, KeyStore], clock: list[int]
) -> None:
    period = 100
    clock[0] = (clock[0] // period + 1) * period + 1
    results: list[list[tuple[str, object]]] = []
    barrier = threading.Barrier(2)

    def rotate(store: KeyStore) -> None:
        barrier.wait()
        results.append(store.rotate_due(period))

    threads = [threading.Thread(target=rotate, args=(store,)) for store in ring]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    made = [info for steps in results for step, info in steps if step == "rotated"]
    assert sorted(info.alg for info in made) == ["ES256", "RS256"]
    slots = [(info.alg, info.rotation_slot) for info in ring[1].keys() if info.rotation_slot]
    assert len(slots) == len(set(slots)) == 2


def test_rotation_steps_are_audited(services: Services, clock: list[int]) -> None:
    period = 100
    store = services.keystore
    clock[0] = (clock[0] // period + 1) * period + 1
    services.db.call(rotate_keys, store, period)
    clock[0] += 1  # the default activation delay is 0: the new keys sign now
    services.db.call(rotate_keys, store, period)

    rotated = audit_events(services, "key.rotated")
    retired = audit_events(services, "key.retired")
    assert len(rotated) == len(retired) == 2
    assert {event.target_type for event in rotated + retired} == {"key"}
    assert all("signs_from" in event.details for event in rotated)
    assert all("published_until" in event.details for event in retired)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90d", 90 * 86400), ("12h", 43200), ("15m", 900), ("30s", 30), ("45", 45)],
)
def test_rotation_period_is_a_duration(text: str, seconds: int) -> None:
    settings = Settings.from_mapping({"AUTHSERVER_KEY_ROTATION_PERIOD": text})
    assert settings.key_rotation_period == seconds
    assert 1 <= rotation_tick(seconds) <= 60


@pytest.mark.parametrize("text", ["ninety days", "-5s", "1.5h", "d"])
def test_a_bad_rotation_period_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="AUTHSERVER_KEY_ROTATION_PERIOD"):
        Settings.from_mapping({"AUTHSERVER_KEY_ROTATION_PERIOD": text})


def test_the_rotation_period_must_exceed_the_activation_delay() -> None:
    with pytest.raises(ConfigError, match="longer than AUTHSERVER_KEY_ACTIVATION_DELAY"):
        Settings.from_mapping(
            {"AUTHSERVER_KEY_ROTATION_PERIOD": "60", "AUTHSERVER_KEY_ACTIVATION_DELAY": "60"}
        )


@pytest.mark.parametrize(("delay", "max_age"), [(0, 0), (30, 30), (3600, 300)])
def test_jwks_and_discovery_are_cached_no_longer_than_the_activation_delay(
    app_with, delay: int, max_age: int
) -> None:
    client: TestClient = app_with(key_activation_delay=delay)
    for path in ("/jwks.json", "/.well-known/openid-configuration"):
        assert client.get(path).headers["cache-control"] == f"public, max-age={max_age}"


def test_a_database_key_store_lag_shortens_the_cache(app_with, settings: Settings) -> None:
    client: TestClient = app_with(
        keys_store="database", keys_passphrase=PASSPHRASE.decode(), key_activation_delay=30
    )
    lag = keystore_module.DB_REFRESH_SECONDS
    assert client.get("/jwks.json").headers["cache-control"] == f"public, max-age={30 - lag}"


def test_an_unreachable_database_keeps_the_loaded_ring_serving(
    database: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/security.md L88: with the database away, tokens still verify and JWKS answers;
    the next attempt to refresh waits a few intervals instead of blocking every request."""
    store = db_store(database).open()
    jwks = store.public_jwks()
    calls = []

    def unreachable() -> None:
        calls.append(1)
        raise KeyStoreError("database key store: cannot use the database: connection refused")

    monkeypatch.setattr(store._backend, "stamp", unreachable)
    monkeypatch.setattr(store, "_checked", 0.0)
    token = store.sign({"sub": "alice"})
    assert store.public_jwks() == jwks
    assert store.verification_keys().get_by_kid(jwt.get_unverified_header(token)["kid"])
    assert calls == [1]
    assert "key ring not refreshed" in caplog.text


def test_the_served_jwks_and_discovery_follow_a_new_key(
    client: TestClient, services: Services
) -> None:
    """Both are encoded once and served as bytes: a rotation must show in the next answer,
    with headers that still fit the body (content-length, content-type, CORS)."""
    before = client.get("/jwks.json")
    new = services.keystore.rotate("ES256")
    after = client.get("/jwks.json")
    assert new.kid not in {key["kid"] for key in before.json()["keys"]}
    assert new.kid in {key["kid"] for key in after.json()["keys"]}
    assert after.headers["content-type"] == "application/jwk-set+json"
    assert after.headers["content-length"] == str(len(after.content))
    assert after.headers["access-control-allow-origin"] == "*"
    assert after.headers["x-content-type-options"] == "nosniff"
    again = client.get("/jwks.json")
    assert again.content == after.content
    assert again.headers.get_list("x-request-id") != after.headers.get_list("x-request-id")
    assert len(again.headers.get_list("x-content-type-options")) == 1
    discovery = client.get("/.well-known/openid-configuration")
    assert discovery.headers["content-type"] == "application/json"
    assert discovery.headers["content-length"] == str(len(discovery.content))
