"""Every table, imported in one place so that `Base.metadata` is complete (Alembic, tests)."""

from authserver.audit import AuditEvent
from authserver.db import Base
from authserver.federation.models import IdentityProvider, LinkedIdentity
from authserver.keystore import ServerSecret, SigningKey
from authserver.mfa.models import (
    MfaPreference,
    OrganizationMfaPolicy,
    Passkey,
    RecoveryCode,
    TotpFactor,
    WebAuthnChallenge,
)
from authserver.oauth.backchannel import BackchannelLogout
from authserver.oauth.clients import Client
from authserver.oauth.codes import AuthorizationCode
from authserver.oauth.consent import Consent
from authserver.oauth.device import DeviceAuthorization
from authserver.oauth.par import PushedRequest
from authserver.oauth.registration import InitialAccessToken
from authserver.oauth.resources import Resource
from authserver.oauth.tokens import AccessToken, RefreshToken, TokenFamily
from authserver.organizations.models import Membership, Organization
from authserver.sessions.models import LoginSession
from authserver.users.models import EmailToken, User

__all__ = [
    "AccessToken",
    "AuditEvent",
    "AuthorizationCode",
    "BackchannelLogout",
    "Base",
    "Client",
    "Consent",
    "DeviceAuthorization",
    "EmailToken",
    "IdentityProvider",
    "InitialAccessToken",
    "LinkedIdentity",
    "LoginSession",
    "Membership",
    "MfaPreference",
    "Organization",
    "OrganizationMfaPolicy",
    "Passkey",
    "PushedRequest",
    "RecoveryCode",
    "RefreshToken",
    "Resource",
    "ServerSecret",
    "SigningKey",
    "TokenFamily",
    "TotpFactor",
    "User",
    "WebAuthnChallenge",
]
