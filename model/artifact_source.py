"""Where the artifact comes from: the shipped file, a local path, or an http(s) URL cached on disk.

A URL is downloaded once into ``$SQUID_MODEL_CACHE`` (default ``~/.cache/squid-cxr/models``) under a
name derived from the URL, written atomically, and reused afterwards, so API processes and workers
started after the first download never fetch it again. When a digest is given (``#sha256=<hex>`` at
the end of the URL, or ``$SQUID_MODEL_SHA256``) the download is verified before it is cached, and a
cached file is verified again before use: a truncated or swapped file is refused, never served.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from model.artifact import ArtifactError

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
DEFAULT_ARTIFACT = ARTIFACTS_DIR / "squid-default.onnx"
DOWNLOAD_TIMEOUT_S = 60


def default_artifact_path() -> Path:
    """The shipped model, unless ``SQUID_MODEL_PATH`` names another."""
    return Path(os.environ.get("SQUID_MODEL_PATH") or DEFAULT_ARTIFACT)


def is_url(location: str | Path) -> bool:
    return str(location).startswith(("http://", "https://"))


def cache_dir() -> Path:
    return Path(os.environ.get("SQUID_MODEL_CACHE") or Path.home() / ".cache" / "squid-cxr" / "models")


def expected_digest(location: str) -> str | None:
    """The sha256 the URL fragment (``#sha256=...``) or ``$SQUID_MODEL_SHA256`` demands, if any."""
    _, _, fragment = location.partition("#")
    if fragment.startswith("sha256="):
        return fragment.removeprefix("sha256=").strip().lower()
    return (os.environ.get("SQUID_MODEL_SHA256") or "").strip().lower() or None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def resolve_artifact(location: str | Path | None) -> Path:
    """A local file for ``location`` (None: the default), downloading a URL on first use."""
    if location is None or str(location) == "":
        return default_artifact_path()
    if not is_url(location):
        return Path(location)
    url, _, _ = str(location).partition("#")
    wanted = expected_digest(str(location))
    name = Path(url.split("?", 1)[0]).name or "model.onnx"
    target = cache_dir() / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    if target.is_file():
        if wanted is None or file_sha256(target) == wanted:
            return target
        target.unlink()  # a damaged or stale cache entry: fetch it again
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        if wanted is not None and (got := file_sha256(Path(tmp))) != wanted:
            raise ArtifactError(
                f"the model artifact from {url} has sha256 {got[:16]}…, expected {wanted[:16]}…"
            )
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ArtifactError(f"could not download the model artifact from {url}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
