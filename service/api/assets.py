"""Files served by bare name from one fixed folder (the web page's and the API docs' assets)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fastapi.responses import FileResponse

from service.errors import ApiError


class AssetFolder:
    """Only the listed names are served, so no request path ever reaches the file system."""

    def __init__(self, folder: Path, media_types: Mapping[str, str], cache_control: str) -> None:
        self.folder = folder
        self.media_types = dict(media_types)
        self.headers = {"Cache-Control": cache_control}

    def response(self, name: str) -> FileResponse:
        media_type = self.media_types.get(name)
        if media_type is None:
            raise ApiError(404, "not_found", f"no such file: {name!r}")
        return FileResponse(self.folder / name, media_type=media_type, headers=self.headers)
