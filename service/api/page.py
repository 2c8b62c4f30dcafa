"""``GET /`` and ``GET /static/{name}``: the drop-an-X-ray page (HTML/JS/CSS under ``service/static``).

Plain routes rather than a ``StaticFiles`` mount, so the API key dependency covers them like every
other data route.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.api.assets import AssetFolder

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
STATIC = AssetFolder(
    STATIC_DIR,
    {p.name: _MEDIA_TYPES[p.suffix] for p in STATIC_DIR.iterdir() if p.suffix in _MEDIA_TYPES},
    cache_control="no-cache",
)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return STATIC.response("index.html")


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    return STATIC.response(name)
