"""Passkeys (WebAuthn Level 2/3) with py_webauthn: the options handed to the browser and
the checks of what it sends back.

The relying party ID is the issuer's host and the only accepted origin is the issuer's
origin, so a credential made for this server is useless to a look-alike site and an
assertion relayed from one is refused (its clientDataJSON names the other origin).
Passkeys are discoverable credentials (`residentKey: required`), so the sign-in button
needs no email; user verification is required, so a passkey alone is two factors.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.authentication.verify_authentication_response import VerifiedAuthentication
from webauthn.helpers import (
    base64url_to_bytes,
    bytes_to_base64url,
    parse_authentication_credential_json,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)
from webauthn.registration.verify_registration_response import VerifiedRegistration

from authserver.mfa.models import Passkey
from authserver.settings import Settings

RP_NAME = "authserver"
TIMEOUT_MS = 120_000
#: Challenges live as long as the browser's prompt, and a little more.
CHALLENGE_TTL = 180


class PasskeyRefused(Exception):
    """What the browser sent is not a valid answer to our challenge."""


def rp_id(settings: Settings) -> str:
    return str(urlsplit(settings.issuer).hostname)


def origin(settings: Settings) -> str:
    parts = urlsplit(settings.issuer)
    return f"{parts.scheme}://{parts.netloc}"


def registration_options(
    settings: Settings, *, user_id: str, email: str, name: str, existing: list[Passkey]
) -> tuple[dict[str, Any], bytes]:
    """(options for navigator.credentials.create, the challenge to keep)."""
    options = generate_registration_options(
        rp_id=rp_id(settings),
        rp_name=RP_NAME,
        user_id=user_id.encode(),
        user_name=email,
        user_display_name=name or email,
        timeout=TIMEOUT_MS,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[_descriptor(p) for p in existing],
    )
    return json.loads(options_to_json(options)), options.challenge


def authentication_options(
    settings: Settings, allowed: list[Passkey] | None
) -> tuple[dict[str, Any], bytes]:
    """Options for navigator.credentials.get: any discoverable passkey for a first factor
    (`allowed` None), or one of the person's own for a second."""
    options = generate_authentication_options(
        rp_id=rp_id(settings),
        timeout=TIMEOUT_MS,
        allow_credentials=[_descriptor(p) for p in allowed or []],
        user_verification=UserVerificationRequirement.REQUIRED
        if allowed is None
        else UserVerificationRequirement.PREFERRED,
    )
    return json.loads(options_to_json(options)), options.challenge


def verify_registration(
    settings: Settings, credential: dict[str, Any], challenge: bytes
) -> VerifiedRegistration:
    try:
        return verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp_id(settings),
            expected_origin=origin(settings),
            require_user_verification=True,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError) as error:
        raise PasskeyRefused(str(error)) from None


def credential_id_of(credential: dict[str, Any]) -> str:
    """The base64url credential id an assertion names, to find the stored passkey."""
    try:
        parsed = parse_authentication_credential_json(credential)
    except (WebAuthnException, ValueError, KeyError, TypeError) as error:
        raise PasskeyRefused(str(error)) from None
    return bytes_to_base64url(parsed.raw_id)


def verify_authentication(
    settings: Settings,
    credential: dict[str, Any],
    challenge: bytes,
    passkey: Passkey,
    *,
    require_user_verification: bool,
) -> VerifiedAuthentication:
    """The checked assertion. The signature counter must grow when the authenticator keeps
    one (a clone shows up as a counter that went back); synced passkeys report 0."""
    try:
        return verify_authentication_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp_id(settings),
            expected_origin=origin(settings),
            credential_public_key=passkey.public_key,
            credential_current_sign_count=passkey.sign_count,
            require_user_verification=require_user_verification,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError) as error:
        raise PasskeyRefused(str(error)) from None


def _descriptor(passkey: Passkey) -> PublicKeyCredentialDescriptor:
    return PublicKeyCredentialDescriptor(id=base64url_to_bytes(passkey.credential_id))
