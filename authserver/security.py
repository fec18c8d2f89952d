"""Secrets and passwords: generation, keyed digests, constant-time checks, argon2id.

Server-generated secrets (client secrets, codes, refresh tokens, session ids) carry 256 bits,
so a fast keyed digest (HMAC-SHA256) is as safe to store as a slow KDF and costs microseconds
instead of a password hash per request. Passwords chosen by people get argon2id.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

TOKEN_BYTES = 32
#: argon2id runs on these few threads, however many requests wait for it: each hash takes
#: `memory_cost` KiB, and the C allocator keeps what every thread once used, so 40 sign-ins
#: at once on the request threadpool grew a worker past 600 MiB. The work is CPU-bound:
#: more threads than cores would not make it faster.
PASSWORD_THREADS = os.cpu_count() or 1
_password_threads = ThreadPoolExecutor(PASSWORD_THREADS, thread_name_prefix="argon2")


def new_token(nbytes: int = TOKEN_BYTES) -> str:
    """A URL-safe random token (RFC 6749 App. A.17 characters only)."""
    return secrets.token_urlsafe(nbytes)


class Digester:
    """HMAC-SHA256 of secrets, keyed by a key derived from the root secret.

    A stolen database without the root secret gives no way to test guesses offline. Each
    purpose gets its own derived key so a digest of one kind never matches another kind.
    """

    def __init__(self, root_secret: bytes) -> None:
        self._root = root_secret

    def key(self, purpose: str) -> bytes:
        return hmac.new(self._root, b"authserver/" + purpose.encode(), hashlib.sha256).digest()

    def digest(self, purpose: str, value: str) -> str:
        return hmac.new(self.key(purpose), value.encode(), hashlib.sha256).hexdigest()

    def matches(self, purpose: str, value: str, stored_digest: str) -> bool:
        return hmac.compare_digest(self.digest(purpose, value), stored_digest)


class Passwords:
    """argon2id hashing with parameters from settings; rehash when they change."""

    def __init__(self, time_cost: int, memory_cost: int, parallelism: int) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism, type=Type.ID
        )
        self._dummy = self._hasher.hash(new_token())

    def hash(self, password: str) -> str:
        return _password_threads.submit(self._hasher.hash, password).result()

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """Check a password; with no stored hash, spend the same time and say no.

        Verifying against a dummy hash keeps unknown accounts indistinguishable by timing.
        """
        try:
            verified = _password_threads.submit(
                self._hasher.verify, stored_hash or self._dummy, password
            ).result()
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return verified and bool(stored_hash)

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True
