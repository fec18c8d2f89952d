"""Recovery codes: ten single-use codes for when the phone or the key is lost.

They are shown once and stored as keyed digests (bound to the person). Spending one is a
conditional UPDATE of one unused row, so each works once even when sent twice in parallel;
a new set replaces the old in the same transaction.
"""

from __future__ import annotations

import secrets

from authserver.mfa import models
from authserver.security import Digester

COUNT = 10
PURPOSE = "mfa.recovery-code"
#: Crockford-like: no 0/O, 1/I/L confusion when read off paper.
ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
GROUP = 5


def normalize(code: str) -> str:
    return "".join(ch for ch in code.lower() if ch.isalnum())[: 4 * GROUP]


def _digest(digester: Digester, user_id: str, code: str) -> str:
    return digester.digest(PURPOSE, f"{user_id}:{normalize(code)}")


def new_codes() -> list[str]:
    """Ten codes of two groups of five characters (about 49 bits each)."""
    codes = []
    for _ in range(COUNT):
        raw = "".join(secrets.choice(ALPHABET) for _ in range(2 * GROUP))
        codes.append(f"{raw[:GROUP]}-{raw[GROUP:]}")
    return codes


def regenerate(digester: Digester, user_id: str) -> list[str]:
    """A fresh set (the old one is void); the codes are returned to be shown once."""
    codes = new_codes()
    models.replace_recovery_codes(user_id, [_digest(digester, user_id, c) for c in codes])
    return codes


def spend(digester: Digester, user_id: str, code: str) -> bool:
    if not code or len(code) > 64 or not code.isprintable():
        return False
    return models.spend_recovery_code(user_id, _digest(digester, user_id, code))
