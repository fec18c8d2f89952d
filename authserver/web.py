"""Browser plumbing: security headers, CSRF tokens, form bodies, request size limits.

CSRF uses a signed double submit: a random value in a `__Host-` cookie and the same value,
signed with the root secret, in every form. A forged cross-site POST has neither, and the
Origin check refuses it even before that.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authserver.errors import Forbidden, render_error
from authserver.security import new_token

CSRF_FIELD = "csrf_token"
CSRF_MAX_AGE = 4 * 3600

#: `connect-src 'self'`: passkeys.js posts the WebAuthn ceremony to this origin (and only there).
#: No `form-action`: browsers apply it to the redirect after a form POST, and the sign-in and
#: consent forms end in a redirect to the client's redirect URI, which may be any https
#: origin, a loopback port, or a native app's private-use scheme that no source list covers.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' https: data:; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def cookie_name(name: str, https: bool) -> str:
    """`__Host-` pins a cookie to this origin (Secure, Path=/, no Domain); only under https."""
    return f"__Host-{name}" if https else name


def security_headers(https: bool) -> list[tuple[bytes, bytes]]:
    """Headers every response gets (RFC 9700 §4.16, ASVS 3.4), encoded."""
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    if https:
        headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    return [(name.lower().encode(), value.encode()) for name, value in headers.items()]


class SecurityHeadersMiddleware:
    """`security_headers` on every response, unless the route set one of them itself."""

    def __init__(self, app: ASGIApp, *, https: bool) -> None:
        self.app = app
        self._raw = security_headers(https)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # A list of our own, as MutableHeaders makes: ASGI allows any iterable.
                headers = message["headers"] = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend(header for header in self._raw if header[0] not in present)
            await send(message)

        await self.app(scope, receive, send_with_headers)


#: Request header limits, checked again here behind the server's own (see `cli.serve`).
MAX_HEADER_COUNT = 100
MAX_HEADER_BYTES = 32 * 1024
MAX_URL_BYTES = 8 * 1024
MAX_BODY_BYTES = 64 * 1024


class BodySizeLimitMiddleware:
    """413 for bodies over the limit, 414 for over-long URLs, 431 for too many or too large
    request headers (RFC 6585 §5), before anything parses them."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int = MAX_BODY_BYTES,
        max_url: int = MAX_URL_BYTES,
        max_headers: int = MAX_HEADER_COUNT,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.max_url = max_url
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) > self.max_url:
            await _refuse(scope, receive, send, 414, "The URL is too long.")
            return
        headers = scope["headers"]
        declared = None
        for name, value in headers:
            if name == b"content-length":
                declared = value
        if headers_over_limit(headers, self.max_headers, self.max_header_bytes):
            detail = "The request headers are too many or too large."
            await _refuse(scope, receive, send, 431, detail)
            return
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            await _refuse(scope, receive, send, 413, "The request body is too large.")
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:
            await _refuse(scope, receive, send, 413, "The request body is too large.")


def headers_over_limit(
    headers: list[tuple[bytes, bytes]],
    max_headers: int = MAX_HEADER_COUNT,
    max_bytes: int = MAX_HEADER_BYTES,
) -> bool:
    """Too many request headers, or too many bytes of them, for RFC 6585's 431."""
    return len(headers) > max_headers or sum(len(n) + len(v) + 4 for n, v in headers) > max_bytes


class BodyTooLarge(Exception):
    pass


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    """The refusal in the format of the surface asked (`errors.render_error`): OAuth JSON,
    problem+json under /api, a page for people; the connection is closed after it."""
    response = render_error(Request(scope, receive), status, detail, {"Connection": "close"})
    await response(scope, receive, send)


class Csrf:
    """Issue and check CSRF tokens bound to a per-browser cookie."""

    def __init__(self, secret: bytes, *, issuer: str) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="authserver.csrf")
        self._issuer = issuer
        self.cookie = cookie_name("csrf", issuer.startswith("https://"))

    def token(self, request: Request) -> tuple[str, str]:
        """(form token, cookie value): reuse the browser's cookie value when it has one."""
        value = request.cookies.get(self.cookie) or new_token(16)
        return str(self._serializer.dumps(value)), value

    def set_cookie(self, response: Response, value: str) -> None:
        response.set_cookie(
            self.cookie,
            value,
            httponly=True,
            samesite="lax",
            secure=self._issuer.startswith("https://"),
            path="/",
        )

    def verify(self, request: Request, submitted: str | None) -> None:
        """Refuse a POST whose Origin is foreign or whose token does not match the cookie."""
        origin = request.headers.get("origin")
        if origin is not None and origin != "null" and not same_origin(origin, self._issuer):
            raise Forbidden("Cross-site form submission refused.")
        cookie = request.cookies.get(self.cookie)
        if not submitted or not cookie:
            raise Forbidden("The form has expired. Go back, reload the page and try again.")
        try:
            value = self._serializer.loads(submitted, max_age=CSRF_MAX_AGE)
        except BadSignature:
            raise Forbidden(
                "The form has expired. Go back, reload the page and try again."
            ) from None
        if not isinstance(value, str) or not hmac.compare_digest(value, cookie):
            raise Forbidden("The form has expired. Go back, reload the page and try again.")


async def read_form(request: Request) -> dict[str, str]:
    """The text fields of a small browser form (first value wins); an upload is a 400, and
    nothing is left open."""
    async with request.form(max_files=0, max_fields=50) as form:
        fields: dict[str, str] = {}
        for name, value in form.multi_items():
            if isinstance(value, str):
                fields.setdefault(name, value)
        return fields


def client_ip(request: Request) -> str:
    """The caller's address: the peer, or what a trusted proxy (`AUTHSERVER_TRUSTED_PROXIES`,
    applied by uvicorn before the app runs) says it forwarded for. Rate limits count this."""
    return request.client.host if request.client else ""


def same_origin(origin: str, issuer: str) -> bool:
    a, b = urlsplit(origin), urlsplit(issuer)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)
