"""`/api/v1/consents`: the applications a person allowed to use their account.

Consents belong to the account, so they use the account's scopes: `users:read` to list,
`users:write` to revoke. Revoking forgets the consent (the next authorization asks again)
and revokes every token family the person granted that client, so its refresh tokens fail
and its access tokens turn inactive (ASVS 10.4.9, 10.7.3). Another person's consent id
answers 404 like an unknown one (docs/security.md J75).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from authserver import rest
from authserver.actors import caller
from authserver.oauth import consent
from authserver.oauth.consent import Consent, revoke_own

READ = ("users:read", "users:write")
WRITE = ("users:write",)


def as_dict(row: Consent, client_name: str) -> dict[str, Any]:
    return {
        "id": row.id,
        "client_id": row.client_id,
        "client_name": client_name,
        "scopes": row.scope.split(),
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


async def list_my_consents(request: Request) -> Response:
    me = await caller(request, READ)
    listing = rest.Listing(request, f"consents:{me.user_id}")
    rows = await rest.run_sync(
        request, consent.page_for_user, me.user_id, after=listing.after, limit=listing.limit
    )
    return listing.page(rows, lambda row: (row[0].created_at, row[0].id), lambda row: as_dict(*row))


async def revoke_my_consent(request: Request) -> Response:
    me = await caller(request, WRITE)
    consent_id = rest.path_id(request, "consent_id")
    await rest.run_sync(request, revoke_own, me, consent_id)
    return Response(status_code=204)


CONSENT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "client_id", "client_name", "scopes", "created_at", "updated_at"],
    "properties": {
        "id": {"type": "string"},
        "client_id": {"type": "string"},
        "client_name": {"type": "string"},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "created_at": rest.TIMESTAMP,
        "updated_at": rest.TIMESTAMP,
    },
}

OPERATIONS = [
    rest.Operation(
        "GET", "/consents", list_my_consents,
        "List the applications I allowed, with the scopes I gave them (users:read)", READ,
        response=rest.list_schema(CONSENT), query=rest.PAGINATION, errors=(400, 401, 403),
    ),
    rest.Operation(
        "DELETE", "/consents/{consent_id}", revoke_my_consent,
        "Revoke a consent and every token the application holds from it (users:write)",
        WRITE, status=204,
    ),
]  # fmt: skip
