"""When a second factor is asked for, and what a session says about how it was made.

Authentication context classes (`acr`, advertised as `acr_values_supported`):

- `urn:authserver:acr:pwd`: one factor, the password.
- `urn:authserver:acr:mfa`: more than one factor: a password and an authenticator app code,
  a passkey or a recovery code; or a passkey with user verification on its own (something
  the person has, unlocked by something they know or are).

Authentication methods (`amr`, RFC 8176): `pwd` for the password, `otp` for an app code,
`hwk` for a passkey bound to its device or `swk` for one that may be synced (its backup
flag), with `user` since user verification was required; `mfa` whenever more than one
factor was used. A recovery code adds `mfa` alone: RFC 8176 has no name for it.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

from authserver.mfa import models
from authserver.settings import Settings

FACTOR_PAGE = "/login/factor"
ACR_PWD = "urn:authserver:acr:pwd"
ACR_MFA = "urn:authserver:acr:mfa"
ACR_VALUES = (ACR_PWD, ACR_MFA)

#: What each kind of second factor adds to `amr`, and the session column recording its use.
OTP = "otp"
RECOVERY_CODE = "recovery_code"
FACTOR_COLUMNS = {OTP: "otp_at", "passkey": "passkey_at", RECOVERY_CODE: "recovery_code_at"}


def passkey_methods(backup_eligible: bool) -> list[str]:
    return ["swk" if backup_eligible else "hwk", "user"]


def acr_for(amr: str) -> str:
    return ACR_MFA if "mfa" in amr.split() else ACR_PWD


def with_factor(amr: str, added: list[str]) -> str:
    """`amr` after a second factor: the methods so far, the new ones, and `mfa`."""
    methods = amr.split()
    for method in [*added, "mfa"]:
        if method not in methods:
            methods.append(method)
    return " ".join(methods)


def asks_for_mfa(acr_values: str | None) -> bool:
    """Whether the relying party's `acr_values` (in order of preference) prefer multi-factor:
    the first value we support decides."""
    for value in (acr_values or "").split():
        if value in ACR_VALUES:
            return value == ACR_MFA
    return False


def required(settings: Settings, user_id: str) -> bool:
    """The person, the administrator (`AUTHSERVER_MFA_REQUIRED`) or one of their
    organizations requires a second factor. Runs in a unit of work."""
    return (
        settings.mfa_required
        or models.person_requires(user_id)
        or models.any_organization_requires(user_id)
    )


def needs_second_step(settings: Settings, user_id: str, acr_values: str | None) -> bool:
    """After a right password: the person has a factor, and someone requires it (the
    person, the administrator, an organization) or the relying party asked for it."""
    if not models.has_factor(user_id):
        return False
    return asks_for_mfa(acr_values) or required(settings, user_id)


def factor_url(next_url: str) -> str:
    return f"{FACTOR_PAGE}?{urlencode({'next': next_url})}"


def acr_values_of(next_url: str | None) -> str | None:
    """The `acr_values` of the authorization request a sign-in continues to."""
    if not next_url:
        return None
    return parse_qs(urlsplit(next_url).query).get("acr_values", [None])[0]
