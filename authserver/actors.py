"""Who acts through `/api/v1` and /account, as the audit trail records them: a person
(`Caller`, via a token or the browser), or a client acting on its own with `admin`
(`ClientActor`); and running an operation as an administrator, who is read again every time.

Shared by every identity API (users, sessions, consents, organizations, clients, providers,
factors) and the /account page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request

from authserver import audit, rest
from authserver.resource_server import Principal
from authserver.users import models as users
from authserver.web import client_ip

ADMIN = ("admin",)
T = TypeVar("T")


@dataclass(frozen=True)
class Caller:
    """A person acting on their account, through a client's token (`principal`) or in the
    browser (/account), as the audit trail records them."""

    user_id: str
    ip: str
    principal: Principal | None = None

    def record(
        self,
        event: str,
        target_type: str,
        target_id: str,
        *,
        outcome: str = "success",
        **details: Any,
    ) -> None:
        audit.record(
            event,
            outcome=outcome,
            actor_type="user",
            actor_id=self.user_id,
            ip=self.ip,
            target_type=target_type,
            target_id=target_id,
            client_id=self.principal.client_id if self.principal else None,
            via="api" if self.principal else "account_page",
            **details,
        )

    def session_id(self) -> str | None:
        """The browser session the caller's token was issued in, so "end my other
        sessions" spares the one the request comes from."""
        return self.principal.session_id if self.principal is not None else None


async def caller(request: Request, scopes: tuple[str, ...]) -> Caller:
    """The person behind the request's token. Every identity operation acts for a person,
    so a client's own token is refused even with `admin` (docs/security.md J74)."""
    principal = await rest.authenticate(request, scopes)
    user_id = principal.require_user()
    return Caller(user_id, client_ip(request), principal)


@dataclass(frozen=True)
class ClientActor:
    """A client acting on its own with `admin`, which only an operator can register it for
    (automation through client_credentials); the audit trail names the client."""

    client_id: str
    ip: str

    def record(
        self,
        event: str,
        target_type: str,
        target_id: str,
        *,
        outcome: str = "success",
        **details: Any,
    ) -> None:
        audit.record(
            event, outcome=outcome, actor_type="client", actor_id=self.client_id, ip=self.ip,
            target_type=target_type, target_id=target_id, via="api", **details,
        )  # fmt: skip


Admin = Caller | ClientActor


async def admin(request: Request) -> Admin:
    """An administrator: a person whose token carries `admin`, or a client registered for it.
    The token verifier has already dropped `admin` from anyone no longer entitled to it."""
    principal = await rest.authenticate(request, ADMIN)
    if principal.user_id is None:
        return ClientActor(principal.client_id, client_ip(request))
    return Caller(principal.user_id, client_ip(request), principal)


async def as_admin(request: Request, actor: Admin, work: Callable[[], T]) -> T:
    """Run `work` in one unit of work that first reads the administrator behind a person's
    token again, so a demoted or disabled admin loses the power at once (docs/security.md J78)."""

    def unit() -> T:
        if isinstance(actor, Caller):
            users.acting_admin(actor.user_id)
        return work()

    return await rest.run_sync(request, unit)
