"""Authlib's authorization server bound to Starlette, in the shape of `flask_oauth2`.

Every method here runs in the worker thread of one `Database.run_sync` unit of work, so
Authlib's synchronous hooks can reach storage through `db.current_session()`. Storage is
injected (`query_client`, `save_token`, client authentication), as Flask's integration
takes it: this module knows Authlib and Starlette, not our tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from authlib.oauth2 import AuthorizationServer as _AuthorizationServer
from authlib.oauth2.rfc6749 import OAuth2Request
from starlette.responses import JSONResponse, Response

from authserver.errors import NO_STORE
from authserver.oauth.requests import RequestSnapshot, SnapshotJsonRequest, SnapshotRequest


class AuthorizationServer(_AuthorizationServer):
    """Authlib's server with Starlette requests and responses."""

    def __init__(
        self,
        *,
        query_client: Callable[[str], Any],
        save_token: Callable[[dict[str, Any], OAuth2Request], None],
        authenticate_client: Callable[[OAuth2Request, list[str], str], Any],
    ) -> None:
        super().__init__()
        self._query_client = query_client
        self._save_token = save_token
        self._authenticate_client = authenticate_client

    def query_client(self, client_id: str) -> Any:
        return self._query_client(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        self._save_token(token, request)

    def authenticate_client(
        self, request: OAuth2Request, methods: list[str], endpoint: str = "token"
    ) -> Any:
        """One strict client authentication for every endpoint, instead of Authlib's loop
        over lenient per-method parsers (see `clients.ClientAuthentication`)."""
        return self._authenticate_client(request, methods, endpoint)

    def create_oauth2_request(self, request: RequestSnapshot | OAuth2Request) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        return SnapshotRequest(request)

    def create_json_request(self, request: RequestSnapshot) -> SnapshotJsonRequest:
        return SnapshotJsonRequest(request)

    def handle_response(
        self, status_code: int, payload: Any, headers: list[tuple[str, str]]
    ) -> Response:
        """RFC 6749 §5.1 / OAuth 2.1 §3.2.3: every answer of these endpoints carries
        credentials or says something about them, so none may be cached."""
        merged = {**dict(headers), **NO_STORE}
        if isinstance(payload, dict):
            return JSONResponse(payload, status_code, headers=merged)
        return Response(payload, status_code, headers=merged)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Authlib's signals (client authenticated, token revoked) have no listeners: audit
        events are recorded where the change happens, in the same transaction."""
