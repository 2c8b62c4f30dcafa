"""Where a model came from: package version and git commit, recorded in checkpoints and artifacts."""

from __future__ import annotations

import subprocess
from pathlib import Path

from model import __version__


def git_commit() -> str:
    """The repository's HEAD commit, with ``-dirty`` when the tree has changes; ``unknown`` outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def package_version() -> str:
    return __version__
