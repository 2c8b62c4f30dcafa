"""``GET /`` and ``GET /static/{name}``: the drop-an-X-ray page (HTML/JS/CSS under ``service/static``).

Plain routes rather than a ``StaticFiles`` mount, so the API key dependency covers them like every
other data route; the files are a fixed list read at import, so no request path reaches the disk.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import ApiError

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
_ASSETS = {path.name: path for path in STATIC_DIR.iterdir() if path.suffix in _MEDIA_TYPES}
_NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_NO_CACHE)


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    path = _ASSETS.get(name)
    if path is None:
        raise ApiError(404, "not_found", f"no static file {name!r}")
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_NO_CACHE)
