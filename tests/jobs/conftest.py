"""Fixtures of the batch-job tests: the PACS-like tree from real images (built once per session)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.jobs.pacs_tree import Expected, build_pacs_tree


@pytest.fixture(scope="session")
def pacs_source(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Expected]:
    """A read-only PACS-like export tree and what each of its files must become."""
    root = tmp_path_factory.mktemp("pacs") / "tree"
    expected = build_pacs_tree(root, shared_data)
    return root, expected


@pytest.fixture
def pacs_copy(pacs_source: tuple[Path, Expected], tmp_path: Path) -> tuple[Path, Expected]:
    """A private copy of the tree (symlinks kept as links) that a test may modify."""
    source, expected = pacs_source
    target = tmp_path / "tree"
    shutil.copytree(source, target, symlinks=True)
    return target, expected
