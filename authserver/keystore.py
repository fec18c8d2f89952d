"""The server's signing keys and root secret, kept in one folder shared by every instance.

Tokens outlive the process that signed them and are verified by other instances, so the key
ring lives on disk (``keys.json`` plus one PEM per key) and every reader re-checks the
manifest on each call instead of trusting what it loaded at start. Keys are never replaced
behind the operator's back: anything unreadable stops the server with a one-line error,
because a silently regenerated key would invalidate every token and session in flight.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import fcntl
import json
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwt
from joserfc.jwk import ECKey, Key, KeyParameters, KeySet, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

__all__ = ["ALGORITHMS", "JWS_REGISTRY", "KeyInfo", "KeyStore", "KeyStoreError", "jws_registry"]

DEFAULT_ALG = "RS256"
#: Signing algorithms the store can generate keys for.
ALGORITHMS = ("RS256", "ES256", "EdDSA")
RSA_KEY_SIZE = 2048
SECRET_BYTES = 32

MANIFEST = "keys.json"
SECRET_FILE = "secret.key"
LOCK_FILE = ".lock"

_STATUSES = ("active", "retired")
# A kid becomes a file name, so only the base64url alphabet a thumbprint uses is accepted.
_KID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")


class KeyStoreError(Exception):
    """The key folder cannot be used as it is; `str()` is the one line shown to the operator."""


@dataclass(frozen=True)
class KeyInfo:
    """One entry of ``keys.json``; timestamps are unix seconds."""

    kid: str
    alg: str
    status: str
    created_at: int
    activates_at: int
    retired_at: int | None


class _Registry(JWSRegistry):
    """joserfc 1.8 flags "EdDSA" as deprecated (RFC 9864) and emits a SecurityWarning on
    every signature and verification. The fully specified replacement ("Ed25519") is not yet
    understood by PyJWT and most relying parties, so we keep "EdDSA" on purpose and keep
    the warning out of every token."""

    def get_alg(self, name: str) -> Any:
        if name == "EdDSA" and self.allowed and name in self.allowed:
            return self.algorithms[name]
        return super().get_alg(name)


def jws_registry(algorithms: Sequence[str]) -> JWSRegistry:
    """A joserfc registry that accepts exactly `algorithms` (EdDSA without the warning)."""
    return _Registry(algorithms=list(algorithms))


#: Pass to joserfc ``jwt.decode`` together with `KeyStore.verification_keys` so tokens are
#: only accepted with the algorithms this store signs with (and EdDSA does not warn).
JWS_REGISTRY: JWSRegistry = jws_registry(ALGORITHMS)


def _now() -> int:
    return int(time.time())


def _fail(path: Path, problem: str) -> KeyStoreError:
    return KeyStoreError(f"{path}: {problem}")


def _reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return getattr(error, "strerror", None) or text


class KeyStore:
    """The key ring in ``directory``; call `open` before anything else."""

    def __init__(
        self,
        directory: Path,
        passphrase: str | None = None,
        *,
        activation_delay: int = 0,
        retention: int = 3600,
    ) -> None:
        if activation_delay < 0 or retention < 0:
            raise ValueError("activation_delay and retention must not be negative")
        self._dir = Path(directory)
        # An empty passphrase protects nothing (and cryptography refuses it), so it means "none".
        self._passphrase = passphrase.encode() if passphrase else None
        self._activation_delay = activation_delay
        self._retention = retention
        self._mutex = threading.RLock()
        self._opened = False
        self._secret: bytes | None = None
        self._infos: tuple[KeyInfo, ...] = ()
        self._stamp: tuple[int, int, int] | None = None
        self._private: dict[str, Key] = {}
        self._public: dict[str, Key] = {}
        #: The published kids and their JWKs: a kid is the key's thumbprint (RFC 7638).
        self._jwks: tuple[tuple[str, ...], list[dict[str, Any]]] | None = None
        self._verifying: tuple[tuple[str, ...], KeySet] | None = None

    # -- paths ---------------------------------------------------------------------------

    @property
    def _manifest(self) -> Path:
        return self._dir / MANIFEST

    @property
    def _secret_path(self) -> Path:
        return self._dir / SECRET_FILE

    def _pem_path(self, kid: str) -> Path:
        return self._dir / f"{kid}.pem"

    # -- public API ----------------------------------------------------------------------

    def open(self) -> KeyStore:
        """Create the ring on first start and load it all, so a broken folder stops the
        server at start-up rather than on the first token request."""
        with self._mutex:
            self._make_dir()
            with self._exclusive():
                stamp, infos = self._read_manifest() if self._manifest.exists() else (None, ())
                first_start = not infos
                if first_start:
                    self._refuse_stray_keys()
                if self._secret_path.exists():
                    self._secret = self._read_secret()
                elif first_start:
                    self._secret = self._write_secret()
                if first_start:
                    now = _now()
                    new = [
                        self._create_key(alg, now, activates_at=now) for alg in ("RS256", "ES256")
                    ]
                    infos = tuple(new)
                    stamp = self._write_manifest(infos)
                self._load_private_keys(infos)
                self._infos, self._stamp = infos, stamp
            self._opened = True
        return self

    def secret(self) -> bytes:
        """The root secret every instance must share (cookies, CSRF, token digests)."""
        with self._mutex:
            self._require_open()
            if self._secret is None:
                if not self._secret_path.exists():
                    raise _fail(
                        self._secret_path,
                        "missing although the key ring exists; restore it from a backup "
                        "(a new root secret would invalidate every session and token digest)",
                    )
                self._secret = self._read_secret()
            return self._secret

    def keys(self) -> list[KeyInfo]:
        """The whole ring as currently on disk, including retired keys."""
        with self._mutex:
            self._refresh()
            return list(self._infos)

    def rotate(self, alg: str = DEFAULT_ALG) -> KeyInfo:
        """Add a key that is published now but only signs after `activation_delay`, so
        relying parties that cache our JWKS learn it before they see tokens signed with it."""
        if alg not in ALGORITHMS:
            raise KeyStoreError(f"unsupported signing algorithm {alg!r} (use one of {ALGORITHMS})")
        with self._mutex:
            self._require_open()
            with self._exclusive():
                _, infos = self._read_manifest()
                self._load_private_keys(infos)
                now = _now()
                info = self._create_key(alg, now, activates_at=now + self._activation_delay)
                infos = (*infos, info)
                self._infos, self._stamp = infos, self._write_manifest(infos)
            return info

    def retire(self, kid: str) -> KeyInfo:
        """Stop signing with a key but keep publishing it for `retention` seconds, so
        tokens it already signed still verify until they expire."""
        with self._mutex:
            self._require_open()
            with self._exclusive():
                _, infos = self._read_manifest()
                self._load_private_keys(infos)
                current = next((info for info in infos if info.kid == kid), None)
                if current is None:
                    raise _fail(self._manifest, f"no key with kid {kid!r}")
                if current.status == "retired":
                    return current  # retiring twice must not extend how long it is published
                if current.alg == DEFAULT_ALG and not any(
                    info.alg == DEFAULT_ALG and info.status == "active" and info.kid != kid
                    for info in infos
                ):
                    raise _fail(
                        self._manifest,
                        f"refusing to retire {kid}: it is the last active {DEFAULT_ALG} key "
                        f"(rotate {DEFAULT_ALG} first)",
                    )
                retired = dataclasses.replace(current, status="retired", retired_at=_now())
                infos = tuple(retired if info.kid == kid else info for info in infos)
                self._infos, self._stamp = infos, self._write_manifest(infos)
            return retired

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
                raise _fail(self._manifest, f"no active {alg} key")
            # Before any rotated key has activated, signing with a published key beats failing.
            ready = [c for c in candidates if c[2].activates_at <= now] or candidates
            info = max(ready, key=lambda c: (c[0], c[1]))[2]
            return self._private[info.kid]

    def public_jwks(self) -> dict[str, Any]:
        """The document served at jwks_uri: keys that sign now or soon, and retired keys
        whose tokens may still be live."""
        with self._mutex:
            self._refresh()
            kids = tuple(info.kid for info in self._published())
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

    # -- state ---------------------------------------------------------------------------

    def _require_open(self) -> None:
        if not self._opened:
            raise RuntimeError("KeyStore.open() must be called first")

    def _published(self) -> list[KeyInfo]:
        now = _now()
        return [
            info
            for info in self._infos
            if info.status == "active"
            or (info.retired_at is not None and info.retired_at + self._retention > now)
        ]

    def _refresh(self) -> None:
        """Pick up a rotation or retirement made by another instance (one stat per call)."""
        self._require_open()
        try:
            st = os.stat(self._manifest)
        except OSError as error:
            raise _fail(self._manifest, f"cannot read ({_reason(error)})") from error
        if (st.st_ino, st.st_mtime_ns, st.st_size) == self._stamp:
            return
        stamp, infos = self._read_manifest()
        self._load_private_keys(infos)
        self._infos, self._stamp = infos, stamp

    # -- files ---------------------------------------------------------------------------

    def _make_dir(self) -> None:
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
    def _exclusive(self) -> Iterator[None]:
        """Serialise first start, rotation and retirement across processes and threads
        (each flock'd descriptor excludes every other, even within one process)."""
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

    def _refuse_stray_keys(self) -> None:
        stray = sorted(p.name for p in self._dir.glob("*.pem"))
        if stray:
            raise _fail(
                self._manifest,
                f"missing or empty but the folder holds {', '.join(stray)}; restore keys.json "
                "from a backup instead of letting a new key ring be generated",
            )

    def _read_manifest(self) -> tuple[tuple[int, int, int], tuple[KeyInfo, ...]]:
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
        infos = tuple(self._parse_entry(path, n, entry) for n, entry in enumerate(entries))
        kids = [info.kid for info in infos]
        if len(set(kids)) != len(kids):
            raise _fail(path, "lists the same kid twice")
        return (st.st_ino, st.st_mtime_ns, st.st_size), infos

    @staticmethod
    def _parse_entry(path: Path, n: int, entry: Any) -> KeyInfo:
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
        return KeyInfo(
            kid=kid,
            alg=alg,
            status=status,
            created_at=timestamp("created_at"),
            activates_at=timestamp("activates_at"),
            retired_at=retired_at,
        )

    def _write_manifest(self, infos: tuple[KeyInfo, ...]) -> tuple[int, int, int]:
        """Replace keys.json atomically, so readers without the lock never see half a file."""
        text = json.dumps([dataclasses.asdict(info) for info in infos], indent=2) + "\n"
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
        st = os.stat(self._manifest)
        return st.st_ino, st.st_mtime_ns, st.st_size

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

    def _read_secret(self) -> bytes:
        path = self._secret_path
        try:
            text = path.read_bytes().strip()
        except OSError as error:
            raise _fail(path, f"cannot read ({_reason(error)})") from error
        try:
            value = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise _fail(path, "is not base64url") from None
        if len(value) < SECRET_BYTES:
            raise _fail(path, f"holds {len(value)} bytes; the root secret needs {SECRET_BYTES}")
        return value

    def _write_secret(self) -> bytes:
        value = secrets.token_bytes(SECRET_BYTES)
        self._write_new_file(
            self._secret_path, base64.urlsafe_b64encode(value).rstrip(b"=") + b"\n"
        )
        return value

    # -- keys ----------------------------------------------------------------------------

    def _create_key(self, alg: str, now: int, *, activates_at: int) -> KeyInfo:
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
        self._write_new_file(self._pem_path(kid), pem)
        self._remember(kid, alg, _wrap(native, alg, kid))
        return KeyInfo(kid, alg, "active", now, activates_at, None)

    def _load_private_keys(self, infos: tuple[KeyInfo, ...]) -> None:
        for info in infos:
            if info.kid not in self._private:
                self._remember(info.kid, info.alg, self._load_private_key(info))

    def _remember(self, kid: str, alg: str, key: Key) -> None:
        """Cache by kid: a reload after another instance rotates only reads the new files."""
        self._private[kid] = key
        self._public[kid] = _wrap(key.public_key, alg, kid)

    def _load_private_key(self, info: KeyInfo) -> Key:
        path = self._pem_path(info.kid)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise _fail(path, f"missing, but {MANIFEST} lists kid {info.kid}") from None
        except OSError as error:
            raise _fail(path, f"cannot read ({_reason(error)})") from error
        try:
            native = serialization.load_pem_private_key(data, password=self._passphrase)
        except TypeError:
            if self._passphrase is None:
                raise _fail(path, "is encrypted but no passphrase is configured") from None
            raise _fail(path, "is not encrypted but a passphrase is configured") from None
        except ValueError:
            problem = (
                "cannot be decrypted with the configured passphrase, or is corrupt"
                if self._passphrase is not None and b"ENCRYPTED" in data
                else "is not a readable PKCS#8 PEM private key"
            )
            raise _fail(path, problem) from None
        except UnsupportedAlgorithm:
            raise _fail(path, "holds an unsupported kind of key") from None
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
            raise _fail(path, f"does not hold {expected} as {MANIFEST} says ({info.alg})")
        key = _wrap(native, info.alg, info.kid)
        if key.thumbprint() != info.kid:
            raise _fail(path, f"holds a key whose thumbprint is not its kid {info.kid}")
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
