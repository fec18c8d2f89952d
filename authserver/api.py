"""The identity API under `/api/v1`: every feature's operations in one table.

Routes and the OpenAPI document are both made from `OPERATIONS`, so the document cannot
drift from what the server answers. A feature adds its list here and nowhere else.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from authserver import audit, rest
from authserver.federation import api as federation_api
from authserver.mfa import api as mfa_api
from authserver.oauth import clients_api, consents_api, resources_api
from authserver.organizations import api as organizations_api
from authserver.services import services
from authserver.sessions import api as sessions_api
from authserver.users import api as users_api

OPERATIONS: list[rest.Operation] = [
    *mfa_api.OPERATIONS,
    *users_api.OPERATIONS,
    *sessions_api.OPERATIONS,
    *consents_api.OPERATIONS,
    *organizations_api.OPERATIONS,
    *clients_api.OPERATIONS,
    *resources_api.OPERATIONS,
    *federation_api.OPERATIONS,
    *audit.OPERATIONS,
]
DOCUMENT_PATH = rest.API_PREFIX + "/openapi.json"


async def openapi_document(request: Request) -> JSONResponse:
    """The OpenAPI 3.1 description of `OPERATIONS`; public, like the discovery document."""
    issuer = services(request).settings.issuer
    return JSONResponse(rest.openapi(OPERATIONS, issuer))


def routes() -> list[BaseRoute]:
    return [Route(DOCUMENT_PATH, openapi_document), *rest.routes(OPERATIONS)]
