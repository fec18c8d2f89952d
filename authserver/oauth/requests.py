"""Starlette → Authlib: a request read once, asynchronously, then handed to a worker thread.

Authlib is synchronous and does database work in its hooks, while Starlette reads the body
with `await`. So a route reads the request into a frozen `RequestSnapshot` and Authlib gets
an `OAuth2Request` built from it inside `Database.run_sync`. A Starlette `Request` never
reaches the thread.

The URI is the configured issuer plus the path and query, never `request.url`: Authlib's
`InsecureTransportError` check sees it, and a TLS-terminating proxy changes the scheme.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from authlib.oauth2.rfc6749 import (
    JsonPayload,
    JsonRequest,
    OAuth2Payload,
    OAuth2Request,
)
from starlette.datastructures import Headers
from starlette.requests import Request

from authserver import jsonsafe
from authserver.jsonsafe import UnsafeJson
from authserver.web import client_ip

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FIELDS = 100
#: A JSON request body (client metadata) is read up to this size...
MAX_JSON_BODY = 64 * 1024
#: ...and parsed only when no array or object in it is nested deeper than this: a client
#: metadata document needs 4 levels (`jwks.keys[].x5c[]`), and ten thousand `[` would make
#: the parser recurse until it fails (docs/security.md G60).
MAX_JSON_DEPTH = 8
#: Parameters whose value Authlib copies into `error_description`, which RFC 6749 §5.2
#: restricts to %x20-21 / %x23-5B / %x5D-7E.
KEYWORD_PARAMETERS = ("response_type", "grant_type")

Params = tuple[tuple[str, str], ...]


class MalformedRequest(Exception):
    """The request cannot be read as an OAuth request at all: answer `invalid_request`
    (with `status` 413 when the body is too large to read)."""

    def __init__(self, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.description = description
        self.status = status


@dataclass(frozen=True)
class RequestSnapshot:
    """Everything Authlib may look at, frozen: method, URI, headers, query and form."""

    method: str
    uri: str
    headers: Headers
    query: Params = ()
    form: Params = ()
    client_ip: str = ""
    json: Any = field(default=None)
    #: For a pushed authorization request (RFC 9126) expanded from its `request_uri`: the
    #: parameters the browser sent, which the interaction's own URLs carry on.
    carried: Params | None = None
    #: The thumbprint of the key a verified DPoP proof came with (RFC 9449): tokens issued
    #: for this request are bound to it.
    dpop_jkt: str | None = None

    @property
    def params(self) -> Params:
        return self.query + self.form

    @property
    def url_params(self) -> Params:
        """What a URL continuing this request (sign-in, consent) carries."""
        return self.carried if self.carried is not None else self.params

    def first(self, name: str) -> str | None:
        return next((value for key, value in self.params if key == name), None)


async def read_authorization_request(
    request: Request, issuer: str, *, with_body: bool
) -> RequestSnapshot:
    """/authorize (GET query, or POST form per OIDC Core §3.1.2.1) and the /consent page,
    whose query string carries the original authorization request.

    Repeated parameters are kept: the grant refuses them once it knows whether the
    redirect URI can be trusted with the error (RFC 6749 §3.1, §4.1.2.1).
    """
    form: Params = ()
    if with_body and request.method == "POST":
        form = await _read_form(request)
    return _snapshot(request, issuer, _parse(request.scope.get("query_string", b"")), form)


#: RFC 8707 §2: `resource` may be repeated at the token endpoint.
REPEATABLE = {"resource"}


async def read_form_request(request: Request, issuer: str) -> RequestSnapshot:
    """/token, /revoke, /introspect: a form-encoded POST body and nothing else.

    RFC 6749 §3.2 and §3.1: parameters in the body only, "MUST NOT be included more than
    once"; a JSON body or parameters in the query string are `invalid_request`.
    """
    query = _parse(request.scope.get("query_string", b""))
    if query:
        raise MalformedRequest("Parameters must be sent in the form-encoded request body.")
    form = await _read_form(request)
    names = [name for name, _ in form]
    for name in names:
        if names.count(name) > 1 and name not in REPEATABLE:
            raise MalformedRequest(f"The {_printable(name)} parameter is repeated.")
    return _snapshot(request, issuer, (), form)


async def read_resource_request(request: Request, issuer: str) -> RequestSnapshot:
    """A protected resource request (/userinfo): the bearer token travels in a header."""
    form: Params = ()
    if request.method == "POST" and _content_type(request) == FORM_TYPE:
        form = await _read_form(request)
    return _snapshot(request, issuer, _parse(request.scope.get("query_string", b"")), form)


async def read_json_request(request: Request, issuer: str) -> RequestSnapshot:
    """A JSON body (RFC 7591 registration): an object, or `invalid_request`.

    The body is bounded before it is read in full and its nesting before it is parsed, so
    neither a huge nor a deeply nested document costs more than refusing it. Text that is
    not valid Unicode (a lone surrogate escape) is refused here, before any of it can reach
    the database."""
    if _content_type(request) != "application/json":
        raise MalformedRequest("The request body must be application/json.")
    raw = await _read_bounded(request, MAX_JSON_BODY)
    try:
        document = jsonsafe.loads(raw, max_depth=MAX_JSON_DEPTH, max_bytes=MAX_JSON_BODY)
        json.dumps(document, ensure_ascii=False, allow_nan=False).encode()
    except UnsafeJson as exc:
        raise MalformedRequest(str(exc)) from None
    except (ValueError, UnicodeError):
        raise MalformedRequest("The request body is not valid JSON.") from None
    if not isinstance(document, dict):
        raise MalformedRequest("The request body must be a JSON object.")
    snapshot = _snapshot(request, issuer, _parse(request.scope.get("query_string", b"")), ())
    return dataclasses.replace(snapshot, json=document)


async def _read_bounded(request: Request, limit: int) -> bytes:
    too_large = MalformedRequest(f"The request body is larger than {limit // 1024} KB.", 413)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _snapshot(request: Request, issuer: str, query: Params, form: Params) -> RequestSnapshot:
    for name, value in query + form:
        if name in KEYWORD_PARAMETERS and _printable(value) != value:
            raise MalformedRequest(f"The {name} parameter holds characters it cannot have.")
    raw_query = request.scope.get("query_string", b"").decode("latin-1")
    # `request.url.path` without building the whole URL: the path, its ? # \ escaped.
    path = request.scope["path"].replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
    uri = f"{issuer}{path}" + (f"?{raw_query}" if raw_query else "")
    return RequestSnapshot(
        method=request.method,
        uri=uri,
        headers=Headers(raw=list(request.headers.raw)),
        query=query,
        form=form,
        client_ip=client_ip(request),
    )


async def _read_form(request: Request) -> Params:
    if _content_type(request) != FORM_TYPE:
        raise MalformedRequest(f"The request body must be {FORM_TYPE}.")
    return _parse(await request.body())


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _parse(raw: bytes) -> Params:
    """Strict x-www-form-urlencoded: UTF-8 only, no NUL, bounded, and (RFC 6749 §3.1)
    "parameters sent without a value MUST be treated as if they were omitted"."""
    try:
        pairs = parse_qsl(
            raw.decode("utf-8"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise MalformedRequest("The parameters are not valid UTF-8 form encoding.") from None
    if any("\x00" in name or "\x00" in value for name, value in pairs):
        raise MalformedRequest("The parameters must not contain NUL characters.")
    return tuple((name, value) for name, value in pairs if value != "")


def _printable(text: str) -> str:
    """`text` without the characters RFC 6749 §5.2 forbids in an error description."""
    return "".join(ch for ch in text if 0x20 <= ord(ch) <= 0x7E and ch not in '"\\')


class SnapshotPayload(OAuth2Payload):
    """Authlib's view of the parameters: `data` holds the first value of each."""

    def __init__(self, params: Params) -> None:
        self._data: dict[str, str] = {}
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for name, value in params:
            self._data.setdefault(name, value)
            self._datalist[name].append(value)

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class SnapshotRequest(OAuth2Request):
    """Authlib's request, as flask_oauth2's `FlaskOAuth2Request`, over a snapshot.

    `family_id` is where a grant says which token family the tokens it issues belong to,
    next to Authlib's own per-request state (`client`, `user`, `authorization_code`, ...).
    """

    def __init__(self, snapshot: RequestSnapshot) -> None:
        super().__init__(method=snapshot.method, uri=snapshot.uri, headers=snapshot.headers)
        self.snapshot = snapshot
        self.payload = SnapshotPayload(snapshot.params)
        self._args = dict(reversed(snapshot.query))
        self._form = dict(reversed(snapshot.form))
        self.family_id: str | None = None

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class SnapshotJsonPayload(JsonPayload):
    def __init__(self, document: Any) -> None:
        self._document = document

    @property
    def data(self) -> Any:
        return self._document


class SnapshotJsonRequest(JsonRequest):
    def __init__(self, snapshot: RequestSnapshot) -> None:
        super().__init__(snapshot.method, snapshot.uri, snapshot.headers)
        self.snapshot = snapshot
        self.payload = SnapshotJsonPayload(snapshot.json)


def proof_key(request: Any) -> str | None:
    """The key of the token request's verified DPoP proof (RFC 9449), if it sent one."""
    snapshot = getattr(request, "snapshot", None)
    return snapshot.dpop_jkt if snapshot is not None else None
