"""The access people gave to apps, as identity sees it: a port that `oauth` implements.

STYLE.md: identity (users, sessions, organizations) never imports `oauth`. Most of what
identity does to tokens needs no call at all, because tokens are checked by reference: an
ended session or a disabled account fails every token bound to it, wherever it is
presented. Three things cannot work that way, and they go through this port, which
`app.py` fills with the OAuth package's implementation (`Services.app_access`):

- a password change, a deactivation or a deleted account ends every grant the person made,
  including `offline_access` grants that outlive browser sessions;
- /account lists the apps a person allowed, and revokes one;
- the apps signed in through a session that ended are told so (Back-Channel Logout).

Every method runs inside the caller's unit of work, so its writes commit or roll back
with the change that caused them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class AllowedApp:
    """One app a person allowed: the consent, the app's name, and the scopes in words."""

    consent_id: str
    client_name: str
    scopes: list[str]
    since: datetime


class AppAccess(Protocol):
    def end_grants(self, user_id: str, *, reason: str, keep_session_id: str | None = None) -> int:
        """Revoke the person's token families, except those bound to the browser session
        `keep_session_id` (the one making the change); returns how many ended."""
        ...

    def sessions_ended(self, session_ids: Sequence[str]) -> None:
        """These sessions just ended: queue a logout notice for every app that holds tokens
        from them; sent after the commit, never while the person waits."""
        ...

    def allowed_apps(self, user_id: str, *, limit: int) -> list[AllowedApp]:
        """The apps the person allowed, oldest first."""
        ...

    def revoke_app(self, actor: Any, consent_id: str) -> None:
        """Withdraw one of `actor`'s consents and the tokens it granted, recorded in the
        audit trail as `actor`'s; NotFound for anyone else's."""
        ...
