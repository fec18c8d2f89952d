"""The single-use guards of second factors, raced on threads (each its own connection and
transaction): one app code step, one recovery code and one WebAuthn challenge are each
taken by exactly one contender, on every backend."""

from __future__ import annotations

import time

from authserver.mfa import models as mfa_models
from authserver.mfa import recovery, totp
from authserver.services import Services
from authserver.users.models import User
from tests.mfa.conftest import enrol_totp, recovery_codes
from tests.oauth.test_races import race


def test_one_of_many_consumers_of_a_time_step_wins(services: Services, user: User) -> None:
    enrol_totp(services, user)
    step = int(time.time()) // totp.STEP
    wins = race(lambda: services.db.call(mfa_models.take_step, user.id, step, confirm=False))
    assert wins.count(True) == 1


def test_one_of_many_consumers_of_a_recovery_code_wins(services: Services, user: User) -> None:
    [code, *_] = recovery_codes(services, user)
    wins = race(lambda: services.db.call(recovery.spend, services.digester, user.id, code))
    assert wins.count(True) == 1


def test_one_of_many_consumers_of_a_challenge_wins(services: Services, user: User) -> None:
    ticket = services.db.call(
        mfa_models.save_challenge,
        purpose="authenticate", binding="b", challenge=b"c", user_id=None, ttl=60,
    )  # fmt: skip

    def consume() -> bool:
        found = services.db.call(
            mfa_models.consume_challenge, ticket, purpose="authenticate", binding="b"
        )
        return found is not None

    assert race(consume).count(True) == 1
