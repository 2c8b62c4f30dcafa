"""SQUID_MODEL_PATH may be a URL: downloaded once into a cache, then opened like a local file."""

from __future__ import annotations

import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from model.artifact import ArtifactError
from model.artifact_source import DEFAULT_ARTIFACT, file_sha256, resolve_artifact
from model.runtime import SquidRuntime


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(DEFAULT_ARTIFACT, root / "model.onnx")
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_artifact_is_downloaded_once_and_scores_like_the_local_file(served, tmp_path, monkeypatch):
    root, base = served
    monkeypatch.setenv("SQUID_MODEL_CACHE", str(tmp_path / "cache"))
    remote = SquidRuntime(f"{base}/model.onnx")
    local = SquidRuntime(DEFAULT_ARTIFACT)
    assert remote.metadata == local.metadata
    assert remote.path.parent == tmp_path / "cache"
    (root / "model.onnx").unlink()  # the cached copy is reused from now on
    assert resolve_artifact(f"{base}/model.onnx") == remote.path


def test_unreachable_url_is_a_clear_error(served, tmp_path, monkeypatch):
    _, base = served
    monkeypatch.setenv("SQUID_MODEL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ArtifactError, match="could not download"):
        resolve_artifact(f"{base}/missing.onnx")
    assert not list((tmp_path / "cache").glob("*"))  # no partial file left behind


def test_local_paths_and_default_pass_through(monkeypatch):
    monkeypatch.delenv("SQUID_MODEL_PATH", raising=False)
    assert resolve_artifact(None) == DEFAULT_ARTIFACT
    assert str(resolve_artifact("/some/where.onnx")) == "/some/where.onnx"


def test_a_download_is_checked_against_the_given_sha256(served, tmp_path, monkeypatch):
    _, base = served
    monkeypatch.setenv("SQUID_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SQUID_MODEL_SHA256", raising=False)
    digest = file_sha256(DEFAULT_ARTIFACT)
    path = resolve_artifact(f"{base}/model.onnx#sha256={digest}")
    assert file_sha256(path) == digest
    path.write_bytes(b"truncated")  # a damaged cache entry is fetched again, not served
    assert file_sha256(resolve_artifact(f"{base}/model.onnx#sha256={digest}")) == digest
    monkeypatch.setenv("SQUID_MODEL_SHA256", "0" * 64)
    monkeypatch.setenv("SQUID_MODEL_CACHE", str(tmp_path / "other-cache"))
    with pytest.raises(ArtifactError, match="sha256"):
        resolve_artifact(f"{base}/model.onnx")
    assert not list((tmp_path / "other-cache").glob("*"))
