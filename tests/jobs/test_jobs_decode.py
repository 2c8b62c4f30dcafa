"""Batch decoding (issue 26): decode threads change nothing but the speed, and a size bomb among
healthy files is its own failed row (issue 25, defect 1). Workers and the DICOM node run the same
``score_entries``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from service.jobs.inprocess import run_inprocess
from service.settings import Settings
from tests.dicom_factory import make_dicom
from tests.jobs.pacs_tree import read_instances
from tests.model.test_decode_bombs import BOMB_SIDE, jpeg2000_bomb

SYNTAXES = (JPEG2000Lossless, JPEGLSLossless, RLELossless, None)


def healthy_tree(root: Path, count: int = 8) -> list[str]:
    """``count`` 700 px 12-bit films in four syntaxes (big enough to be decoded reduced): the sample
    chest film with a different faint texture each, so the domain gate lets them through."""
    from tests.service.http_support import chest_like

    names = []
    for index in range(count):
        pixels = chest_like(700, 640, top=4095, seed=index).astype(np.uint16)
        syntax = SYNTAXES[index % len(SYNTAXES)]
        name = f"IM{index:03d}.dcm"
        (root / name).write_bytes(
            make_dicom(pixels, bits_stored=12, **({"transfer_syntax": syntax} if syntax else {}))
        )
        names.append(name)
    return names


def test_decode_threads_give_the_rows_one_thread_gives(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    healthy_tree(root)
    rows = {}
    for threads in (1, 3):
        out = tmp_path / f"out-{threads}"
        summary = run_inprocess(root, out, Settings(chunk_size=5, decode_threads=threads), resume=False)
        assert summary.counts["scored"] == 8
        rows[threads] = read_instances(out)
    assert rows[1] == rows[3]


def test_a_size_bomb_among_healthy_files_fails_alone_with_its_reason(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    healthy_tree(root, 4)
    (root / "bomb.dcm").write_bytes(jpeg2000_bomb())
    summary = run_inprocess(root, tmp_path / "out", Settings(chunk_size=8, decode_threads=2), resume=False)
    assert (summary.counts["scored"], summary.counts["failed"]) == (4, 1)
    bomb = next(row for row in read_instances(tmp_path / "out") if row["path"] == "bomb.dcm")
    assert (bomb["status"], bomb["reason"]) == ("failed", "undecodable")
    assert f"declares {BOMB_SIDE}x{BOMB_SIDE}" in bomb["detail"]
    assert bomb["sop_instance_uid"]  # the refused file still counts in its study


def test_a_frame_swapped_for_a_larger_one_is_caught_even_when_it_is_honest_jpeg(tmp_path: Path) -> None:
    """A real (not patched) 1024 px JPEG-LS frame behind a 224 px header: refused, not decoded."""
    small = make_dicom(np.zeros((224, 224), np.uint16), bits_stored=12, transfer_syntax=JPEGLSLossless)
    large = make_dicom(np.ones((1024, 1024), np.uint16), bits_stored=12, transfer_syntax=JPEGLSLossless)
    ds = dcmread(io.BytesIO(small))
    ds.PixelData = encapsulate([get_frame(dcmread(io.BytesIO(large)).PixelData, 0, number_of_frames=1)])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    root = tmp_path / "tree"
    root.mkdir()
    (root / "swapped.dcm").write_bytes(buffer.getvalue())
    run_inprocess(root, tmp_path / "out", Settings(), resume=False)
    (row,) = read_instances(tmp_path / "out")
    assert (row["reason"], "declares 1024x1024x1" in row["detail"]) == ("undecodable", True)
