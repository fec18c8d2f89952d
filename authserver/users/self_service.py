"""What the self-service pages (sign-up in `users.signup`, passwords in `users.passwords`) share.

Every page that takes an email address gives one answer whether or not an account uses it,
so none of them tells a visitor who is registered (docs/security.md I72); what differs goes only
into the mailbox. Emailed links are single-use digests in `email_tokens`: opening one shows
a form, and only its POST spends the link, so mail scanners that prefetch links spend nothing.
Mail leaves after the response, once the transaction has committed (`outbound.deliver`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from jinja2 import Environment
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from authserver import audit, outbound
from authserver.errors import Invalid
from authserver.outbound import Mail
from authserver.rendering import message, render
from authserver.services import Services, services
from authserver.users import models as users
from authserver.web import CSRF_FIELD, client_ip, read_form

log = logging.getLogger("authserver.users")

HOUR = 3600
LINK_INVALID = "It has expired or has already been used: each link works once, for a limited time."


@dataclass(frozen=True)
class Letter:
    """A message to write from `templates/mail/<template>.txt` (first line: the subject)."""

    template: str
    to: str
    values: dict[str, str] = field(default_factory=dict)


def mail_later(request: Request, response: Response, letter: Letter | None) -> Response:
    """Send `letter` once `response` has gone out (so after the commit), in the threadpool."""
    if letter is not None:
        templates = request.app.state.templates.env
        response.background = BackgroundTask(_send, services(request), templates, letter)
    return response


def _send(services: Services, templates: Environment, letter: Letter) -> None:
    """Write and send a letter, at most `mail_rate_per_address` per address and hour, so
    nobody can make the server flood someone's mailbox. Past the limit the page still reads
    the same; the mail is just not sent."""
    limit = services.settings.mail_rate_per_address
    if services.limiter.check("mail-address", letter.to, limit, HOUR) is not None:
        log.warning("mail not sent: over %d messages to one address this hour", limit)
        return
    template = templates.get_template(f"mail/{letter.template}.txt")
    written = template.render(issuer=services.settings.issuer, **letter.values)
    subject, _, text = written.partition("\n\n")
    outbound.deliver(services.mailer, Mail(letter.to, subject, text + "\n"))


async def link_by_email(
    request: Request,
    template: str,
    kind: str,
    issue: Callable[[Services, str, str], Letter | None],
) -> Response:
    """A page that asks for an emailed link by address: `issue(services, email, ip)` writes
    the letter, or None when no link goes out, and either way the answer is `check_email`'s."""
    svc = services(request)
    if request.method == "GET":
        return render(request, template, {"email": ""})
    form = await posted_form(request, svc)
    email = form.get("email", "")
    refused = await refuse_ip(request, svc, template, {"email": email})
    if refused is not None:
        return refused
    try:
        email = users.validate_email(email)
    except Invalid as exc:
        return render(request, template, {"email": email, "error": exc.detail}, status=400)
    letter = await svc.db.run_sync(issue, svc, email, client_ip(request))
    return check_email(request, svc, kind, letter)


async def refuse_ip(
    request: Request, services: Services, template: str, context: dict[str, object]
) -> Response | None:
    """429 once an IP has asked for more sign-ups or emailed links than the hourly limit; the
    same for everyone, so it says nothing about accounts."""
    limit = services.settings.mail_rate_per_ip
    retry_after = await run_in_threadpool(
        services.limiter.check, "mail-ip", client_ip(request), limit, HOUR
    )
    if retry_after is None:
        return None
    error = f"Too many requests from your network. Wait {duration(retry_after, round_up=True)}."
    headers = {"Retry-After": str(retry_after)}
    return render(request, template, {**context, "error": error}, status=429, headers=headers)


def check_email(request: Request, services: Services, kind: str, letter: Letter | None) -> Response:
    """The one answer to every request that may send mail (`kind`: signup, reset or resend).
    It has no form and does not repeat the address, so the answers for a registered and an
    unknown address are byte for byte the same."""
    lifetime = duration(services.settings.password_reset_ttl)
    response = render(request, "check_email.html", {"kind": kind, "lifetime": lifetime})
    return mail_later(request, response, letter)


def link_invalid(request: Request, href: str, label: str) -> Response:
    """The answer to an emailed link that is unknown, spent, expired or for another purpose."""
    return message(
        request,
        "This link can't be used",
        LINK_INVALID,
        action=(href, label),
        status=400,
        alert=True,
    )


def audit_own(
    event: str, user_id: str, *, ip: str, outcome: str = "success", **details: object
) -> None:
    """An event a person caused on their own account."""
    audit.record(
        event,
        outcome=outcome,
        actor_type="user",
        actor_id=user_id,
        ip=ip,
        target_type="user",
        target_id=user_id,
        **details,
    )


async def posted_form(request: Request, services: Services) -> dict[str, str]:
    """The posted form, once its CSRF token checks out (403 otherwise, before anything else)."""
    form = await read_form(request)
    services.csrf.verify(request, form.get(CSRF_FIELD))
    return form


def duration(seconds: int, *, round_up: bool = False) -> str:
    """Seconds in words for people: '30 minutes', '24 hours', 'a minute'."""
    if seconds >= HOUR and (seconds % HOUR == 0 or round_up):
        count, unit = math.ceil(seconds / HOUR), "hour"
    else:
        count, unit = max(1, math.ceil(seconds / 60)), "minute"
    return f"a{'n' if unit == 'hour' else ''} {unit}" if count == 1 else f"{count} {unit}s"
