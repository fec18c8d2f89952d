"""Sign-in rate limits over HTTP (docs/security.md I71, I73, item 100)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from starlette.testclient import TestClient

from tests import factories
from tests.conftest import audit_events, csrf_token, sign_in_by_form

TOO_MANY = "Too many sign-in attempts."
AppWith = Callable[..., TestClient]


def test_per_ip_limit_answers_429_with_retry_after(
    app_with: AppWith, make: factories.Factory
) -> None:
    """Item 100: every attempt from one IP counts, right or wrong; the next is a 429."""
    client = app_with(login_rate_per_ip=3)
    users = [make.user() for _ in range(4)]

    answers = [sign_in_by_form(client, user.email, "wrong password!") for user in users[:3]]
    refused = sign_in_by_form(client, users[3].email)

    assert [a.status_code for a in answers] == [400, 400, 400]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert TOO_MANY in refused.text
    assert '<button type="submit">Sign in</button>' in refused.text
    assert "sid=" not in refused.headers.get("set-cookie", "")


def test_per_account_limit_refuses_even_the_right_password(
    app_with: AppWith, make: factories.Factory
) -> None:
    """I71: after too many failures the account is soft-locked for the rest of the window; the
    right password gets the same 429, so the lock is no password oracle, and it says when to
    come back (Retry-After) instead of locking the victim out for good."""
    client = app_with(login_rate_per_account=3)
    victim, bystander = make.user(), make.user()

    failures = [
        sign_in_by_form(client, victim.email, "wrong password!").status_code for _ in range(3)
    ]
    right_password = sign_in_by_form(client, victim.email)
    other_account = sign_in_by_form(client, bystander.email)

    assert failures == [400, 400, 400]
    assert right_password.status_code == 429
    assert TOO_MANY in right_password.text
    assert 1 <= int(right_password.headers["retry-after"]) <= 15 * 60
    assert other_account.status_code == 303


def test_unknown_accounts_are_limited_too(app_with: AppWith) -> None:
    """I72: were only real accounts limited, the 429 would tell which emails exist."""
    client = app_with(login_rate_per_account=2)

    codes = [sign_in_by_form(client, "nobody@example.com", "guess").status_code for _ in range(3)]

    assert codes == [400, 400, 429]


def test_a_successful_sign_in_does_not_use_up_the_failure_budget(
    app_with: AppWith, make: factories.Factory
) -> None:
    client = app_with(login_rate_per_account=3)
    user = make.user()

    codes = [
        sign_in_by_form(client, user.email, "wrong password!").status_code,
        sign_in_by_form(client, user.email, "wrong password!").status_code,
        sign_in_by_form(client, user.email).status_code,
        sign_in_by_form(client, user.email).status_code,
        sign_in_by_form(client, user.email, "wrong password!").status_code,
        sign_in_by_form(client, user.email, "wrong password!").status_code,
    ]

    assert codes == [400, 400, 303, 303, 400, 429]


def test_fifty_parallel_wrong_passwords_are_all_counted(
    app_with: AppWith, make: factories.Factory
) -> None:
    """I71 (Keycloak #31726): a burst of parallel guesses gets exactly `limit` password checks;
    the rest are refused before any check, and the right password is refused afterwards."""
    client = app_with(login_rate_per_account=10, login_rate_per_ip=1000)
    user = make.user()
    token = csrf_token(client.get("/login"))

    def guess(n: int) -> int:
        data = {"csrf_token": token, "email": user.email, "password": f"wrong password {n}"}
        return client.post("/login", data=data).status_code

    with ThreadPoolExecutor(max_workers=25) as pool:
        codes = list(pool.map(guess, range(50)))
    after = client.post(
        "/login", data={"csrf_token": token, "email": user.email, "password": factories.PASSWORD}
    )

    assert codes.count(400) == 10
    assert codes.count(429) == 40
    assert after.status_code == 429
    failed = audit_events(client.app.state.services, "login.failed")
    assert len(failed) == 10


def test_unreachable_redis_degrades_to_local_limits(
    app_with: AppWith, make: factories.Factory
) -> None:
    """I73 / item 94: Redis down → sign-in still works, limits still hold in this process,
    and the operator is told once."""
    warnings = Recorder()
    logger = logging.getLogger("authserver.kv")
    logger.addHandler(warnings)
    try:
        client = app_with(redis_url="redis://127.0.0.1:1/0", login_rate_per_ip=3)
        user = make.user()

        first = sign_in_by_form(client, user.email)
        codes = [sign_in_by_form(client, user.email).status_code for _ in range(3)]
    finally:
        logger.removeHandler(warnings)

    assert first.status_code == 303
    assert codes == [303, 303, 429]
    assert len(warnings.messages) == 1
    assert "Redis unreachable" in warnings.messages[0]


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
