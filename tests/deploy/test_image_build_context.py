"""The image's ``pip install .`` step, run here on exactly the files the Dockerfile copies.

Without a Docker engine the image is never built in CI, so a file the package build needs but the
Dockerfile forgets to copy (or a package it copies but should not ship) would only show on a
Docker host. This builds the wheel from the build stages' ``COPY`` sources alone and checks it holds
the service, the shipped model and the licence, and no training code.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from deploy_support import REPO

DOCKERFILE = REPO / "Dockerfile"


def build_stage_sources(stage: str) -> list[str]:
    """The repository paths a stage copies from the build context (``COPY`` without ``--from``)."""
    sources: list[str] = []
    current = None
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words[:1] == ["FROM"]:
            current = words[-1] if len(words) >= 4 and words[-2].upper() == "AS" else None
        elif words[:1] == ["COPY"] and current == stage:
            args = [w for w in words[1:] if not w.startswith("--")]
            if not any(w.startswith("--from") for w in words):
                sources += args[:-1]
    return sources


@pytest.mark.parametrize("stage", ["build", "build-gpu"])
def test_the_build_stage_copies_what_the_package_build_needs(stage: str, tmp_path: Path) -> None:
    sources = build_stage_sources(stage)
    assert "pyproject.toml" in sources
    context = tmp_path / "context"
    for source in sources:
        origin = REPO / source
        target = context / source
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
    wheel_command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q"]  # isolated, as in the image
    result = subprocess.run(
        [*wheel_command, "-w", str(tmp_path), str(context)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("squid_cxr-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "model/artifacts/squid-default.onnx",
        "model/artifacts/MODEL_CARD.md",
        "service/app.py",
        "service/static/index.html",
        "service/static/app.js",
        "cli/main.py",
    ):
        assert required in names, required
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith("training/") for n in names), "the images carry no training code"
