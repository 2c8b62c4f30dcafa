"""``GET /docs`` and ``GET /openapi.json``: the API description, behind the API key when one is set.

FastAPI's built-in routes for these cannot take dependencies, so the app turns them off and these
serve the same Swagger UI and schema.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

OPENAPI_URL = "/openapi.json"

router = APIRouter(include_in_schema=False)


@router.get(OPENAPI_URL)
async def openapi_schema(request: Request) -> dict[str, Any]:
    return request.app.openapi()


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=OPENAPI_URL, title=f"{request.app.title} - API")
