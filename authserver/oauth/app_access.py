"""The OAuth side of `authserver.app_access`: grants and consents, for identity's pages and API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from authserver.app_access import AllowedApp
from authserver.oauth import backchannel, consent, tokens


class OAuthAppAccess:
    def __init__(self, *, backchannel_logout: bool = True) -> None:
        self._backchannel_logout = backchannel_logout

    def end_grants(self, user_id: str, *, reason: str, keep_session_id: str | None = None) -> int:
        return tokens.revoke_user_families(user_id, reason=reason, keep_session_id=keep_session_id)

    def sessions_ended(self, session_ids: Sequence[str]) -> None:
        if self._backchannel_logout:
            backchannel.enqueue(session_ids)

    def allowed_apps(self, user_id: str, *, limit: int) -> list[AllowedApp]:
        return [
            AllowedApp(row.id, name, consent.describe(row.scope, name), row.created_at)
            for row, name in consent.page_for_user(user_id, after=None, limit=limit)
        ]

    def revoke_app(self, actor: Any, consent_id: str) -> None:
        consent.revoke_own(actor, consent_id)
