"""The server's signing keys and root secret, shared by every instance: in a folder, or in
the database.

Tokens outlive the process that signed them and are verified by other instances, so the key
ring lives in shared storage and every reader re-checks it instead of trusting what it loaded
at start. Two backends hold the same ring:

- `FolderKeys` (the default, one machine or a shared volume): ``keys.json`` plus one PEM per
  key, checked with one ``stat`` on every call, so a change shows at once.
- `DatabaseKeys` (``AUTHSERVER_KEYS_STORE=database``, no shared disk): the table
  ``signing_keys`` (and ``server_secrets`` for the root secret), read again at most every
  `DB_REFRESH_SECONDS`, so another instance's rotation shows here within that time. Private
  keys and the secret are stored encrypted with keys derived from the passphrase.

Keys are never replaced behind the operator's back: anything unreadable stops the server with
a one-line error, because a silently regenerated key would invalidate every token and session
in flight.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from joserfc import jwt
from joserfc.jwk import ECKey, Key, KeyParameters, KeySet, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from sqlalchemy import (
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from authserver.db import Base, create_db_engine

__all__ = [
    "ALGORITHMS",
    "JWS_REGISTRY",
    "DatabaseKeys",
    "FolderKeys",
    "KeyInfo",
    "KeyStore",
    "KeyStoreError",
    "jws_registry",
]

log = logging.getLogger("authserver.keystore")

DEFAULT_ALG = "RS256"
#: Signing algorithms the store can generate keys for.
ALGORITHMS = ("RS256", "ES256", "EdDSA")
RSA_KEY_SIZE = 2048
SECRET_BYTES = 32
#: The keys a new ring starts with.
FIRST_ALGS = ("RS256", "ES256")
#: How stale the ring of one instance may be after another changes it in the database.
DB_REFRESH_SECONDS = 2
#: After a failed refresh, the next waits this many refresh intervals more.
OUTAGE_BACKOFF = 4

MANIFEST = "keys.json"
SECRET_FILE = "secret.key"
LOCK_FILE = ".lock"
ROOT_SECRET = "root"

_STATUSES = ("active", "retired")
# A kid becomes a file name, so only the base64url alphabet a thumbprint uses is accepted.
_KID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")


class KeyStoreError(Exception):
    """The key store cannot be used as it is; `str()` is the one line shown to the operator."""


@dataclass(frozen=True)
class KeyInfo:
    """One entry of the ring; timestamps are unix seconds. `rotation_slot` numbers the
    rotation period an automatic rotation made the key for (None for other keys)."""

    kid: str
    alg: str
    status: str
    created_at: int
    activates_at: int
    retired_at: int | None
    rotation_slot: int | None = None


class SigningKey(Base):
    """A key of the ring in the database store; `private_pem` is PKCS#8, passphrase-encrypted.
    At most one key per algorithm and rotation period (the guard against two instances
    rotating at once)."""

    __tablename__ = "signing_keys"
    __table_args__ = (UniqueConstraint("alg", "rotation_slot"),)

    kid: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: The key's place in the ring (keys.json's list order): the newest signs, ties included.
    position: Mapped[int] = mapped_column(Integer)
    alg: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[int] = mapped_column(Integer)
    activates_at: Mapped[int] = mapped_column(Integer)
    retired_at: Mapped[int | None] = mapped_column(Integer)
    rotation_slot: Mapped[int | None] = mapped_column(Integer)
    private_pem: Mapped[bytes] = mapped_column(LargeBinary)


class ServerSecret(Base):
    """The root secret of the database store, sealed with a key derived from the passphrase."""

    __tablename__ = "server_secrets"

    name: Mapped[str] = mapped_column(String(30), primary_key=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)


class _Registry(JWSRegistry):
    """joserfc 1.8 flags "EdDSA" as deprecated (RFC 9864) and emits a SecurityWarning on
    every signature and verification. The fully specified replacement ("Ed25519") is not yet
    understood by PyJWT and most relying parties, so we keep "EdDSA" on purpose and keep
    the warning out of every token."""

    def get_alg(self, name: str) -> Any:
        if name == "EdDSA" and self.allowed and name in self.allowed:
            return self.algorithms[name]
        return super().get_alg(name)


#: Pass to joserfc ``jwt.decode`` together with `KeyStore.verification_keys` so tokens are
#: only accepted with the algorithms this store signs with (and EdDSA does not warn).
def jws_registry(algorithms: Sequence[str]) -> JWSRegistry:
    """A joserfc registry that accepts exactly `algorithms` (EdDSA without the warning)."""
    return _Registry(algorithms=list(algorithms))


JWS_REGISTRY: JWSRegistry = jws_registry(ALGORITHMS)


def _now() -> int:
    return int(time.time())


def _fail(path: Path | str, problem: str) -> KeyStoreError:
    return KeyStoreError(f"{path}: {problem}")


def _reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return getattr(error, "strerror", None) or text


class KeyBackend(Protocol):
    """Where a ring is kept. `KeyStore` holds the logic; a backend only stores, locks and
    tells whether anything changed."""

    #: Seconds between checks for changes made elsewhere (0: check on every call).
    poll_interval: float

    def where(self, kid: str | None = None) -> str:
        """Names the ring (or one key's private part) in an error message."""

    def where_secret(self) -> str: ...

    def prepare(self) -> None: ...

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Hold the ring against every other process and thread until the block ends."""

    def read(self) -> tuple[Any, tuple[KeyInfo, ...]]:
        """(a stamp that changes whenever the ring does, the ring)."""

    def stamp(self) -> Any: ...

    def save(
        self, infos: tuple[KeyInfo, ...], added: Mapping[str, bytes], removed: Sequence[str] = ()
    ) -> Any:
        """Store the ring, the PEMs of the keys it gained, and forget the `removed` keys'
        private parts; return the new stamp."""

    def private_pem(self, kid: str) -> bytes: ...

    def stray_keys(self) -> list[str]:
        """Private keys present although the ring is empty (a lost manifest)."""

    def read_secret(self) -> bytes | None: ...

    def write_secret(self, value: bytes) -> None: ...

    def close(self) -> None: ...


class FolderKeys:
    """``keys.json``, one PEM per key and ``secret.key`` in one folder, serialised by flock."""

    poll_interval = 0.0

    def __init__(self, directory: Path) -> None:
        self._dir = Path(directory)
        self._manifest = self._dir / MANIFEST
        self._secret_path = self._dir / SECRET_FILE

    def where(self, kid: str | None = None) -> str:
        return str(self._manifest if kid is None else self._pem_path(kid))

    def where_secret(self) -> str:
        return str(self._secret_path)

    def prepare(self) -> None:
        try:
            self._dir.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            if not self._dir.is_dir():
                raise _fail(self._dir, "exists but is not a folder") from None
        except OSError as error:
            raise _fail(self._dir, f"cannot create ({_reason(error)})") from error
        else:
            os.chmod(self._dir, 0o700)  # mkdir's mode is filtered through the umask

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Each flock'd descriptor excludes every other, even within one process."""
        path = self._dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise _fail(path, f"cannot open lock file ({_reason(error)})") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def stamp(self) -> Any:
        try:
            st = os.stat(self._manifest)
        except OSError as error:
            raise _fail(self._manifest, f"cannot read ({_reason(error)})") from error
        return st.st_ino, st.st_mtime_ns, st.st_size

    def read(self) -> tuple[Any, tuple[KeyInfo, ...]]:
        if not self._manifest.exists():
            return None, ()
        path = self._manifest
        try:
            with open(path, "rb") as file:
                st = os.fstat(file.fileno())
                raw = file.read()
        except OSError as error:
            raise _fail(path, f"cannot read ({_reason(error)})") from error
        try:
            entries = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise _fail(path, f"is not valid JSON ({_reason(error)})") from error
        if not isinstance(entries, list):
            raise _fail(path, "must hold a JSON list of keys")
        infos = tuple(_parse_entry(path, n, entry) for n, entry in enumerate(entries))
        return (st.st_ino, st.st_mtime_ns, st.st_size), infos

    def save(
        self, infos: tuple[KeyInfo, ...], added: Mapping[str, bytes], removed: Sequence[str] = ()
    ) -> Any:
        for kid, pem in added.items():
            self._write_new_file(self._pem_path(kid), pem)
        stamp = self._write_manifest(infos)
        for kid in removed:
            with contextlib.suppress(FileNotFoundError):
                self._pem_path(kid).unlink()
        return stamp

    def private_pem(self, kid: str) -> bytes:
        path = self._pem_path(kid)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise _fail(path, f"missing, but {MANIFEST} lists kid {kid}") from None
        except OSError as error:
            raise _fail(path, f"cannot read ({_reason(error)})") from error

    def stray_keys(self) -> list[str]:
        return sorted(p.name for p in self._dir.glob("*.pem"))

    def read_secret(self) -> bytes | None:
        path = self._secret_path
        if not path.exists():
            return None
        try:
            text = path.read_bytes().strip()
        except OSError as error:
            raise _fail(path, f"cannot read ({_reason(error)})") from error
        try:
            return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise _fail(path, "is not base64url") from None

    def write_secret(self, value: bytes) -> None:
        self._write_new_file(
            self._secret_path, base64.urlsafe_b64encode(value).rstrip(b"=") + b"\n"
        )

    def close(self) -> None:
        pass

    def _pem_path(self, kid: str) -> Path:
        return self._dir / f"{kid}.pem"

    def _write_manifest(self, infos: tuple[KeyInfo, ...]) -> Any:
        """Replace keys.json atomically, so readers without the lock never see half a file."""
        text = json.dumps([_entry(info) for info in infos], indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=f".{MANIFEST}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                os.fchmod(file.fileno(), 0o600)
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self._manifest)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _fail(self._manifest, f"cannot write ({_reason(error)})") from error
        self._fsync_dir()
        return self.stamp()

    def _write_new_file(self, path: Path, data: bytes) -> None:
        """Create a file that is 0600 from its first byte and never overwrites another."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise _fail(path, "already exists; refusing to overwrite it") from None
        except OSError as error:
            raise _fail(path, f"cannot create ({_reason(error)})") from error
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), 0o600)  # in case the umask removed owner bits
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        except OSError as error:
            raise _fail(path, f"cannot write ({_reason(error)})") from error
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self._dir, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class DatabaseKeys:
    """The ring in ``signing_keys`` and the secret in ``server_secrets``, for instances that
    share a database but no disk. Writers serialise on a PostgreSQL advisory lock (SQLite:
    its write lock); readers poll every `DB_REFRESH_SECONDS`. The root secret is sealed with
    AES-GCM under a scrypt key from the passphrase, so a database dump alone reveals nothing.
    """

    poll_interval = float(DB_REFRESH_SECONDS)
    _LOCK_ID = 0x61757468  # "auth": the advisory lock of the key ring

    def __init__(self, url: str, passphrase: bytes | None, *, engine: Engine | None = None):
        if not passphrase:
            raise KeyStoreError(
                "AUTHSERVER_KEYS_PASSPHRASE is required with AUTHSERVER_KEYS_STORE=database"
            )
        self._passphrase = passphrase
        self._engine = engine or create_db_engine(url, pool_size=1, pool_timeout=5)
        self._connection: Connection | None = None

    def where(self, kid: str | None = None) -> str:
        return "database key store" if kid is None else f"database key store, key {kid}"

    def where_secret(self) -> str:
        return "database key store, root secret"

    def prepare(self) -> None:
        try:
            with self._engine.connect() as connection:
                connection.execute(select(SigningKey.kid).limit(1))
        except SQLAlchemyError as error:
            raise self._unusable(error) from error

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        try:
            with self._engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({self._LOCK_ID})")
                self._connection = connection
                try:
                    yield
                finally:
                    self._connection = None
        except SQLAlchemyError as error:
            raise self._unusable(error) from error

    def stamp(self) -> Any:
        return self.read()[0]

    def read(self) -> tuple[Any, tuple[KeyInfo, ...]]:
        columns = [getattr(SigningKey, f.name) for f in dataclasses.fields(KeyInfo)]
        query = select(*columns).order_by(SigningKey.position, SigningKey.kid)
        rows = self._run(lambda c: c.execute(query).all())
        infos = tuple(
            _parse_entry(self.where(), n, dict(row._mapping)) for n, row in enumerate(rows)
        )
        return infos, infos

    def save(
        self, infos: tuple[KeyInfo, ...], added: Mapping[str, bytes], removed: Sequence[str] = ()
    ) -> Any:
        def write(connection: Connection) -> None:
            for position, info in enumerate(infos):
                values = {**dataclasses.asdict(info), "position": position}
                if info.kid in added:
                    connection.execute(
                        insert(SigningKey).values(**values, private_pem=added[info.kid])
                    )
                else:
                    kid = values.pop("kid")
                    connection.execute(
                        update(SigningKey).where(SigningKey.kid == kid).values(**values)
                    )
            kept = [info.kid for info in infos]
            connection.execute(delete(SigningKey).where(SigningKey.kid.not_in(kept)))

        self._run(write)
        return infos

    def private_pem(self, kid: str) -> bytes:
        query = select(SigningKey.private_pem).where(SigningKey.kid == kid)
        pem = self._run(lambda c: c.execute(query).scalar_one_or_none())
        if pem is None:
            raise KeyStoreError(f"{self.where(kid)}: missing")
        return bytes(pem)

    def stray_keys(self) -> list[str]:
        return []

    def read_secret(self) -> bytes | None:
        query = select(ServerSecret.sealed).where(ServerSecret.name == ROOT_SECRET)
        sealed = self._run(lambda c: c.execute(query).scalar_one_or_none())
        return None if sealed is None else self._unseal(bytes(sealed))

    def write_secret(self, value: bytes) -> None:
        sealed = self._seal(value)
        self._run(lambda c: c.execute(insert(ServerSecret).values(name=ROOT_SECRET, sealed=sealed)))

    def close(self) -> None:
        self._engine.dispose()

    def _run(self, work: Any) -> Any:
        if self._connection is not None:
            return work(self._connection)
        try:
            with self._engine.begin() as connection:
                return work(connection)
        except SQLAlchemyError as error:
            raise self._unusable(error) from error

    def _unusable(self, error: SQLAlchemyError) -> KeyStoreError:
        reason = str(getattr(error, "orig", None) or error).splitlines()[0]
        hint = " (run `authserver migrate`)" if "signing_keys" in reason else ""
        return KeyStoreError(f"{self.where()}: cannot use the database: {reason}{hint}")

    # The secret is sealed as salt (16) | nonce (12) | AES-256-GCM ciphertext and tag.
    def _derive(self, salt: bytes) -> bytes:
        return Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(self._passphrase)

    def _seal(self, value: bytes) -> bytes:
        salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
        return salt + nonce + AESGCM(self._derive(salt)).encrypt(nonce, value, b"root-secret")

    def _unseal(self, sealed: bytes) -> bytes:
        salt, nonce, body = sealed[:16], sealed[16:28], sealed[28:]
        try:
            return AESGCM(self._derive(salt)).decrypt(nonce, body, b"root-secret")
        except (InvalidTag, ValueError):
            raise KeyStoreError(
                f"{self.where()}: the root secret cannot be decrypted with the configured "
                "passphrase (AUTHSERVER_KEYS_PASSPHRASE differs from the one it was made with)"
            ) from None


def _entry(info: KeyInfo) -> dict[str, Any]:
    entry = dataclasses.asdict(info)
    if entry["rotation_slot"] is None:
        del entry["rotation_slot"]  # keys.json written before automatic rotation stays as it was
    return entry


def _parse_entry(path: Path | str, n: int, entry: Any) -> KeyInfo:
    def bad(problem: str) -> KeyStoreError:
        return _fail(path, f"entry {n}: {problem}")

    def timestamp(name: str) -> int:
        value = entry.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad(f"{name!r} must be an integer timestamp")
        return value

    if not isinstance(entry, dict):
        raise bad("must be a JSON object")
    kid, alg, status = entry.get("kid"), entry.get("alg"), entry.get("status")
    if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
        raise bad("'kid' must be a base64url key thumbprint")
    if alg not in ALGORITHMS:
        raise bad(f"'alg' must be one of {', '.join(ALGORITHMS)}")
    if status not in _STATUSES:
        raise bad("'status' must be 'active' or 'retired'")
    retired_at = None if entry.get("retired_at") is None else timestamp("retired_at")
    if (status == "retired") != (retired_at is not None):
        raise bad("'retired_at' must be set exactly when 'status' is 'retired'")
    slot = None if entry.get("rotation_slot") is None else timestamp("rotation_slot")
    return KeyInfo(
        kid=kid,
        alg=alg,
        status=status,
        created_at=timestamp("created_at"),
        activates_at=timestamp("activates_at"),
        retired_at=retired_at,
        rotation_slot=slot,
    )


class KeyStore:
    """The key ring in `backend` (a folder path means `FolderKeys`); call `open` first."""

    def __init__(
        self,
        backend: KeyBackend | Path | str,
        passphrase: str | None = None,
        *,
        activation_delay: int = 0,
        retention: int = 3600,
        manage_secret: bool = True,
    ) -> None:
        if activation_delay < 0 or retention < 0:
            raise ValueError("activation_delay and retention must not be negative")
        # An empty passphrase protects nothing (and cryptography refuses it), so it means "none".
        self._passphrase = passphrase.encode() if passphrase else None
        self._backend: KeyBackend = (
            FolderKeys(Path(backend)) if isinstance(backend, Path | str) else backend
        )
        self._activation_delay = activation_delay
        self._retention = retention
        self._manage_secret = manage_secret
        self._mutex = threading.RLock()
        self._opened = False
        self._secret: bytes | None = None
        self._infos: tuple[KeyInfo, ...] = ()
        self._stamp: Any = None
        self._checked = 0.0
        self._private: dict[str, Key] = {}
        self._public: dict[str, Key] = {}
        #: The published kids and their JWKs: a kid is the key's thumbprint (RFC 7638).
        self._jwks: tuple[tuple[str, ...], list[dict[str, Any]]] | None = None
        self._verifying: tuple[tuple[str, ...], KeySet] | None = None

    @property
    def retention(self) -> int:
        """Seconds a retired key stays published: the longest lifetime of a token it signs."""
        return self._retention

    @property
    def refresh_lag(self) -> float:
        """At most this many seconds pass before a change made elsewhere shows here."""
        return self._backend.poll_interval

    # -- public API ----------------------------------------------------------------------

    def open(self) -> KeyStore:
        """Create the ring on first start and load it all, so a broken store stops the
        server at start-up rather than on the first token request."""
        with self._mutex:
            self._backend.prepare()
            with self._backend.exclusive():
                stamp, infos = self._read()
                first_start = not infos
                if first_start and self._backend.stray_keys():
                    raise _fail(
                        self._backend.where(),
                        f"missing or empty but the folder holds "
                        f"{', '.join(self._backend.stray_keys())}; restore {MANIFEST} from a "
                        "backup instead of letting a new key ring be generated",
                    )
                if self._manage_secret:
                    self._secret = self._read_secret()
                    if self._secret is None and first_start:
                        self._secret = secrets.token_bytes(SECRET_BYTES)
                        self._backend.write_secret(self._secret)
                if first_start:
                    now = _now()
                    added = [self._new_key(alg, now, activates_at=now) for alg in FIRST_ALGS]
                    infos = tuple(info for info, _ in added)
                    stamp = self._backend.save(infos, {info.kid: pem for info, pem in added})
                self._load_private_keys(infos)
                self._infos, self._stamp = infos, stamp
                self._checked = time.monotonic()
            self._opened = True
        return self

    def secret(self) -> bytes:
        """The root secret every instance must share (cookies, CSRF, token digests)."""
        with self._mutex:
            self._require_open()
            if self._secret is None:
                self._secret = self._read_secret()
                if self._secret is None:
                    raise _fail(
                        self._backend.where_secret(),
                        "missing although the key ring exists; restore it from a backup "
                        "(a new root secret would invalidate every session and token digest)",
                    )
            return self._secret

    def keys(self) -> list[KeyInfo]:
        """The whole ring as currently stored, including retired keys."""
        with self._mutex:
            self._refresh()
            return list(self._infos)

    def rotate(self, alg: str = DEFAULT_ALG) -> KeyInfo:
        """Add a key that is published now but only signs after `activation_delay`, so
        relying parties that cache our JWKS learn it before they see tokens signed with it."""
        if alg not in ALGORITHMS:
            raise KeyStoreError(f"unsupported signing algorithm {alg!r} (use one of {ALGORITHMS})")
        with self._change() as infos:
            now = _now()
            info, pem = self._new_key(alg, now, activates_at=now + self._activation_delay)
            self._save((*infos, info), {info.kid: pem})
        return info

    def retire(self, kid: str) -> KeyInfo:
        """Stop signing with a key but keep publishing it for `retention` seconds, so
        tokens it already signed still verify until they expire."""
        with self._change() as infos:
            current = next((info for info in infos if info.kid == kid), None)
            if current is None:
                raise _fail(self._backend.where(), f"no key with kid {kid!r}")
            if current.status == "retired":
                return current  # retiring twice must not extend how long it is published
            if current.alg == DEFAULT_ALG and not any(
                info.alg == DEFAULT_ALG and info.status == "active" and info.kid != kid
                for info in infos
            ):
                raise _fail(
                    self._backend.where(),
                    f"refusing to retire {kid}: it is the last active {DEFAULT_ALG} key "
                    f"(rotate {DEFAULT_ALG} first)",
                )
            retired = dataclasses.replace(current, status="retired", retired_at=_now())
            self._save(tuple(retired if info.kid == kid else info for info in infos), {})
        return retired

    def rotate_due(self, period: int) -> list[tuple[str, KeyInfo]]:
        """One step of automatic rotation; returns what changed as ("rotated" | "retired", key).

        Time is cut into periods of `period` seconds. For each algorithm with an active key,
        a key is made for the current period unless one exists (the ring holds one key per
        algorithm and period: the exclusive lock serialises instances, and the database store
        also has a unique constraint), unless the newest key was already made in this period.
        Once the newest key signs, older active keys of its algorithm are retired: they stay
        published for `retention` seconds, the lifetime of every token they signed. A period
        after that they leave the ring, so the ring (and each process's copy) stays small.
        """
        if period <= 0:
            raise ValueError("period must be positive")
        changes: list[tuple[str, KeyInfo]] = []
        with self._change() as infos:
            now = _now()
            slot = now // period
            ring, added = list(infos), {}
            for alg in ALGORITHMS:
                active = [info for info in ring if info.alg == alg and info.status == "active"]
                if not active:
                    continue
                newest = max(active, key=lambda info: info.created_at)
                made = any(info.alg == alg and info.rotation_slot == slot for info in ring)
                if not made and newest.created_at < slot * period:
                    info, pem = self._new_key(
                        alg, now, activates_at=now + self._activation_delay, slot=slot
                    )
                    ring.append(info)
                    added[info.kid] = pem
                    changes.append(("rotated", info))
                    continue
                if newest.activates_at > now:
                    continue
                for old in active:
                    if old.kid != newest.kid:
                        retired = dataclasses.replace(old, status="retired", retired_at=now)
                        ring[ring.index(old)] = retired
                        changes.append(("retired", retired))
            expired = [
                info
                for info in ring
                if info.retired_at is not None and info.retired_at + self._retention + period <= now
            ]
            for info in expired:
                ring.remove(info)
                changes.append(("removed", info))
            if changes:
                self._save(tuple(ring), added, [info.kid for info in expired])
        return changes

    def signing_key(self, alg: str = DEFAULT_ALG) -> Key:
        """The private key tokens are signed with now; it carries kid, alg and use."""
        with self._mutex:
            self._refresh()
            now = _now()
            candidates = [
                (info.created_at, index, info)
                for index, info in enumerate(self._infos)
                if info.alg == alg and info.status == "active"
            ]
            if not candidates:
                raise _fail(self._backend.where(), f"no active {alg} key")
            # Before any rotated key has activated, signing with a published key beats failing.
            ready = [c for c in candidates if c[2].activates_at <= now] or candidates
            info = max(ready, key=lambda c: (c[0], c[1]))[2]
            return self._private[info.kid]

    def published_kids(self) -> tuple[str, ...]:
        """The kids `public_jwks` lists now: what a copy of the JWKS encoded once is keyed by
        (it changes with a rotation, a retirement, and a retired key's retention ending)."""
        with self._mutex:
            self._refresh()
            return tuple(info.kid for info in self._published())

    def answers_from_memory(self) -> bool:
        """Whether reading the keys now waits on nothing: the folder store looks with one
        `stat`; the database store only every `refresh_lag` seconds."""
        interval = self._backend.poll_interval
        return not interval or time.monotonic() - self._checked < interval

    def public_jwks(self) -> dict[str, Any]:
        """The document served at jwks_uri: keys that sign now or soon, and retired keys
        whose tokens may still be live."""
        with self._mutex:
            kids = self.published_kids()
            if self._jwks is None or self._jwks[0] != kids:
                self._jwks = (kids, [self._public[kid].as_dict() for kid in kids])
            return {"keys": [dict(jwk) for jwk in self._jwks[1]]}

    def sign(self, claims: dict[str, Any], *, alg: str = DEFAULT_ALG, typ: str = "JWT") -> str:
        """A compact JWT whose header names the kid, so verifiers can pick the key from
        our JWKS even while several keys of one algorithm are published."""
        key = self.signing_key(alg)
        header = {"alg": alg, "typ": typ, "kid": key.kid}
        # joserfc rewrites datetime exp/iat/nbf in the dict it is given; keep the caller's intact.
        return jwt.encode(header, dict(claims), key, registry=JWS_REGISTRY)

    def verification_keys(self) -> KeySet:
        """Public keys for checking our own tokens; matches `public_jwks` exactly."""
        with self._mutex:
            self._refresh()
            kids = tuple(info.kid for info in self._published())
            if self._verifying is None or self._verifying[0] != kids:
                self._verifying = (kids, KeySet([self._public[kid] for kid in kids]))
            return self._verifying[1]

    def close(self) -> None:
        """Release the backend's database connections (the folder holds none open)."""
        self._backend.close()

    # -- state ---------------------------------------------------------------------------

    def _require_open(self) -> None:
        if not self._opened:
            raise RuntimeError("KeyStore.open() must be called first")

    @contextlib.contextmanager
    def _change(self) -> Iterator[tuple[KeyInfo, ...]]:
        """The ring as stored, read under the exclusive lock, for a change to `_save`."""
        with self._mutex:
            self._require_open()
            with self._backend.exclusive():
                _, infos = self._read()
                self._load_private_keys(infos)
                yield infos

    def _save(
        self, infos: tuple[KeyInfo, ...], added: Mapping[str, bytes], removed: Sequence[str] = ()
    ) -> None:
        self._infos, self._stamp = infos, self._backend.save(infos, added, removed)
        self._forget_removed()
        self._checked = time.monotonic()

    def _forget_removed(self) -> None:
        """Keep only the keys the ring lists: the cache is bounded by the ring."""
        listed = {info.kid for info in self._infos}
        for kid in [kid for kid in self._private if kid not in listed]:
            del self._private[kid], self._public[kid]

    def _published(self) -> list[KeyInfo]:
        now = _now()
        return [
            info
            for info in self._infos
            if info.status == "active"
            or (info.retired_at is not None and info.retired_at + self._retention > now)
        ]

    def _read(self) -> tuple[Any, tuple[KeyInfo, ...]]:
        stamp, infos = self._backend.read()
        kids = [info.kid for info in infos]
        if len(set(kids)) != len(kids):
            raise _fail(self._backend.where(), "lists the same kid twice")
        return stamp, infos

    def _read_secret(self) -> bytes | None:
        value = self._backend.read_secret()
        if value is not None and len(value) < SECRET_BYTES:
            raise _fail(
                self._backend.where_secret(),
                f"holds {len(value)} bytes; the root secret needs {SECRET_BYTES}",
            )
        return value

    def _refresh(self) -> None:
        """Pick up a rotation or retirement made by another instance: the folder is checked
        on every call (one stat), the database every `poll_interval` seconds. While the
        database is unreachable the ring already loaded keeps serving."""
        self._require_open()
        interval = self._backend.poll_interval
        if interval and time.monotonic() - self._checked < interval:
            return
        try:
            if self._backend.stamp() == self._stamp:
                self._checked = time.monotonic()
                return
            stamp, infos = self._read()
            self._load_private_keys(infos)
        except KeyStoreError as error:
            if not interval:
                raise
            log.warning("key ring not refreshed: %s", error)
            # While the database is away, only one caller in a while waits for it to time out.
            self._checked = time.monotonic() + OUTAGE_BACKOFF * interval
            return
        self._infos, self._stamp = infos, stamp
        self._forget_removed()
        self._checked = time.monotonic()

    # -- keys ----------------------------------------------------------------------------

    def _new_key(
        self, alg: str, now: int, *, activates_at: int, slot: int | None = None
    ) -> tuple[KeyInfo, bytes]:
        native: Any
        if alg == "RS256":
            native = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_SIZE)
        elif alg == "ES256":
            native = ec.generate_private_key(ec.SECP256R1())
        else:
            native = ed25519.Ed25519PrivateKey.generate()
        kid = _wrap(native, alg, None).thumbprint()
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(self._passphrase)
            if self._passphrase
            else serialization.NoEncryption()
        )
        pem = native.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        self._remember(kid, alg, _wrap(native, alg, kid))
        return KeyInfo(kid, alg, "active", now, activates_at, None, slot), pem

    def _load_private_keys(self, infos: tuple[KeyInfo, ...]) -> None:
        for info in infos:
            if info.kid not in self._private:
                self._remember(info.kid, info.alg, self._load_private_key(info))

    def _remember(self, kid: str, alg: str, key: Key) -> None:
        """Cache by kid: a reload after another instance rotates only reads the new keys."""
        self._private[kid] = key
        self._public[kid] = _wrap(key.public_key, alg, kid)

    def _load_private_key(self, info: KeyInfo) -> Key:
        where = self._backend.where(info.kid)
        data = self._backend.private_pem(info.kid)
        try:
            native = serialization.load_pem_private_key(data, password=self._passphrase)
        except TypeError:
            if self._passphrase is None:
                raise _fail(where, "is encrypted but no passphrase is configured") from None
            raise _fail(where, "is not encrypted but a passphrase is configured") from None
        except ValueError:
            problem = (
                "cannot be decrypted with the configured passphrase, or is corrupt"
                if self._passphrase is not None and b"ENCRYPTED" in data
                else "is not a readable PKCS#8 PEM private key"
            )
            raise _fail(where, problem) from None
        except UnsupportedAlgorithm:
            raise _fail(where, "holds an unsupported kind of key") from None
        expected = {
            "RS256": "an RSA key of at least 2048 bits",
            "ES256": "an EC P-256 key",
            "EdDSA": "an Ed25519 key",
        }[info.alg]
        if not (
            (
                info.alg == "RS256"
                and isinstance(native, rsa.RSAPrivateKey)
                and native.key_size >= RSA_KEY_SIZE
            )
            or (
                info.alg == "ES256"
                and isinstance(native, ec.EllipticCurvePrivateKey)
                and isinstance(native.curve, ec.SECP256R1)
            )
            or (info.alg == "EdDSA" and isinstance(native, ed25519.Ed25519PrivateKey))
        ):
            raise _fail(where, f"does not hold {expected} as {MANIFEST} says ({info.alg})")
        key = _wrap(native, info.alg, info.kid)
        if key.thumbprint() != info.kid:
            raise _fail(where, f"holds a key whose thumbprint is not its kid {info.kid}")
        return key


def _wrap(native: Any, alg: str, kid: str | None) -> Key:
    params: KeyParameters = {"alg": alg, "use": "sig"}
    if kid is not None:
        params["kid"] = kid
    if alg == "RS256":
        return RSAKey.import_key(native, params)
    if alg == "ES256":
        return ECKey.import_key(native, params)
    return OKPKey.import_key(native, params)
