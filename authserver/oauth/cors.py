"""Cross-origin access for browser-based apps: /token, /revoke and /userinfo; and for anyone
to the public documents (discovery, JWKS, protected resource metadata).

A single-page app exchanges its code and refreshes from JavaScript, so those endpoints
must answer CORS (RFC 9700 §2.6 allows it there; OAuth 2.0 for Browser-Based Apps §6.3.2).
An origin is allowed for a client when one of the client's registered redirect URIs lives
on it, the rule node-oidc-provider ships by default: registering the redirect URI already
says where the app runs. At /token and /revoke only public clients qualify, since a
secret has no business in a browser. The check runs before the request does anything: a
form POST is a "simple" CORS request that the browser sends without asking first, so a
refused origin must not get as far as redeeming a code. The authorization endpoint, the
introspection endpoint and the HTML pages never answer cross-origin (docs/security.md A21).
An answer raised rather than returned (a 429 from the per-client rate limit) carries the
same headers, so the app can read `Retry-After`.
Client registration (`registration`) answers every origin with `*`: it holds no
cookie-bound state, and its callers prove themselves with bearer tokens.

Preflights are answered for any origin: the browser sends no credentials or body with
them, so the client is unknown until the real request arrives, which is where the rule
applies. No endpoint here allows credentials: cookies never cross origins.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from authserver.oauth.clients import Client
from authserver.web import same_origin

PREFLIGHT_MAX_AGE = "600"
#: What a browser app sends: a form or JSON body, a bearer token, Basic never (public
#: clients have no secret) but harmless to list for confidential server-side fetches.
ALLOWED_HEADERS = "Authorization, Content-Type, DPoP"


def foreign_origin(headers: Headers, issuer: str) -> str | None:
    """The request's `Origin` when it is another site's, else None: same-origin requests
    and non-browser callers (which send no Origin) need no CORS."""
    origin = headers.get("origin")
    if origin is None or origin == "null" or same_origin(origin, issuer):
        return None
    return origin


def origins_of(client: Client) -> set[str]:
    """The origins of the client's registered redirect URIs, in their serialised form."""
    return {_origin(uri) for uri in client.redirect_uris} - {""}


def allows(client: Client | None, origin: str, *, public_only: bool) -> bool:
    if client is None or (public_only and not client.is_public):
        return False
    return _origin(origin) in origins_of(client)


def allow(response: Response, origin: str) -> Response:
    """Let the page at `origin` read this response (and its challenge, on a 401)."""
    for name, value in headers(origin).items():
        if name == "Vary":
            response.headers.append(name, value)
        else:
            response.headers[name] = value
    return response


def headers(origin: str) -> dict[str, str]:
    """What `allow` adds, for an answer rendered elsewhere (a 429 raised as `AppError`)."""
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": "WWW-Authenticate, Retry-After, DPoP-Nonce",
        "Vary": "Origin",
    }


def preflight(methods: Iterable[str]) -> Callable[[Request], Awaitable[Response]]:
    """An OPTIONS endpoint for a route that browser apps call with `methods`."""
    allowed = ", ".join(methods)

    async def endpoint(request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is None or request.headers.get("access-control-request-method") is None:
            return Response(status_code=204, headers={"Allow": f"{allowed}, OPTIONS"})
        headers = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": allowed,
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            "Vary": "Origin",
        }
        return Response(status_code=204, headers=headers)

    return endpoint


async def public_preflight(request: Request) -> Response:
    """OPTIONS for the public documents (discovery, JWKS, resource metadata), which any
    origin may read without credentials."""
    headers = {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Methods": "GET",
        "Access-Control-Allow-Headers": ALLOWED_HEADERS,
        "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
        "Allow": "GET, HEAD, OPTIONS",
    }
    return Response(status_code=204, headers=headers)


def _origin(uri: str) -> str:
    """RFC 6454 §6.1 serialisation (lowercase scheme and host, default port left out),
    which is what a browser puts in `Origin`; "" for anything that has no such origin."""
    parts = urlsplit(uri)
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        return ""
    if default_port is None or not host or parts.username is not None:
        return ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default_port) else "")
