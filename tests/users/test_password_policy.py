"""One password policy everywhere a password is chosen: common and guessable ones are refused
with the same words on every page and in the API (NIST SP 800-63B §3.1.1.2, ASVS 6.2)."""

from __future__ import annotations

import httpx
import pytest
from starlette.testclient import TestClient

from authserver.errors import Invalid
from authserver.services import Services
from authserver.users import models as users
from tests import factories
from tests.conftest import API, count_rows, csrf_token, is_problem, sign_in_by_form
from tests.factories import bearer
from tests.users.conftest import Inbox, submit, user_by_email

WEAK = ["password", "12345678", "qwertyui", "aaaaaaaa", "abcdefgh", "iloveyou2024"]
STRONG = "velvet orbit lantern quarry"
REFUSAL = users.TOO_GUESSABLE
EMAIL = "margaret@example.com"


@pytest.mark.parametrize("password", WEAK)
def test_the_policy_refuses_common_and_guessable_passwords(password: str) -> None:
    with pytest.raises(Invalid) as refused:
        users.validate_password(password)
    assert refused.value.detail.startswith(REFUSAL)
    assert users.PASSPHRASE_ADVICE in refused.value.detail


@pytest.mark.parametrize(
    ("password", "email", "name"),
    [
        ("margaret@example.com", EMAIL, ""),
        ("margaret1955", EMAIL, ""),
        ("Hamilton1955!", "", "Margaret Hamilton"),
        ("authserver2024", "", ""),
    ],
)
def test_the_person_and_the_product_are_words_an_attacker_tries(
    password: str, email: str, name: str
) -> None:
    with pytest.raises(Invalid):
        users.validate_password(password, email=email, name=name)


@pytest.mark.parametrize("password", [STRONG, "lowercase only but long enough", "Tr0ub4dor&3x"])
def test_no_composition_rules(password: str) -> None:
    """Length and guessability only: a lowercase passphrase is fine."""
    assert users.validate_password(password, email=EMAIL, name="Margaret") == password


def test_the_length_limits_stay() -> None:
    with pytest.raises(Invalid, match="at least 8"):
        users.validate_password("v9#Lq2!")
    with pytest.raises(Invalid, match="at most 1024"):
        users.validate_password(STRONG + "x" * 1024)
    long_enough = (STRONG + " ") * 36
    assert users.validate_password(long_enough[:1024]) == long_enough[:1024]


@pytest.mark.parametrize("password", ["password", "aaaaaaaa"])
def test_signup_refuses_a_weak_password(
    client: TestClient, services: Services, password: str
) -> None:
    answer = submit(client, "/signup", name="Ada", email="ada@example.com", password=password)
    assert answer.status_code == 400
    assert REFUSAL in answer.text
    assert "several unrelated words" in answer.text
    assert count_rows(services.db, "users") == 0


def assert_refused_and_unchanged(answer: httpx.Response, services: Services) -> None:
    assert answer.status_code == 400
    assert REFUSAL in answer.text
    user = user_by_email(services, EMAIL)
    assert user is not None
    assert services.passwords.verify(user.password_hash, factories.PASSWORD)


def test_reset_refuses_a_weak_password(
    client: TestClient, make: factories.Factory, inbox: Inbox, services: Services
) -> None:
    make.user(EMAIL)
    assert submit(client, "/reset-password", email=EMAIL).status_code == 200
    link = inbox.link(EMAIL, "/reset-password/confirm")
    page = client.get(link)
    form = {
        "csrf_token": csrf_token(page),
        "token": link.split("token=")[1],
        "password": "12345678",
    }
    answer = client.post("/reset-password/confirm", data=form)
    assert_refused_and_unchanged(answer, services)


def test_the_change_page_refuses_a_weak_password(
    client: TestClient, make: factories.Factory, services: Services
) -> None:
    make.user(EMAIL)
    assert sign_in_by_form(client, EMAIL).status_code == 303
    page = client.get("/account/password")
    form = {
        "csrf_token": csrf_token(page),
        "current_password": factories.PASSWORD,
        "new_password": "qwertyui",
    }
    answer = client.post("/account/password", data=form)
    assert_refused_and_unchanged(answer, services)


def test_the_api_gives_the_same_answer(
    client: TestClient, make: factories.Factory, tokens: factories.TokenFactory
) -> None:
    """Changing one's own password and an administrator creating an account: problem+json
    with the very message the pages show."""
    user = make.user(EMAIL, name="Margaret")
    token = tokens.access_token(user, "users:write").token
    body = {"current_password": factories.PASSWORD, "new_password": "password"}
    answer = client.post(API + "/users/me/password", json=body, headers=bearer(token))
    assert is_problem(answer, 400)
    with pytest.raises(Invalid) as expected:
        users.validate_password("password")
    assert answer.json()["detail"] == expected.value.detail

    root = make.user("root@example.com", is_admin=True)
    admin_token = tokens.access_token(root, "admin").token
    body = {"email": "new@example.com", "password": "new@example.com"}
    answer = client.post(API + "/users", json=body, headers=bearer(admin_token))
    assert is_problem(answer, 400)
    assert answer.json()["detail"].startswith(REFUSAL)
