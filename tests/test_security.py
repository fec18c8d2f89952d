"""Secrets and passwords (docs/security.md I69-I70, §0 entropy)."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

from authserver.security import PASSWORD_THREADS, Digester, Passwords, new_token

FAST = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}


def test_tokens_have_256_bits_in_url_safe_characters() -> None:
    token = new_token()
    assert len(token) >= math.ceil(256 / 6)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert new_token() != token


def test_digests_are_keyed_and_separated_by_purpose() -> None:
    digester = Digester(b"k" * 32)
    assert digester.digest("code", "abc") != Digester(b"j" * 32).digest("code", "abc")
    assert digester.digest("code", "abc") != digester.digest("refresh", "abc")
    assert digester.matches("code", "abc", digester.digest("code", "abc"))
    assert not digester.matches("code", "abd", digester.digest("code", "abc"))


def test_passwords_are_argon2id_with_visible_parameters() -> None:
    """docs/security.md I69: the stored hash names argon2id and its parameters."""
    stored = Passwords(**FAST).hash("correct horse battery staple")
    assert stored.startswith("$argon2id$v=19$m=8,t=1,p=1$")


def test_long_passwords_are_not_truncated() -> None:
    """docs/security.md I70: 128 characters work; a difference at character 73 matters."""
    passwords = Passwords(**FAST)
    long_password = "a" * 128
    stored = passwords.hash(long_password)
    assert passwords.verify(stored, long_password)
    assert not passwords.verify(stored, "a" * 72 + "b" + "a" * 55)


def test_verify_without_a_hash_says_no() -> None:
    """docs/security.md I72: unknown accounts run a dummy verify and fail."""
    assert not Passwords(**FAST).verify(None, "anything")
    assert not Passwords(**FAST).verify("not-a-hash", "anything")


def test_rehash_needed_when_parameters_rise() -> None:
    """docs/security.md I69: raised parameters are applied on the next successful sign-in."""
    stored = Passwords(**FAST).hash("pw-pw-pw-pw")
    stronger = Passwords(time_cost=2, memory_cost=16, parallelism=1)
    assert stronger.verify(stored, "pw-pw-pw-pw")
    assert stronger.needs_rehash(stored)
    assert not Passwords(**FAST).needs_rehash(stored)


def test_passwords_are_hashed_on_a_few_threads_however_many_ask() -> None:
    """The argon2 memory of a worker is bounded by `PASSWORD_THREADS`, not by the number
    of sign-ins at once."""
    passwords = Passwords(**FAST)
    stored = passwords.hash("pw-pw-pw-pw")
    seen: set[str] = set()
    hasher = passwords._hasher

    class Recording:
        def verify(self, *args: str) -> bool:
            seen.add(threading.current_thread().name)
            return hasher.verify(*args)

    passwords._hasher = Recording()  # type: ignore[assignment]
    with ThreadPoolExecutor(16) as callers:
        results = list(callers.map(lambda _: passwords.verify(stored, "pw-pw-pw-pw"), range(64)))
    assert all(results)
    assert 0 < len(seen) <= PASSWORD_THREADS
    assert all(name.startswith("argon2") for name in seen)
