"""Signed introspection answers (RFC 9701): the usual RFC 7662 answer, inside a JWT the
resource server can keep as proof of what this server said, and when.

A caller registered for it (`Client.introspection_signed_response_alg`, set by an operator)
that sends `Accept: application/token-introspection+jwt` gets
`{"iss", "aud": <the caller>, "iat", "token_introspection": {...}}` signed with `typ:
token-introspection+jwt` by the key store (§5).

RFC 9701 leaves to the server what to do when a caller asks for a JWT it is not registered
for. We answer `406 Not Acceptable` (RFC 9110 §15.5.7) when the Accept header lists only the
JWT type, so a resource server configured to trust signed answers never mistakes an
unsigned one for them; when it also accepts `application/json` (or anything), it gets the
plain JSON answer, which the header allows. With `AUTHSERVER_JWT_INTROSPECTION` off,
every caller gets plain JSON, as before RFC 9701.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from authlib.consts import default_json_headers
from authlib.oauth2.base import OAuth2Error

from authserver import db
from authserver.oauth.endpoints import Introspection
from authserver.settings import Settings

MEDIA_TYPE = "application/token-introspection+jwt"
TYP = "token-introspection+jwt"
PLAIN_TYPES = {"application/json", "application/*", "*/*"}


class NotAcceptableError(OAuth2Error):
    error = "invalid_request"
    status_code = 406


def accepted_types(accept: str | None) -> set[str]:
    """The media types of an Accept header (RFC 9110 §12.5.1), parameters dropped; a type
    with `q=0` is refused, so it is left out."""
    types = set()
    for item in (accept or "").split(","):
        media, *params = (part.strip().lower() for part in item.split(";"))
        if media and not any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00") for p in params):
            types.add(media)
    return types


class SignedIntrospection(Introspection):
    """RFC 7662 introspection (`endpoints.Introspection`) that can answer in a JWT."""

    def create_endpoint_response(self, request: Any) -> tuple[int, Any, list[tuple[str, str]]]:
        client = self.authenticate_endpoint_client(request)
        alg = self._signed_for(request.headers.get("Accept"), client)
        token = self.authenticate_token(request, client)
        body = self.create_introspection_payload(token)
        if alg is None:
            return 200, body, default_json_headers
        claims = {
            "iss": self.settings.issuer,
            "aud": client.get_client_id(),
            "iat": int(db.utcnow().timestamp()),
            "token_introspection": body,
        }
        signed = self.keystore.sign(claims, alg=alg, typ=TYP)
        return 200, signed, [("Content-Type", MEDIA_TYPE)]

    def _signed_for(self, accept: str | None, client: Any) -> str | None:
        """The algorithm to sign this answer with; None for plain JSON."""
        types = accepted_types(accept)
        if not self.settings.jwt_introspection or MEDIA_TYPE not in types:
            return None
        alg: str | None = client.introspection_signed_response_alg
        if alg is not None:
            active = {key.alg for key in self.keystore.keys() if key.status == "active"}
            if alg in active:
                return alg
            if not types & PLAIN_TYPES:
                raise NotAcceptableError(f"No active {alg} key signs introspection responses.")
            return None
        if types & PLAIN_TYPES:
            return None
        raise NotAcceptableError(
            "This client is not registered for signed introspection responses "
            "(introspection_signed_response_alg); accept application/json instead."
        )


def discovery_fields(settings: Settings, signing_algs: Sequence[str]) -> dict[str, Any]:
    """RFC 9701 §7: the algorithms signed answers may come in."""
    if not settings.jwt_introspection:
        return {}
    return {"introspection_signing_alg_values_supported": list(signing_algs)}
