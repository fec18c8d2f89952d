"""Authenticator apps (RFC 6238 TOTP): enrolment, the secret at rest, and checking a code.

The HOTP arithmetic is cryptography's. The secret is stored encrypted (AES-GCM under a key
derived from the root secret, the person's id as associated data, so a row copied onto
another account does not decrypt). A code is accepted for the current 30-second step and
one step either side (clock drift), and a step is taken at most once: `models.take_step`
moves the last used step forward with a conditional UPDATE, so a replayed code, and any
code older than one already accepted, is refused by the database.
"""

from __future__ import annotations

import base64
import hmac
import io
import os
import secrets
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from authserver.mfa import models
from authserver.security import Digester

STEP = 30
DIGITS = 6
WINDOW = 1
SECRET_BYTES = 20
ENCRYPTION_PURPOSE = "mfa.totp-secret"
NONCE_BYTES = 12


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def as_base32(secret: bytes) -> str:
    """The form people type into an app: RFC 4648 base32 without padding."""
    return base64.b32encode(secret).decode().rstrip("=")


def encrypt(digester: Digester, user_id: str, secret: bytes) -> str:
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(digester.key(ENCRYPTION_PURPOSE)).encrypt(nonce, secret, user_id.encode())
    return base64.urlsafe_b64encode(nonce + sealed).decode()


def decrypt(digester: Digester, user_id: str, stored: str) -> bytes | None:
    try:
        raw = base64.urlsafe_b64decode(stored.encode())
        aead = AESGCM(digester.key(ENCRYPTION_PURPOSE))
        return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], user_id.encode())
    except (InvalidTag, ValueError):
        return None


def _totp(secret: bytes) -> TOTP:
    """HMAC-SHA1 as RFC 6238 defines it and every authenticator app implements it (HMAC
    needs no collision resistance)."""
    return TOTP(secret, DIGITS, SHA1(), STEP)  # noqa: S303


def code_at(secret: bytes, moment: float) -> str:
    return _totp(secret).generate(int(moment)).decode()


def provisioning_uri(secret: bytes, account: str, issuer_name: str) -> str:
    return _totp(secret).get_provisioning_uri(account, issuer_name)


def qr_data_url(uri: str) -> str:
    """The enrolment QR code as an SVG data: URL (the CSP allows data: images only)."""
    import segno  # 5 MiB, loaded by the first enrolment

    out = io.BytesIO()
    segno.make(uri, error="m").save(out, kind="svg", scale=5, border=2)
    return "data:image/svg+xml;base64," + base64.b64encode(out.getvalue()).decode()


def matching_step(secret: bytes, code: str, now: float | None = None) -> int | None:
    """The time step whose code `code` is, within the window, or None."""
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not code.isascii() or not code.isdigit():
        return None
    current = int(now if now is not None else time.time()) // STEP
    found = None
    for step in range(current - WINDOW, current + WINDOW + 1):
        expected = _totp(secret).generate(step * STEP)
        if hmac.compare_digest(expected, code.encode()):
            found = step
    return found


def check(digester: Digester, user_id: str, code: str, *, confirm: bool = False) -> bool:
    """Whether `code` is right and unused for the person's app (or, with `confirm`, for
    the app being enrolled, which it then confirms). Runs in a unit of work."""
    factor = models.totp_of(user_id)
    if factor is None or (factor.confirmed_at is None) != confirm:
        return False
    secret = decrypt(digester, user_id, factor.secret)
    if secret is None:
        return False
    step = matching_step(secret, code)
    return step is not None and models.take_step(user_id, step, confirm=confirm)
