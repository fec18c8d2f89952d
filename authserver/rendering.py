"""HTML pages from the Jinja templates in `templates/`: the one way a feature renders a page.

Its own plumbing module rather than part of `web`, which `services` imports: `render` needs
`services` for the CSRF token, and living in `web` it would close an import cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from authserver.errors import NO_STORE
from authserver.services import services

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
STATIC_DIR = TEMPLATES_DIR / "static"


def make_templates() -> Jinja2Templates:
    return Jinja2Templates(directory=str(TEMPLATES_DIR))


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """A page with a fresh CSRF token for its forms; never cached, since it carries one."""
    csrf = services(request).csrf
    form_token, cookie_value = csrf.token(request)
    response = request.app.state.templates.TemplateResponse(
        request,
        template,
        {**context, "csrf_token": form_token},
        status_code=status,
        headers={**NO_STORE, **(headers or {})},
    )
    csrf.set_cookie(response, cookie_value)
    return response


def message(
    request: Request,
    title: str,
    text: str,
    *,
    action: tuple[str, str] | None = None,
    status: int = 200,
    alert: bool = False,
) -> Response:
    """The plain page that tells a person how something went, with at most one way on."""
    context = {"title": title, "text": text, "action": action, "alert": alert}
    return render(request, "message.html", context, status=status)
