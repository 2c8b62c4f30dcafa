"""``GET /docs`` and ``GET /openapi.json``: the API description, behind the API key when one is set.

FastAPI's built-in routes for these cannot take dependencies, so the app turns them off and these
serve the same Swagger UI and schema. The Swagger UI files come from the ``fastapi-offline``
package instead of a CDN: hospital networks that carry PACS traffic rarely reach the internet.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from service.api.assets import AssetFolder

OPENAPI_URL = "/openapi.json"
ASSETS_URL = "/docs/assets"
SWAGGER = AssetFolder(
    Path(str(files("fastapi_offline").joinpath("static"))),
    {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"},
    cache_control="max-age=86400",
)

router = APIRouter(include_in_schema=False)


@router.get(OPENAPI_URL)
async def openapi_schema(request: Request) -> dict[str, Any]:
    return request.app.openapi()


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=OPENAPI_URL,
        title=f"{request.app.title} - API",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
    )


@router.get(ASSETS_URL + "/{name}")
async def swagger_asset(name: str) -> FileResponse:
    return SWAGGER.response(name)
