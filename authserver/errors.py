"""Errors that know their wire form, and the three renderers: problem+json, OAuth JSON, HTML.

Which renderer answers depends on the surface a path belongs to, never on the exception:
`/api/v1` speaks RFC 9457, the OAuth endpoints speak RFC 6749 §5.2, and pages get an HTML
error page. Bodies carry a fixed public description; diagnostics go to the log only.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("authserver.errors")

OAUTH_JSON_PATHS = (
    "/token", "/revoke", "/introspect", "/userinfo", "/register", "/device_authorization", "/par"
)  # fmt: skip
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class AppError(Exception):
    """An expected failure with a status and a public description."""

    status_code = 400
    title = "Bad Request"

    def __init__(self, detail: str = "", *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail or self.title
        self.headers = headers or {}


class Invalid(AppError):
    status_code = 400
    title = "Bad Request"


class Unauthorized(AppError):
    status_code = 401
    title = "Unauthorized"


class Forbidden(AppError):
    status_code = 403
    title = "Forbidden"


class NotFound(AppError):
    status_code = 404
    title = "Not Found"


class Conflict(AppError):
    status_code = 409
    title = "Conflict"


class TooManyRequests(AppError):
    status_code = 429
    title = "Too Many Requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class Unavailable(AppError):
    status_code = 503
    title = "Service Unavailable"


STATUS_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
OAUTH_ERROR_CODES = {
    400: "invalid_request",
    401: "invalid_client",
    404: "invalid_request",
    405: "invalid_request",
    413: "invalid_request",
    415: "invalid_request",
    431: "invalid_request",
    429: "slow_down",
    500: "server_error",
    503: "temporarily_unavailable",
}


def problem_response(
    status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """RFC 9457 problem details."""
    body = {"type": "about:blank", "title": STATUS_TITLES.get(status, "Error"), "status": status}
    body["detail"] = detail
    body.update(extra)
    headers = {**NO_STORE, **(headers or {})}
    return JSONResponse(body, status, headers=headers, media_type="application/problem+json")


def oauth_error_response(
    error: str, description: str, status: int = 400, *, headers: dict[str, str] | None = None
) -> JSONResponse:
    """RFC 6749 §5.2 error body, never cached."""
    body = {"error": error, "error_description": description}
    return JSONResponse(body, status, headers={**NO_STORE, **(headers or {})})


def html_error_response(
    request: Request, status: int, detail: str, *, headers: dict[str, str] | None = None
) -> Response:
    templates = request.app.state.templates
    context = {"title": STATUS_TITLES.get(status, "Error"), "detail": detail, "status": status}
    return templates.TemplateResponse(
        request, "error.html", context, status_code=status, headers={**NO_STORE, **(headers or {})}
    )


def render_error(
    request: Request, status: int, detail: str, headers: dict[str, str] | None = None
) -> Response:
    """Answer in the format of the surface the request was sent to."""
    path = request.url.path
    if path.startswith("/api/"):
        return problem_response(status, detail, headers=headers)
    if path in OAUTH_JSON_PATHS or path.startswith("/register/"):
        error = OAUTH_ERROR_CODES.get(status, "invalid_request")
        return oauth_error_response(error, detail, status, headers=headers)
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/html" not in accept:
        body = {"error": STATUS_TITLES.get(status, "Error"), "detail": detail}
        return JSONResponse(body, status, headers=headers)
    return html_error_response(request, status, detail, headers=headers)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if exc.status_code < 500 else STATUS_TITLES[500]
    return render_error(request, exc.status_code, detail, dict(exc.headers or {}))


async def handle_app_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    return render_error(request, exc.status_code, exc.detail, exc.headers)


async def handle_database_error(request: Request, exc: Exception) -> Response:
    """The database is down or overloaded: 503 with Retry-After, nothing half-done."""
    log.error("database unavailable: %s", type(exc).__name__)
    return render_error(
        request, 503, "The service is temporarily unavailable.", {"Retry-After": "5"}
    )


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return render_error(request, 500, "An unexpected error occurred.")


class UnexpectedErrorMiddleware:
    """The generic 500, answered inside the other middleware so that it carries the security
    headers and the request id like every other answer (Starlette's own catch-all sits
    outside all middleware). The exception goes on up afterwards, for the server's log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if not started:
                response = await handle_unexpected(Request(scope), exc)
                await response(scope, receive, send)
            raise


def exception_handlers() -> dict[Any, Any]:
    return {
        HTTPException: handle_http_exception,
        AppError: handle_app_error,
        OperationalError: handle_database_error,
        InterfaceError: handle_database_error,
        PoolTimeout: handle_database_error,
        Exception: handle_unexpected,
    }
