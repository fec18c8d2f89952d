"""Plumbing for the `/api/v1` resources: bearer authentication, scopes, JSON bodies, cursors,
and the OpenAPI document, all from one table of `Operation`s per feature.

The API is a resource server of this issuer: it accepts only our own access tokens for the
audience `<issuer>/api/v1`. How a token is verified is the OAuth package's business; it is
handed in as `Services.verify_access_token` so that identity features never import `oauth`.
Errors are RFC 9457 problem+json (rendered by `errors.py` for every `/api/` path).
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ParamSpec, TypeVar, Union, get_args, get_origin, get_type_hints

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from authserver import jsonsafe
from authserver.db import ID_MAX, Position
from authserver.errors import NO_STORE, AppError, Invalid, NotFound
from authserver.jsonsafe import UnsafeJson
from authserver.resource_server import (
    API_SCOPES,
    PresentedToken,
    Principal,
    TokenError,
    bearer_token,
    challenge_headers,
    check_sender,
    insufficient_scope,
)
from authserver.services import services

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
API_PREFIX = "/api/v1"


class UnsupportedMediaType(AppError):
    status_code = 415
    title = "Unsupported Media Type"


async def authenticate(request: Request, any_of: Sequence[str]) -> Principal:
    """The caller of an API request, holding at least one of `any_of` scopes (or `admin`).

    RFC 6750 §2.1 header only: a token in the query string or body is not looked at. Every
    refusal carries the one challenge `resource_server.bearer_challenge` writes, pointing at
    the API's RFC 9728 metadata.
    """
    svc = services(request)
    resource = svc.settings.api_audience
    uri = f"{svc.settings.issuer}{request.url.path}"

    def verify(presented: PresentedToken) -> Principal:
        principal = svc.verify_access_token(presented.token, audience=resource)
        check_sender(
            principal.claims,
            presented,
            request.headers,
            method=request.method,
            uri=uri,
            proofs=svc.dpop,
        )
        return principal

    try:
        principal: Principal = await svc.db.run_sync(verify, bearer_token(request.headers))
        if any_of and not principal.scopes & {*any_of, "admin"}:
            raise insufficient_scope(any_of)
    except TokenError as error:
        raise BearerRefusal(resource, error) from None
    return principal


class BearerRefusal(AppError):
    """An RFC 6750 / RFC 9449 refusal of an API request (status from the error), in
    problem+json."""

    def __init__(self, resource: str, error: TokenError) -> None:
        super().__init__(error.description, headers=challenge_headers(resource, error))
        self.status_code = error.status


async def read_json(request: Request, model: type[Any]) -> Any:
    """The JSON body as an instance of the dataclass `model`.

    Unknown members are refused rather than ignored, so `{"is_admin": true}` can never slip
    into an update (mass assignment, docs/security.md J77); wrong types are a 400, never a 500.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType("Send the body as application/json.")
    try:
        body = jsonsafe.loads(await request.body())
    except UnsafeJson as exc:
        raise Invalid(str(exc)) from None
    except ValueError:
        raise Invalid("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise Invalid("The body must be a JSON object.")
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise Invalid("The body contains text that is not valid Unicode.") from None
    hints = get_type_hints(model)
    known = {f.name for f in dataclasses.fields(model)}
    unknown = sorted(set(body) - known)
    if unknown:
        raise Invalid(f"Unknown or read-only member(s): {', '.join(unknown)}.")
    for name, value in body.items():
        if not _matches(value, hints[name]):
            raise Invalid(f"`{name}` has the wrong type.")
    missing = [
        f.name
        for f in dataclasses.fields(model)
        if f.name not in body
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise Invalid(f"Missing member(s): {', '.join(missing)}.")
    return model(**body)


def _matches(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


class Cursors:
    """Opaque, signed pagination cursors: a client can hand back only what we gave it."""

    def __init__(self, secret: bytes) -> None:
        self._serializer = URLSafeSerializer(secret, salt="authserver.cursor")

    def encode(self, position: Sequence[str]) -> str:
        return str(self._serializer.dumps(list(position)))

    def decode(self, cursor: str | None) -> list[str] | None:
        if not cursor:
            return None
        try:
            position = self._serializer.loads(cursor)
        except BadSignature:
            raise Invalid("The cursor is not valid.") from None
        if not isinstance(position, list) or not all(isinstance(p, str) for p in position):
            raise Invalid("The cursor is not valid.")
        return position


def page_size(request: Request) -> int:
    raw = request.query_params.get("page_size")
    if raw is None:
        return DEFAULT_PAGE_SIZE
    if (
        not (raw.isascii() and raw.isdigit() and len(raw) <= 3)
        or not 1 <= int(raw) <= MAX_PAGE_SIZE
    ):
        raise Invalid(f"page_size must be a whole number from 1 to {MAX_PAGE_SIZE}.")
    return int(raw)


class Listing:
    """Keyset pagination for one listing (`?page_size=&cursor=`).

    A cursor names the listing it was made for, e.g. `sessions:<user id>`, and is refused
    anywhere else, so one user's cursor never pages through another's rows (docs/security.md J75).
    Fetch `limit` rows from just past `after` (the last row already shown, in the listing's
    own order), then let `page` answer with `size` of them and a cursor if more follow.
    """

    def __init__(self, request: Request, name: str) -> None:
        self.name = name
        self.size = page_size(request)
        #: One more row than a page holds, to tell whether more follow.
        self.limit = self.size + 1
        self._cursors = Cursors(services(request).digester.key("cursor"))
        self.after = self._decode(request.query_params.get("cursor"))

    def _decode(self, cursor: str | None) -> Position | None:
        position = self._cursors.decode(cursor)
        if position is None:
            return None
        if len(position) != 3 or position[0] != self.name:
            raise Invalid("The cursor does not belong to this listing.")
        try:
            return datetime.fromisoformat(position[1]), position[2]
        except ValueError:
            raise Invalid("The cursor is not valid.") from None

    def page(
        self,
        rows: list[Any],
        position: Callable[[Any], Position],
        shape: Callable[[Any], dict[str, Any]],
    ) -> JSONResponse:
        """The first `size` of `rows` (up to `limit` fetched), and the cursor to the rest."""
        cursor = None
        if len(rows) > self.size:
            rows = rows[: self.size]
            at, row_id = position(rows[-1])
            cursor = self._cursors.encode([self.name, at.isoformat(), row_id])
        return JSONResponse({"items": [shape(row) for row in rows], "next_cursor": cursor})


def path_id(request: Request, name: str) -> str:
    """An id from the path; one that no row could have is simply not found (and never
    reaches the database, which may refuse control characters with an error)."""
    value = str(request.path_params[name])
    if not value or len(value) > ID_MAX or not value.isprintable():
        raise NotFound("Not found.")
    return value


P = ParamSpec("P")
T = TypeVar("T")


async def run_sync(request: Request, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn` in one unit of work of the app's database (`Database.run_sync`)."""
    return await services(request).db.run_sync(fn, *args, **kwargs)


def created(
    body: dict[str, Any], path: str, *, headers: dict[str, str] | None = None
) -> JSONResponse:
    """201 with the new resource, which lives at `path` under the API prefix."""
    return JSONResponse(body, 201, headers={**(headers or {}), "Location": API_PREFIX + path})


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Operation:
    """One API operation: its route and its OpenAPI description, declared side by side."""

    method: str
    path: str
    handler: Handler
    summary: str
    scopes: tuple[str, ...]
    response: dict[str, Any] | None = None
    status: int = 200
    request: dict[str, Any] | None = None
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: tuple[int, ...] = (400, 401, 403, 404)


def routes(operations: Sequence[Operation]) -> list[Route]:
    """Starlette routes, one per path, dispatching on method (405 for the others). Answers
    carry personal data, so none is kept in any cache (problems neither: `errors.py`)."""
    by_path: dict[str, dict[str, Handler]] = {}
    for operation in operations:
        by_path.setdefault(operation.path, {})[operation.method] = operation.handler

    def dispatch(handlers: dict[str, Handler]) -> Handler:
        async def endpoint(request: Request) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            response = await handlers[method](request)
            response.headers.update(NO_STORE)
            return response

        endpoint.__name__ = "api_" + "_".join(sorted(h.__name__ for h in handlers.values()))
        return endpoint

    return [
        Route(API_PREFIX + path, dispatch(handlers), methods=list(handlers))
        for path, handlers in by_path.items()
    ]


PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}


def openapi(operations: Sequence[Operation], issuer: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document, built from the same table the routes come from."""
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_params(op.path)
        ] + [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in op.query.items()
        ]
        responses: dict[str, Any] = {
            str(op.status): (
                {"description": "Success"}
                if op.response is None
                else {
                    "description": "Success",
                    "content": {"application/json": {"schema": op.response}},
                }
            )
        }
        for status in (*op.errors, 415) if op.request else op.errors:
            responses[str(status)] = {
                "description": "Problem",
                "content": {"application/problem+json": {"schema": PROBLEM}},
            }
        entry: dict[str, Any] = {
            "summary": op.summary,
            "operationId": op.handler.__name__,
            "security": [{"bearer": list(op.scopes)}],
            "parameters": parameters,
            "responses": responses,
        }
        if op.request is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": op.request}},
            }
        paths.setdefault(API_PREFIX + op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "authserver identity API", "version": "1"},
        "servers": [{"url": issuer}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "oauth2",
                    "flows": {
                        "authorizationCode": {
                            "authorizationUrl": f"{issuer}/authorize",
                            "tokenUrl": f"{issuer}/token",
                            "scopes": dict(API_SCOPES),
                        },
                        "clientCredentials": {
                            "tokenUrl": f"{issuer}/token",
                            "scopes": {"admin": API_SCOPES["admin"]},
                        },
                    },
                }
            }
        },
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]


TIMESTAMP = {"type": "string", "format": "date-time"}
#: The query parameters of every listing (see `Listing`).
PAGINATION: dict[str, dict[str, Any]] = {
    "page_size": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
    "cursor": {"type": "string"},
}
#: Any character but a control character (C0, DEL, C1).
PRINTABLE = r"[^\u0000-\u001f\u007f-\u009f]"


def name_schema(max_length: int) -> dict[str, Any]:
    """A name people see: no control character, and at least one character that is not
    white space (the server strips it, then refuses a blank name)."""
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_length,
        "pattern": rf"^{PRINTABLE}*[^\s\u0000-\u001f\u007f-\u009f]{PRINTABLE}*$",
    }


def body_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """A JSON object body with exactly these members (`read_json` refuses any other)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": required,
        "properties": properties,
    }


def list_schema(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": item},
            "next_cursor": {"type": ["string", "null"]},
        },
    }
