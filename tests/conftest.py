"""Shared fixtures for the whole test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data folder: ``$SQUID_DATA_DIR`` or ``<repo>/../shared/data``."""
    root = Path(os.environ.get("SQUID_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set SQUID_DATA_DIR)")
    return root
