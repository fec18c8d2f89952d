"""Token families (one per grant), refresh-token digests, and issued access tokens.

A family is everything issued from one authorization: revoking it kills its refresh tokens
and, by reference, its access tokens. Only digests of refresh tokens are stored. Every
check of a token asks whether its family is still live (not revoked or expired, user and
client active, and the browser session alive unless `offline_access` was granted), so
ending a session or disabling a user takes effect without touching the tokens.

What goes inside an access token, and how it is signed and checked, is `token_format`;
this module is where issued tokens live and die.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    String,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from authserver import audit, db, resource_server
from authserver.db import Base, current_session, new_id, rowcount, utcnow
from authserver.oauth import clients
from authserver.oauth.requests import proof_key
from authserver.oauth.token_format import ORGANIZATION, EndUser
from authserver.organizations import models as orgs
from authserver.security import Digester
from authserver.sessions.models import LoginSession
from authserver.settings import Settings
from authserver.users import models as users


class TokenFamily(Base):
    __tablename__ = "token_families"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    session_id: Mapped[str | None] = mapped_column(
        ForeignKey("login_sessions.id", ondelete="SET NULL"), index=True
    )
    code_id: Mapped[str | None] = mapped_column(
        ForeignKey("authorization_codes.id", ondelete="SET NULL"), unique=True
    )
    organization_id: Mapped[str | None] = mapped_column(
        ForeignKey("organizations.id", ondelete="SET NULL")
    )
    scope: Mapped[str] = mapped_column(String(1000))
    offline: Mapped[bool] = mapped_column(Boolean, default=False)
    auth_time: Mapped[datetime | None]
    amr: Mapped[str | None] = mapped_column(String(100))
    acr: Mapped[str | None] = mapped_column(String(100))
    #: RFC 8707 resources the grant is for (None: this server's API only).
    resources: Mapped[list[str] | None] = mapped_column(JSON)
    #: The DPoP key a public client's refresh tokens are bound to (RFC 9449 §5).
    dpop_jkt: Mapped[str | None] = mapped_column(String(43))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(40))


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    family_id: Mapped[str] = mapped_column(
        ForeignKey("token_families.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    rotated_at: Mapped[datetime | None]


class AccessToken(Base):
    """An issued JWT access token's `jti`: the handle for revocation and introspection."""

    __tablename__ = "access_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str | None] = mapped_column(
        ForeignKey("token_families.id", ondelete="CASCADE"), index=True
    )
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime | None]
    #: RFC 8693: the access token this one was exchanged for (`token_exchange`), which must
    #: stay live for this one to count: revoking it revokes every token exchanged from it.
    subject_jti: Mapped[str | None] = mapped_column(String(64))


#: Statements built once and executed with parameters on the unit of work's connection: the
#: rows every token request writes (an ORM flush, a statement built per call, or the ORM's
#: execute path, which these Core statements do not need, cost more than the signature).
_INSERT_REFRESH_TOKEN = insert(db.table_of(RefreshToken))
_INSERT_ACCESS_TOKEN = insert(db.table_of(AccessToken))
#: The state of an access token that every introspection and resource call reads: five
#: columns by primary key, read fresh from the database, with no ORM object to build.
_ACCESS_TOKENS = db.table_of(AccessToken)
_ACCESS_TOKEN_STATE = select(
    _ACCESS_TOKENS.c.revoked_at,
    _ACCESS_TOKENS.c.expires_at,
    _ACCESS_TOKENS.c.client_id,
    _ACCESS_TOKENS.c.family_id,
    _ACCESS_TOKENS.c.subject_jti,
).where(_ACCESS_TOKENS.c.jti == bindparam("jti"))
REFRESH_PURPOSE = "refresh_token"
SUCCESSOR_PURPOSE = "refresh_successor"
# -- families ------------------------------------------------------------------------------


def store_grant(
    digester: Digester,
    settings: Settings,
    request: Any,
    token: dict[str, Any],
    *,
    code_id: str | None,
    scope: str,
    resources: list[str] | None,
    now: datetime,
) -> None:
    """What a grant that a person approved (a code, a device code) stores with its first
    tokens: the family, the refresh token's digest, and on `request` the family that
    `save_token` files the access token under. A public client's refresh tokens are bound
    to the key of its DPoP proof; a confidential client's are not, as it authenticates
    anyway (RFC 9449 §5)."""
    family = open_family(
        client_id=request.client.id,
        end_user=request.user,
        code_id=code_id,
        scope=scope,
        now=now,
        ttl=settings.refresh_token_ttl,
        resources=resources,
        dpop_jkt=proof_key(request) if request.client.is_public else None,
    )
    request.family_id = family.id
    if "refresh_token" in token:
        add_refresh_token(
            digester, token["refresh_token"], family, now, settings.refresh_token_idle_ttl
        )


def open_family(
    *,
    client_id: str,
    end_user: EndUser,
    code_id: str | None,
    scope: str,
    now: datetime,
    ttl: int,
    resources: list[str] | None = None,
    dpop_jkt: str | None = None,
) -> TokenFamily:
    family = TokenFamily(
        client_id=client_id,
        user_id=end_user.user.id,
        session_id=end_user.session_id,
        code_id=code_id,
        organization_id=end_user.organization_id,
        scope=scope,
        offline="offline_access" in scope.split(),
        auth_time=end_user.auth_time,
        amr=end_user.amr,
        acr=end_user.acr,
        resources=resources or None,
        dpop_jkt=dpop_jkt,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl),
    )
    current_session().add(family)
    current_session().flush()
    return family


def family_is_live(family: TokenFamily, now: datetime) -> bool:
    """Validity by reference: a family lives while it is unrevoked and unexpired, its user
    and client are active, its user still belongs to the organization it was granted for,
    and its browser session is alive unless the user granted `offline_access` (OIDC Core §11)."""
    if family.revoked_at is not None or family.expires_at <= now:
        return False
    if clients.query(family.client_id) is None:
        return False
    if family.user_id is not None:
        user = users.get(family.user_id)
        if user is None or not user.is_active:
            return False
        organization = family.organization_id or ""
        if ORGANIZATION in family.scope.split() and not orgs.role_of(organization, user.id):
            return False
    if family.offline:
        return True
    login = current_session().get(LoginSession, family.session_id) if family.session_id else None
    return login is not None and login.is_active(now)


def end_user_of(family: TokenFamily) -> EndUser | None:
    user = users.get(family.user_id) if family.user_id else None
    if user is None or not user.is_active or family.auth_time is None:
        return None
    return EndUser(user, family.session_id, family.auth_time, family.amr or "pwd", family.acr)


def revoke_family(family_id: str, reason: str, now: datetime) -> bool:
    result = current_session().execute(
        update(TokenFamily)
        .where(TokenFamily.id == family_id, TokenFamily.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
        .execution_options(synchronize_session="fetch")
    )
    return rowcount(result) == 1


def revoke_issued_from_code(code_id: str, now: datetime) -> TokenFamily | None:
    """OAuth 2.1 §4.1.3: a code used twice revokes everything issued from it."""
    family = current_session().scalar(select(TokenFamily).where(TokenFamily.code_id == code_id))
    if family is not None:
        revoke_family(family.id, "code_reuse", now)
    return family


def revoke_user_families(
    user_id: str, *, reason: str, keep_session_id: str | None = None, now: datetime | None = None
) -> int:
    """Revoke every live family of a user, except the session-bound ones of
    `keep_session_id` (the browser that made the change); offline grants always end."""
    condition = [TokenFamily.user_id == user_id, TokenFamily.revoked_at.is_(None)]
    if keep_session_id is not None:
        condition.append(
            TokenFamily.session_id.is_distinct_from(keep_session_id) | TokenFamily.offline
        )
    result = current_session().execute(
        update(TokenFamily)
        .where(*condition)
        .values(revoked_at=now or db.utcnow(), revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )
    return int(rowcount(result) or 0)


# -- refresh tokens ------------------------------------------------------------------------


@dataclass
class PresentedRefreshToken:
    """A refresh token as presented at /token, with its family (Authlib's TokenMixin)."""

    raw: str
    row: RefreshToken
    family: TokenFamily

    def check_client(self, client: Any) -> bool:
        return self.family.client_id == client.get_client_id()

    def get_scope(self) -> str:
        """The family's scope: a narrower refresh request never narrows the grant."""
        return self.family.scope


def add_refresh_token(
    digester: Digester, raw: str, family: TokenFamily, now: datetime, idle_ttl: int
) -> None:
    """Store a refresh token's digest; it expires when unused for `idle_ttl`, and never
    later than its family (ASVS 10.4.8). One INSERT: every refresh writes one."""
    current_session().connection().execute(
        _INSERT_REFRESH_TOKEN,
        {
            "id": new_id(),
            "digest": digester.digest(REFRESH_PURPOSE, raw),
            "family_id": family.id,
            "created_at": now,
            "expires_at": min(family.expires_at, now + timedelta(seconds=idle_ttl)),
        },
    )


def successor_of(digester: Digester, raw: str) -> str:
    """The refresh token that replaces `raw`, derived with a keyed HMAC: a retried refresh
    gets the same successor again, while only digests are ever stored."""
    mac = hmac.new(digester.key(SUCCESSOR_PURPOSE), raw.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def find_refresh_token(digester: Digester, raw: str | None) -> PresentedRefreshToken | None:
    if not raw or len(raw) > 200:
        return None
    row = current_session().scalar(
        select(RefreshToken).where(RefreshToken.digest == digester.digest(REFRESH_PURPOSE, raw))
    )
    if row is None:
        return None
    family = current_session().get(TokenFamily, row.family_id)
    return PresentedRefreshToken(raw, row, family) if family is not None else None


def mark_rotated(token_id: str, now: datetime) -> bool:
    """Retire a refresh token: True for the one caller whose conditional UPDATE won."""
    result = current_session().execute(
        update(RefreshToken)
        .where(RefreshToken.id == token_id, RefreshToken.rotated_at.is_(None))
        .values(rotated_at=now)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def reload(presented: PresentedRefreshToken) -> PresentedRefreshToken:
    """Read the token and its family again, as another transaction committed them."""
    current_session().refresh(presented.row)
    current_session().refresh(presented.family)
    return presented


def slide(presented: PresentedRefreshToken, now: datetime, idle_ttl: int) -> None:
    """A non-rotating refresh token stays valid while it is used (idle expiry slides)."""
    presented.row.expires_at = min(presented.family.expires_at, now + timedelta(seconds=idle_ttl))


# -- access tokens -------------------------------------------------------------------------


def save_token(token: dict[str, Any], request: Any) -> None:
    """Authlib's `save_token`: remember the access token's `jti`, the handle by which it is
    revoked and introspected. The grant has stored the family and refresh token already."""
    claims = json.loads(resource_server.b64url_decode(token["access_token"].split(".")[1]))
    client, end_user = request.client, request.user
    record_access_token(
        claims, request.family_id, end_user.user.id if end_user is not None else None
    )
    audit.record(
        "token.issued",
        actor_type="client",
        actor_id=client.id,
        ip=request.snapshot.client_ip,
        target_type="user" if end_user is not None else "client",
        target_id=end_user.user.id if end_user is not None else client.id,
        grant_type=request.payload.grant_type,
        family_id=request.family_id,
        scope=token.get("scope", ""),
        refresh_token="refresh_token" in token,
    )
    current_session().flush()


def record_access_token(
    claims: dict[str, Any],
    family_id: str | None,
    user_id: str | None,
    *,
    subject_jti: str | None = None,
) -> None:
    """The row of an issued access token: one INSERT, as every token request writes one,
    straight on the unit of work's connection."""
    current_session().connection().execute(
        _INSERT_ACCESS_TOKEN,
        {
            "jti": claims["jti"],
            "family_id": family_id,
            "client_id": claims["client_id"],
            "user_id": user_id,
            "created_at": datetime.fromtimestamp(claims["iat"], UTC),
            "expires_at": datetime.fromtimestamp(claims["exp"], UTC),
            "subject_jti": subject_jti,
        },
    )


def access_token_is_live(claims: dict[str, Any], now: datetime) -> bool:
    """An access token still counts: recorded, not revoked, its family live, and, for an
    exchanged token, every token it was exchanged from still live (docs/security.md Q125).
    Each link is five columns read fresh by primary key, with no ORM object to build."""
    connection = current_session().connection()
    jti: str | None = claims["jti"]
    expected_client: str | None = claims["client_id"]
    while jti is not None:
        state = connection.execute(_ACCESS_TOKEN_STATE, {"jti": jti}).first()
        if state is None:
            return False
        revoked_at, expires_at, client_id, family_id, jti = state
        if revoked_at is not None or expires_at <= now:
            return False
        if expected_client is not None and client_id != expected_client:
            return False
        expected_client = None
        if family_id is None:
            if clients.query(client_id) is None:
                return False
        else:
            family = current_session().get(TokenFamily, family_id)
            if family is None or not family_is_live(family, now):
                return False
            if family.client_id != client_id and clients.query(client_id) is None:
                return False
    return True


def access_token_row(jti: str) -> AccessToken | None:
    return current_session().get(AccessToken, jti)


def session_of(jti: str) -> str | None:
    """The browser session an access token's grant was made in (None for a client's own)."""
    token = current_session().get(AccessToken, jti)
    family = (
        current_session().get(TokenFamily, token.family_id) if token and token.family_id else None
    )
    return family.session_id if family is not None else None


def revoke_access_token(jti: str, now: datetime) -> bool:
    result = current_session().execute(
        update(AccessToken)
        .where(AccessToken.jti == jti, AccessToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def purge(now: datetime) -> dict[str, int]:
    """Delete what can no longer be used. Rotated refresh tokens stay until their family
    expires, because presenting one again is how reuse is detected."""
    session = current_session()
    families = session.execute(delete(TokenFamily).where(TokenFamily.expires_at < now))
    refresh = session.execute(
        delete(RefreshToken).where(RefreshToken.expires_at < now, RefreshToken.rotated_at.is_(None))
    )
    access = session.execute(delete(AccessToken).where(AccessToken.expires_at < now))
    return {
        "token_families": int(rowcount(families) or 0),
        "refresh_tokens": int(rowcount(refresh) or 0),
        "access_tokens": int(rowcount(access) or 0),
    }
