"""The "Continue with <provider>" buttons of the sign-in page, and the hints that pick one.

The sign-in page is rendered from many places; the enabled providers are read through a
short cache (`Federation.enabled`) so rendering it costs no query most of the time.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from authserver.federation.service import Federation
from authserver.services import services

#: `max_age` as OIDC Core §3.1.2.1 allows it (ASCII digits; a bounded length).
MAX_AGE = re.compile(r"[0-9]{1,9}")
IDP_HINT = "idp_hint"


def choices(request: Request, next_url: str | None, login_hint: str) -> list[dict[str, Any]]:
    """One button per enabled provider; the one whose domain matches the `login_hint`
    (from the page or the pending authorization request) first and pre-selected."""
    federation: Federation = services(request).federation
    hint = login_hint or _authorize_param(next_url, "login_hint")
    domain = hint.rpartition("@")[2].lower() if "@" in hint else ""
    query: dict[str, str] = {}
    if next_url:
        query["next"] = next_url
    max_age = request.query_params.get("max_age", "")
    if MAX_AGE.fullmatch(max_age):
        query["max_age"] = max_age
    if hint:
        query["login_hint"] = hint
    buttons = [
        {
            "id": choice.id,
            "name": choice.name,
            "href": f"/login/federated/{choice.id}" + (f"?{urlencode(query)}" if query else ""),
            "preselected": bool(domain) and domain in choice.domains,
        }
        for choice in federation.enabled()
    ]
    buttons.sort(key=lambda button: not button["preselected"])
    return buttons


def hinted(request: Request, next_url: str | None) -> Response | None:
    """`idp_hint` (on /login or in the pending authorization request) naming an enabled
    provider by id or name: straight to that provider, no sign-in page in between."""
    wanted = request.query_params.get(IDP_HINT) or _authorize_param(next_url, IDP_HINT)
    if not wanted:
        return None
    for button in choices(request, next_url, request.query_params.get("login_hint", "")):
        if wanted in (button["id"], button["name"]):
            return RedirectResponse(button["href"], status_code=303)
    return None


def _authorize_param(next_url: str | None, name: str) -> str:
    if not next_url or not next_url.startswith("/authorize?"):
        return ""
    return parse_qs(urlsplit(next_url).query).get(name, [""])[0]
